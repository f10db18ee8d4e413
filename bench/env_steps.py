"""Figure: ``esper train`` environment steps per second, in-process vs worker processes (vs Ray actors).

Each sample is :func:`~esper_kernel.tamiyo.train.collect_rollout` itself
(a reset, then the policy decides for each shard's envs as soon as that
shard answers, and the shard steps them and composes their next masks) for
the first few steps of an episode (the reset included, as in training), with
``EnvConfig()`` defaults, on:

- 1 worker: every env in this process, one after the other (``--workers 1``);
- 2 workers: the envs split over two worker processes (``--workers 2``);
- Ray: the envs split over two Ray actors on a local Ray instance
  (``--ray``), only when Ray is installed.

Two rollouts are timed: 2 envs (one per worker), and 8 envs in two groups of
four sharing an episode seed, which is the rollout of the documented training
config (``docs/results/tamiyo/train-free.toml``). With one env per worker a
rollout can go no faster than its busier env: the workers' CPU seconds,
summed and divided by the larger, estimate what two workers can gain over one
(the "balance bound", read from ``/proc``; reported where it exists). It is
an estimate: one process holding every env may work less efficiently than two.

Pools are started (and their workers built) before the timing; the sides
alternate within each repeat. Targets: 2 workers >= 1.7x one worker;
Ray's overhead over the process pool <= 15%.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import fixtures
from bench.timing import Row, Settings, median
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.tamiyo.envpool import EnvPool
from esper_kernel.tamiyo.ppo import PPOPolicy
from esper_kernel.tamiyo.train import collect_rollout

KEY = "env"


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far, from ``/proc`` (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_cpu(pool: EnvPool) -> list[float] | None:
    pids = [getattr(h, "pid", None) for h in pool.handles]
    seconds = [_cpu_seconds(p) for p in pids]
    return None if any(s is None for s in seconds) else [s for s in seconds if s is not None]


def _seeds(n_envs: int, episode: int) -> list[int]:
    # Groups of four share an episode seed, as in training; two envs get one each.
    group = 4 if n_envs >= 8 else 1
    return [1000 * episode + i // group for i in range(n_envs)]


def _sample(pool: EnvPool, policy: PPOPolicy, steps: int, episode: int) -> tuple[float, float | None]:
    """Env steps per second of one rollout, and its balance bound (None in-process or without ``/proc``)."""
    before = _worker_cpu(pool)
    t0 = time.perf_counter()
    collect_rollout(policy, pool, _seeds(pool.n_envs, episode), [episode] * pool.n_envs, steps=steps)
    rate = pool.n_envs * steps / (time.perf_counter() - t0)
    after = _worker_cpu(pool)
    if before is None or after is None or len(after) < 2:
        return rate, None
    used = [b - a for a, b in zip(before, after, strict=True)]
    return rate, sum(used) / max(max(used), 1e-9)


def _measure(
    makers: dict[str, Callable[[], EnvPool]], policy: PPOPolicy, steps: int, repeats: int
) -> tuple[dict[str, list[float]], list[float]]:
    pools = {k: make() for k, make in makers.items()}
    rates: dict[str, list[float]] = {k: [] for k in pools}
    bounds: list[float] = []
    try:
        for pool in pools.values():  # warm-up: first steps pay for lazy initialisation
            _sample(pool, policy, 1, 99)
        for r in range(repeats):
            order = list(pools) if r % 2 == 0 else list(pools)[::-1]
            for k in order:
                rate, bound = _sample(pools[k], policy, steps, r)
                rates[k].append(rate)
                if k == "two" and bound is not None:
                    bounds.append(bound)
    finally:
        for pool in pools.values():
            pool.close()
    return rates, bounds


def _makers(
    cfg: EnvConfig, reg: Registry, n_envs: int, ray: Callable[[int], EnvPool] | None
) -> dict[str, Callable[[], EnvPool]]:
    sel = Selection(only=fixtures.BUILTIN_LEVERS)
    log = fixtures.NullLog()
    makers: dict[str, Callable[[], EnvPool]] = {
        "one": lambda: EnvPool.local(cfg, reg, 0, n_envs, log),
        "two": lambda: EnvPool.processes(cfg, reg, sel, 0, n_envs, 2, log),
    }
    if ray is not None:
        makers["ray"] = lambda: ray(n_envs)
    return makers


def _scaling_row(n_envs: int, rates: dict[str, list[float]], bounds: Sequence[float], note: str) -> Row:
    one, two = median(rates["one"]), median(rates["two"])
    bound = f"; balance bound (median) {statistics.median(bounds):.2f}x" if bounds else ""
    return Row(
        key=KEY,
        figure=f"esper train env steps/s, {n_envs} envs, --workers 2 vs --workers 1",
        measured=f"{two:.3f} steps/s",
        baseline=f"{one:.3f} steps/s (1 worker)",
        ratio=two / one,
        target=">= 1.7x",
        passed=two / one >= 1.7,
        notes=(note + bound,),
    )


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig(train_size=128, val_size=64, epochs=4) if settings.quick else EnvConfig()
    # Default host epochs are tens of milliseconds: ten steps make a sample long enough to time.
    steps, wide_steps = (1, 1) if settings.quick else (10, 5)
    repeats = 1 if settings.quick else 5
    reg = fixtures.registry(cfg)
    policy = PPOPolicy.for_registry(reg, observation_names(reg, cfg.slots))
    have_ray = importlib.util.find_spec("ray") is not None
    ray: Callable[[int], EnvPool] | None = None
    if have_ray:
        from esper_kernel.tamiyo.raypool import init_ray, ray_pool

        init_ray(None, num_cpus=2)
        sel = Selection(only=fixtures.BUILTIN_LEVERS)

        def ray(n: int) -> EnvPool:
            return ray_pool(cfg, reg, sel, 0, n, 2, fixtures.NullLog(), None)

    rates, bounds = _measure(_makers(cfg, reg, 2, ray), policy, steps, repeats)
    if have_ray:
        import ray as ray_module

        # Its local instance (raylet, GCS, idle workers) would otherwise poll beside every later figure.
        ray_module.shutdown()
    wide, wide_bounds = _measure(_makers(cfg, reg, 8, None), policy, wide_steps, repeats)
    rows = [
        Row(
            key=KEY,
            figure="esper train env steps/s, 2 envs, --workers 1 (in-process)",
            measured=f"{median(rates['one']):.3f} steps/s",
            baseline="-",
            ratio=None,
            target="reported",
            passed=None,
        ),
        _scaling_row(2, rates, bounds, f"{steps} steps x {repeats} repeats per side"),
        _scaling_row(8, wide, wide_bounds, f"the training rollout (2 groups of 4); {wide_steps} steps x {repeats}"),
    ]
    two = median(rates["two"])
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
