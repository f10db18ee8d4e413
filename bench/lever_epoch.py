"""Figure: the kernel's per-step lever work as a fraction of one host epoch of the default ``esper run``.

Lever work is :func:`bench.lever_work.through_registry` (6 levers, 3 slots,
charged generously: see that module). The epoch is
``EpochRunner.run_epoch`` of a freshly reset ``MorphoEnv`` with
``EnvConfig()`` defaults and all slots dormant: the cheapest epoch a run
has, so the fraction is an upper bound.
"""

from __future__ import annotations

import torch

from bench import fixtures, lever_work
from bench.timing import Row, Settings, calibrate, fmt_time, interleaved, median
from esper_kernel.episode.env import EnvConfig, MorphoEnv, load_task

KEY = "lever_epoch"
TARGET = 0.005


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig()
    if settings.quick:
        cfg = EnvConfig(train_size=128, val_size=64)
    step = lever_work.make_step(cfg)
    env = MorphoEnv(cfg, step.reg, load_task(cfg, 0), fixtures.NullLog())
    env.reset(0)
    epochs = iter(range(10_000))
    # An epoch is seconds long: a few repeats of one epoch each are enough, and more would dominate the suite.
    reps = Settings(quick=settings.quick, repeats=min(settings.repeats, 2 if settings.quick else 5))
    inner = {"lever": calibrate(lambda: lever_work.through_registry(step), settings.sample_s), "epoch": 1}
    t = interleaved(
        {
            "lever": lambda: lever_work.through_registry(step),
            "epoch": lambda: env.runner.run_epoch(next(epochs)),
        },
        reps,
        inner=inner,
    )
    lever, epoch = median(t["lever"]), median(t["epoch"])
    frac = lever / epoch
    return [
        Row(
            key=KEY,
            figure="per-step lever work (6 levers, 3 slots) / host epoch",
            measured=fmt_time(lever),
            baseline=f"{fmt_time(epoch)} (run_epoch, EnvConfig() defaults)",
            ratio=frac,
            target=f"< {TARGET:.1%} of the epoch",
            passed=frac < TARGET,
            notes=(f"torch threads {torch.get_num_threads()}; dormant-host epoch, the cheapest a run has",),
            ratio_text=f"{frac:.3%}",
        )
    ]
