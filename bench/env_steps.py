"""Figure: ``esper train`` environment steps per second with 1 and 2 envs.

``esper train`` has no worker processes: ``--envs N`` makes
:func:`~esper_kernel.tamiyo.train.collect_rollout` step N ``MorphoEnv``
instances one after another in one process through ``EnvBatch``, with one
mask composition and one batched policy call per step. So "workers" here
means envs in that batch. Each sample is the rollout loop's body
(``envs.masks()``, ``PPOPolicy.act_with_value``, ``envs.step``) for a few
steps from a fresh reset with ``EnvConfig()`` defaults; the two batch sizes
alternate. No target: the figure is reported.
"""

from __future__ import annotations

import time

import torch

from bench import fixtures
from bench.timing import Row, Settings, median
from esper_kernel.env import EnvBatch, EnvConfig, MorphoEnv, load_task, observation_names
from esper_kernel.tamiyo.ppo import PPOPolicy

KEY = "env"


def _steps_per_s(cfg: EnvConfig, n_envs: int, steps: int, episode: int) -> float:
    reg = fixtures.registry(cfg)
    task = load_task(cfg, 0)
    envs = EnvBatch([MorphoEnv(cfg, reg, task, fixtures.NullLog(), i) for i in range(n_envs)])
    policy = PPOPolicy.for_registry(reg, observation_names(reg, cfg.slots))
    obs = envs.reset([1000 * episode + i for i in range(n_envs)], episode)
    t0 = time.perf_counter()
    for _ in range(steps):
        sampled, _value = policy.act_with_value(obs, envs.masks())
        results = envs.step(sampled.actions)
        obs = torch.stack([r.obs for r in results])
    return n_envs * steps / (time.perf_counter() - t0)


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig(train_size=128, val_size=64) if settings.quick else EnvConfig()
    # Host epochs are seconds long: a few steps per sample, few samples, or this figure alone would take minutes.
    steps = 1 if settings.quick else 3
    repeats = 1 if settings.quick else 2
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            rates[n].append(_steps_per_s(cfg, n, steps, r))
    one, two = median(rates[1]), median(rates[2])
    return [
        Row(
            key=KEY,
            figure=f"esper train env steps/s, {n} env{'s' if n > 1 else ''} (sequential EnvBatch)",
            measured=f"{v:.3f} steps/s",
            baseline="-" if n == 1 else f"{one:.3f} steps/s (1 env)",
            ratio=None if n == 1 else two / one,
            target="reported",
            passed=None,
            notes=() if n == 1 else ("no worker processes exist: envs step one after another in one process",),
        )
        for n, v in ((1, one), (2, two))
    ]
