"""Figure: graphs Dynamo compiles over a full episode with every lever varying, against distinct live-seed sets.

One ``MorphoEnv`` episode (``EnvConfig()`` defaults but a smaller data set,
so the episode takes a minute, not several) under a seeded uniform-random
policy, so ops, blueprints, blends and every lever's head vary from one
germination to the next. The host runs under
``torch.compile(fullgraph=True)`` (a graph break would raise) with a
backend that only counts the graphs Dynamo hands it, per host mode: what is
counted is Dynamo's capture, which the backend does not change, and
skipping Inductor keeps the figure to a minute on a CPU. The recompile
limit is raised so Dynamo cannot silently fall back to eager. Dynamo
compiles one graph per mode (train, eval) per live set, so each mode's
count is compared with the number of distinct ``tuple(slot.live_key())``
seen in epochs where that mode ran compiled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from bench import fixtures
from bench.timing import Row, Settings
from esper_kernel.compose.stages import Op
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, load_task
from esper_kernel.grow.hosts import Host
from esper_kernel.tamiyo.policies import RandomPolicy

KEY = "compile"
LiveSet = tuple[tuple[bool, str | None, int], ...]


class CountingBackend:
    """Counts the graphs Dynamo captures, per host mode, and runs them eagerly."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.graphs: dict[str, int] = {"train": 0, "eval": 0}

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs["train" if self.host.training else "eval"] += 1
        return gm.forward


def _raise_recompile_limit(n: int) -> None:
    # The option was renamed across torch versions; without a high limit Dynamo would quietly run eager.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, n)


def run(settings: Settings) -> list[Row]:
    small = EnvConfig(train_size=128, val_size=64, epochs=8)
    cfg = small if settings.quick else EnvConfig(train_size=256, val_size=128)
    reg = fixtures.registry(cfg)
    env = MorphoEnv(cfg, reg, load_task(cfg, 0), fixtures.NullLog())
    envs = EnvBatch([env])
    torch._dynamo.reset()
    counters.clear()
    _raise_recompile_limit(256)
    obs = envs.reset([0])
    host = env.host
    backend = CountingBackend(host)
    env.runner.model = torch.compile(host, backend=backend, fullgraph=True)
    compiled = torch.compile(host, backend=backend, fullgraph=True)
    seen: dict[str, set[LiveSet]] = {"train": set(), "eval": set()}
    # What Dynamo actually specializes on: the structure of every live module, which live_key() leaves out
    # (two blueprints with the same blend share a live_key but not a graph). A module's repr names its layers.
    structures: set[tuple[str, ...]] = set()

    def recording_model(x: torch.Tensor) -> torch.Tensor:
        # Only compiled calls count: the epoch's probe batch and the co-adaptation step run the host eagerly.
        slots = host.seed_slots()
        seen["train" if host.training else "eval"].add(tuple(s.live_key() for s in slots))
        structures.add(tuple(repr(m) if m is not None else "-" for s in slots for m in (s.seed, s.gate, *s.fossils)))
        out: torch.Tensor = compiled(x)
        return out

    env.runner.model = recording_model
    policy = RandomPolicy(seed=3)
    chosen: dict[str, set[str]] = {n: set() for n in fixtures.BUILTIN_LEVERS}
    ops: dict[str, int] = {}
    while not env.done:
        sampled = policy.act(obs, envs.masks(), envs)
        decision = reg.space.decode(sampled.actions)[0]
        ops[decision.op.name] = ops.get(decision.op.name, 0) + 1
        if decision.op is Op.GERMINATE:
            for n in chosen:
                if decision.relevant[n]:
                    chosen[n].add(decision.choices[n])
        obs = envs.step(sampled.actions)[0].obs[None]
    breaks = sum(counters["graph_break"].values())
    per_mode = backend.graphs
    n_sets = {m: len(v) for m, v in seen.items()}
    ok = breaks == 0 and all(per_mode[m] == n_sets[m] for m in per_mode)
    varied = ", ".join(f"{n} {len(c)}" for n, c in chosen.items())
    return [
        Row(
            key=KEY,
            figure=f"graphs compiled over a {cfg.epochs}-epoch episode (train / eval)",
            measured=f"{per_mode['train']} / {per_mode['eval']} graphs, {breaks} breaks",
            baseline=f"{n_sets['train']} / {n_sets['eval']} distinct live sets",
            ratio=None,
            target="equal per mode, 0 breaks",
            passed=ok,
            notes=(
                f"ops taken: {ops}; distinct choices per lever at germination: {varied}",
                f"distinct live sets over the episode: {len(seen['train'] | seen['eval'])}; "
                f"distinct sets of live module structures (live_key plus each seed's layers): {len(structures)}",
            ),
        )
    ]
