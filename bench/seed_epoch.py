"""Figure: env steps with a live seed against plain PyTorch epochs of the same host and seed.

Candidate: a ``MorphoEnv`` with ``EnvConfig()`` defaults (3 epochs in
``--quick`` on a small task), reset, a ``conv_small`` seed germinated in
slot 0, then ``STEPS`` env steps deciding WAIT: everything a training
rollout pays per epoch with a live seed (the seed's measures, the probe
batch, lever telemetry, the observation), through whatever stages the
lifecycle moves the seed.

Baseline: the same number of epochs written in plain PyTorch over the very
same modules (the host's blocks with the seed wired in by hand, seeing
detached features as an isolated seed does), the same batches in the same
order, SGD at the host's learning rate and a validation pass per epoch.
Sides alternate; each sample starts from a fresh reset.
"""

from __future__ import annotations

import time

import torch

from bench import fixtures
from bench.timing import Row, Settings, fmt_time, median
from bench.training_seed import HandWiredIncubator
from esper_kernel.episode.env import EnvConfig, MorphoEnv, load_task
from esper_kernel.grow.training import evaluate, task_loss

KEY = "seed_epoch"
TARGET = 1.15
STEPS = 3


def _env(cfg: EnvConfig, seed: int) -> MorphoEnv:
    reg = fixtures.registry(cfg)
    env = MorphoEnv(cfg, reg, load_task(cfg, 0), fixtures.NullLog())
    env.reset(seed)
    germinate = reg.space.encode([{"op": "germinate", "slot": "s0", "blueprint": "conv_small"}])[0]
    env.step(germinate)  # the germinating epoch is not timed: both sides start with a live seed
    return env


def _env_steps(cfg: EnvConfig, seed: int) -> float:
    env = _env(cfg, seed)
    wait = env.registry.space.encode([{"op": "wait"}])[0]
    t0 = time.perf_counter()
    for _ in range(STEPS):
        env.step(wait)
    return (time.perf_counter() - t0) / STEPS


def _plain_epochs(cfg: EnvConfig, seed: int) -> float:
    env = _env(cfg, seed)
    live = env.lifecycle.slots[0].seed
    assert live is not None
    model = HandWiredIncubator(env.host, live, 0)  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=cfg.host_lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(STEPS):
        model.train()
        for x, y in env.task.batches(cfg.batch_size, gen):
            loss = task_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        model.eval()
        evaluate(model, env.task, cfg.batch_size)
    return (time.perf_counter() - t0) / STEPS


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig(train_size=128, val_size=64) if settings.quick else EnvConfig()
    repeats = 1 if settings.quick else 5
    t: dict[str, list[float]] = {"env": [], "plain": []}
    for r in range(repeats):
        for k in ("env", "plain") if r % 2 == 0 else ("plain", "env"):
            t[k].append(_env_steps(cfg, r) if k == "env" else _plain_epochs(cfg, r))
    ratio = median([a / b for a, b in zip(t["env"], t["plain"], strict=True)])
    return [
        Row(
            key=KEY,
            figure=f"env step with a live seed (conv_small, slot 0, {STEPS} WAIT steps) vs plain PyTorch epoch",
            measured=fmt_time(median(t["env"])),
            baseline=fmt_time(median(t["plain"])) + " (hand-wired host+seed, SGD, val pass)",
            ratio=ratio,
            target=f"<= {TARGET:g}x",
            passed=ratio <= TARGET,
            notes=(f"{repeats} interleaved repeats; ratio = median of per-repeat ratios",),
        )
    ]
