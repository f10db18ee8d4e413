"""``python -m bench.gpu``: env steps/s of the default task on CUDA against the CPU, side by side.

One env with ``EnvConfig()`` defaults (the task ``esper run`` trains),
stepped with the heuristic-free loop a training rollout uses (a
:class:`~esper_kernel.tamiyo.ppo.PPOPolicy` deciding, the env stepping),
on ``cpu`` (one intra-op thread) and on ``cuda``, fp32 and bf16
autocast (``--amp``); devices alternate within each repeat. Where torch
sees no CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import attrs
import torch

from bench import fixtures
from bench.timing import median
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.tamiyo.envpool import EnvPool
from esper_kernel.tamiyo.ppo import PPOPolicy


def steps_per_s(cfg: EnvConfig, steps: int, episode: int) -> float:
    reg = fixtures.registry(cfg)
    policy = PPOPolicy.for_registry(reg, observation_names(reg, cfg.slots))
    with EnvPool.local(cfg, reg, 0, 1, fixtures.NullLog()) as pool:
        step = pool.reset([episode], [episode])
        sampled, _ = policy.act_with_value(step.obs, step.masks)  # type: ignore[arg-type]
        step = pool.step(sampled.actions)  # warm-up: CUDA context, kernels, allocator
        if cfg.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            if step.masks is None:
                break
            sampled, _ = policy.act_with_value(step.obs, step.masks)
            step = pool.step(sampled.actions)
        return steps / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    p.add_argument("--steps", type=int, default=5, help="env steps per sample (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"no CUDA: torch {torch.__version__} sees no GPU on this machine; nothing to measure")
        return 0
    torch.set_num_threads(1)
    base = EnvConfig()
    cases = {
        "cpu": base,
        "cuda": attrs.evolve(base, device="cuda"),
        "cuda+amp": attrs.evolve(base, device="cuda", amp=True),
    }
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.repeats):
        for k in cases if r % 2 == 0 else list(cases)[::-1]:
            rates[k].append(steps_per_s(cases[k], args.steps, r))
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CPU side 1 intra-op thread")
    cpu = median(rates["cpu"])
    print("| device | env steps/s | vs cpu |")
    print("|---|---|---|")
    for k in cases:
        v = median(rates[k])
        print(f"| {k} | {v:.2f} | {v / cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
