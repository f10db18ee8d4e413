"""Figure: ``esper train`` environment steps per second, in-process vs worker processes (vs Ray actors).

Each sample is :func:`~esper_kernel.tamiyo.train.collect_rollout` itself
(a reset, then the policy decides for each shard's envs as soon as that
shard answers, and the shard steps them and composes their next masks) for
the first few steps of an episode (the reset included, as in training), with
``EnvConfig()`` defaults and 2 envs, on:

- 1 worker: both envs in this process, one after the other (``--workers 1``);
- 2 workers: one env in each of two worker processes (``--workers 2``);
- Ray: one env in each of two Ray actors on a local Ray instance
  (``--ray``), only when Ray is installed.

Pools are started (and their workers built) before the timing; the sides
alternate within each repeat. Targets: 2 workers >= 1.7x one worker;
Ray's overhead over the process pool <= 15%.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

from bench import fixtures
from bench.timing import Row, Settings, median
from esper_kernel.env import EnvConfig, observation_names
from esper_kernel.registry import Selection
from esper_kernel.tamiyo.envpool import EnvPool
from esper_kernel.tamiyo.ppo import PPOPolicy
from esper_kernel.tamiyo.train import collect_rollout

KEY = "env"
N_ENVS = 2


def _rate(pool: EnvPool, policy: PPOPolicy, steps: int, episode: int) -> float:
    t0 = time.perf_counter()
    collect_rollout(policy, pool, [1000 * episode + i for i in range(N_ENVS)], [episode] * N_ENVS, steps=steps)
    return N_ENVS * steps / (time.perf_counter() - t0)


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig(train_size=128, val_size=64, epochs=4) if settings.quick else EnvConfig()
    # Default host epochs are tens of milliseconds: ten steps make a sample long enough to time.
    steps = 1 if settings.quick else 10
    repeats = 1 if settings.quick else 5
    reg = fixtures.registry(cfg)
    sel = Selection(only=fixtures.BUILTIN_LEVERS)
    policy = PPOPolicy.for_registry(reg, observation_names(reg, cfg.slots))
    log = fixtures.NullLog()
    makers: dict[str, Callable[[], EnvPool]] = {
        "one": lambda: EnvPool.local(cfg, reg, 0, N_ENVS, log),
        "two": lambda: EnvPool.processes(cfg, reg, sel, 0, N_ENVS, 2, log),
    }
    have_ray = importlib.util.find_spec("ray") is not None
    if have_ray:
        from esper_kernel.tamiyo.raypool import init_ray, ray_pool

        init_ray(None, num_cpus=N_ENVS)
        makers["ray"] = lambda: ray_pool(cfg, reg, sel, 0, N_ENVS, 2, log, None)
    pools = {k: make() for k, make in makers.items()}
    try:
        for pool in pools.values():  # warm-up: first steps pay for lazy initialisation
            _rate(pool, policy, 1, 99)
        rates: dict[str, list[float]] = {k: [] for k in pools}
        for r in range(repeats):
            order = list(pools) if r % 2 == 0 else list(pools)[::-1]
            for k in order:
                rates[k].append(_rate(pools[k], policy, steps, r))
    finally:
        for pool in pools.values():
            pool.close()
    one, two = median(rates["one"]), median(rates["two"])
    rows = [
        Row(
            key=KEY,
            figure="esper train env steps/s, 2 envs, --workers 1 (in-process)",
            measured=f"{one:.3f} steps/s",
            baseline="-",
            ratio=None,
            target="reported",
            passed=None,
        ),
        Row(
            key=KEY,
            figure="esper train env steps/s, 2 envs, --workers 2 vs --workers 1",
            measured=f"{two:.3f} steps/s",
            baseline=f"{one:.3f} steps/s (1 worker)",
            ratio=two / one,
            target=">= 1.7x",
            passed=two / one >= 1.7,
            notes=(f"{steps} steps x {repeats} repeats per side, EnvConfig() defaults except in --quick",),
        ),
    ]
    if have_ray:
        ray_rate = median(rates["ray"])
        overhead = two / ray_rate - 1
        rows.append(
            Row(
                key=KEY,
                figure="esper train env steps/s, 2 envs, Ray actors (local) vs --workers 2",
                measured=f"{ray_rate:.3f} steps/s",
                baseline=f"{two:.3f} steps/s (2 processes)",
                ratio=ray_rate / two,
                target="overhead <= 15%",
                passed=overhead <= 0.15,
                notes=(f"Ray overhead {overhead:+.1%} (process-pool rate / Ray rate - 1)",),
            )
        )
    else:
        rows.append(
            Row(
                key=KEY,
                figure="esper train env steps/s, Ray actors vs --workers 2",
                measured="-",
                baseline="-",
                ratio=None,
                target="overhead <= 15%",
                passed=None,
                notes=('Ray is not installed: pip install "esper-kernel[ray]"',),
            )
        )
    return rows
