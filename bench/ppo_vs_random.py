"""A trained Tamiyo against ``RandomPolicy``, paired: same seeds, same env config.

``python bench/ppo_vs_random.py --policy runs/latest/policy.pt --seeds 100,101,102``

Each seed fixes the task data, the host's initial weights and the host's
batch order, so on one seed the two policies face the same host and differ
only by their decisions: the per-seed difference ``policy - random`` is a
decision effect, without the between-seed spread of final accuracy that
dominates the unpaired returns. Prints per-seed returns, the paired
differences, their mean and standard error, and how many seeds the policy won.

The env config is read from ``train_summary.json`` next to the policy file
when there is one (so the comparison runs on the episodes the policy was
trained for); any env option given on the command line overrides it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_kernel.cli import default_core
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.infra.telemetry import null_log
from esper_kernel.tamiyo.policies import Policy, RandomPolicy
from esper_kernel.tamiyo.ppo import load_policy
from esper_kernel.tamiyo.train import evaluate_policy

#: EnvConfig fields settable from the command line, with their types.
ENV_OPTIONS: dict[str, type] = {
    "task": str,
    "epochs": int,
    "slots": int,
    "batch_size": int,
    "train_size": int,
    "val_size": int,
    "param_rent": float,
}


def env_config(policy_path: Path, args: argparse.Namespace) -> EnvConfig:
    values: dict[str, Any] = {}
    summary = policy_path.parent / "train_summary.json"
    if summary.exists():
        saved = json.loads(summary.read_text(encoding="utf-8")).get("env_config", {})
        values.update({k: v for k, v in saved.items() if k in {f.name for f in attrs.fields(EnvConfig)}})
    for name in ENV_OPTIONS:
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    return EnvConfig(**values)


def returns_of(policy: Policy, config: EnvConfig, registry: Registry, seeds: list[int]) -> list[float]:
    # Each seed alone, so the returns do not depend on which other seeds share the batch.
    return [evaluate_policy(policy, config, registry, [s], null_log())[0] for s in seeds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, type=Path, help="policy.pt written by `esper train`")
    p.add_argument("--seeds", default="100,101,102", help="comma-separated evaluation seeds")
    p.add_argument("--levers", default=None, help="levers to load (as `esper train --levers`)")
    p.add_argument("--greedy", action="store_true", help="the policy takes its most likely action, not a sample")
    p.add_argument("--random-seed", type=int, default=0, help="seed of RandomPolicy's own generator")
    p.add_argument(
        "--random-draws",
        type=int,
        default=5,
        help="random's return per seed is the mean over this many draws (its own luck is larger than a policy's edge)",
    )
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the numbers here")
    for name, typ in ENV_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    config = env_config(args.policy, args)
    registry = Registry.open(default_core(config.topology, config.slots), Selection.from_env(levers=args.levers))
    names = observation_names(registry, config.slots)
    learned = load_policy(args.policy, registry, len(names), names)
    learned.greedy = args.greedy

    t0 = time.monotonic()
    ours = returns_of(learned, config, registry, seeds)
    draws = [returns_of(RandomPolicy(args.random_seed + k), config, registry, seeds) for k in range(args.random_draws)]
    base = [statistics.fmean(per_seed) for per_seed in zip(*draws, strict=True)]
    diffs = [a - b for a, b in zip(ours, base, strict=True)]
    seconds = time.monotonic() - t0

    print(f"env: {json.dumps(attrs.asdict(config))}")
    mode = "greedy" if args.greedy else "sampled"
    last = args.random_seed + args.random_draws - 1
    print(f"policy: {args.policy} ({mode})  random: mean of RandomPolicy({args.random_seed}..{last})")
    print(f"{'seed':>6} {'policy':>9} {'random':>9} {'diff':>9}")
    for s, a, b, d in zip(seeds, ours, base, diffs, strict=True):
        print(f"{s:>6} {a:>+9.4f} {b:>+9.4f} {d:>+9.4f}")
    mean_d = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    wins = sum(d > 0 for d in diffs)
    print(f"{'mean':>6} {statistics.fmean(ours):>+9.4f} {statistics.fmean(base):>+9.4f} {mean_d:>+9.4f}")
    print(f"paired diff: {mean_d:+.4f} +- {se:.4f} (s.e.), policy ahead on {wins}/{len(diffs)} seeds; {seconds:.1f}s")
    if args.json_out is not None:
        record = {
            "env_config": attrs.asdict(config),
            "policy": str(args.policy),
            "greedy": args.greedy,
            "seeds": seeds,
            "policy_returns": ours,
            "random_returns": base,
            "diffs": diffs,
            "mean_diff": mean_d,
            "stderr_diff": se,
            "wins": wins,
        }
        args.json_out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
