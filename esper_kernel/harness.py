"""A lifecycle harness for lever tests: registries, random states, seeds in any stage, compile counting.

Plain code, no pytest: :mod:`esper_kernel.testing` (the contract kit) builds
on it, and a lever's own effect tests use it directly::

    from esper_kernel.harness import Harness

    h = Harness(["my_lever"])
    seed = h.germinate(0, my_head="STRICT")
    h.end_epoch(grad_ratio=0.3)
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch

from esper_kernel.compose.actions import Decision
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import LeverInfo, Selection, installed_entry_points
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.registry import ComposedField, Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.specs import CompileSafety, HeadSpec
from esper_kernel.compose.stages import LIVE_STAGES, Stage
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.hosts import CNNHostConfig, build_host
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig, SlotMeasure
from esper_kernel.grow.optim import HostOptimizer
from esper_kernel.infra.telemetry import null_log

__all__ = [
    "MAX_EPOCHS",
    "N_SLOTS",
    "CountingBackend",
    "Harness",
    "LeverUnderTest",
    "compile_graph_counts",
    "open_registry",
    "random_view",
    "seed_in_stage",
]

N_RANDOM_STATES = 64
MAX_EPOCHS = 20
N_SLOTS = 2

_STAGE_PATH: dict[Stage, tuple[Stage, ...]] = {
    Stage.GERMINATED: (),
    Stage.TRAINING: (Stage.TRAINING,),
    Stage.BLENDING: (Stage.TRAINING, Stage.BLENDING),
    Stage.PROBATIONARY: (Stage.TRAINING, Stage.BLENDING, Stage.PROBATIONARY),
    Stage.FOSSILIZED: (Stage.TRAINING, Stage.BLENDING, Stage.PROBATIONARY, Stage.FOSSILIZED),
    Stage.CULLED: (Stage.TRAINING, Stage.CULLED),
    Stage.EMBARGOED: (Stage.TRAINING, Stage.CULLED, Stage.EMBARGOED),
}


# -- registries ------------------------------------------------------------------


def _requires_closure(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` plus every lever they (transitively) require, via real entry points."""
    eps = {ep.name: ep for ep in installed_entry_points()}
    out: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop(0)
        if name in out:
            continue
        out.append(name)
        ep = eps.get(name)
        if ep is not None:
            # A lever that fails to import is reported by load_levers, naming its distribution.
            with contextlib.suppress(Exception):
                todo.extend(getattr(ep.load(), "requires", ()))
    return tuple(out)


def open_registry(
    levers: Sequence[str],
    *,
    n_slots: int = N_SLOTS,
    topology: str = "cnn",
    entry_points: Sequence[md.EntryPoint] | None = None,
) -> Registry:
    """A registry with exactly ``levers`` (and what they require), loaded through entry points.

    Strict: a lever that fails to import is an error, whatever ``ESPER_*`` says.
    """
    selection = Selection(only=_requires_closure(levers), autoload=False, strict=True)
    core = CoreHeads(n_slots, blueprint_names(topology), topology)
    return Registry.open(core, selection, entry_points)


@attrs.frozen
class LeverUnderTest:
    """One lever composed with the kernel: what the contract inspects."""

    name: str
    registry: Registry

    @property
    def info(self) -> LeverInfo:
        return self.registry.info(self.name)

    @property
    def heads(self) -> tuple[HeadSpec, ...]:
        return tuple(h.spec for h in self.registry.space.heads if h.lever == self.name)

    @property
    def fields(self) -> tuple[ComposedField, ...]:
        return tuple(f for f in self.registry.fields if f.lever == self.name)

    @property
    def safety(self) -> CompileSafety:
        return self.registry.safety[self.name]

    def choice_rounds(self) -> list[dict[str, str]]:
        """Choices for this lever's heads that between them use every choice at least once."""
        heads = self.heads
        n = max((h.size for h in heads), default=1)
        return [{h.name: h.choices[i % h.size] for h in heads} for i in range(n)]


# -- random states -----------------------------------------------------------------


def random_view(registry: Registry, rng: random.Random, *, n_slots: int = N_SLOTS) -> MaskView:
    """A random but consistent decision state: 1-4 envs, a random stage per slot, a random epoch."""
    n_envs = rng.randint(1, 4)
    stages = [[rng.choice(list(Stage)) for _ in range(n_slots)] for _ in range(n_envs)]
    stage = torch.tensor([[int(s) for s in row] for row in stages])
    core = registry.info("esper").plugin
    return MaskView(
        space=registry.space,
        n_envs=n_envs,
        n_slots=n_slots,
        topology=str(getattr(core, "topology", "cnn")),
        max_epochs=MAX_EPOCHS,
        epoch=torch.tensor([rng.randrange(MAX_EPOCHS) for _ in range(n_envs)]),
        slot_stage=stage,
        fossilize_ok=(stage == int(Stage.PROBATIONARY))
        & torch.tensor([[rng.random() < 0.5 for _ in range(n_slots)] for _ in range(n_envs)]),
        blueprints=tuple(getattr(core, "blueprints", ())),
    )


def _germinate_decision(
    registry: Registry, slot: int, blueprint: str | None, blend: str, choices: Mapping[str, str]
) -> Decision:
    space = registry.space
    row: dict[str, str] = {"op": "germinate", "slot": f"s{slot}", "blend": blend, **choices}
    if blueprint is not None:
        row["blueprint"] = blueprint
    return space.decode(space.encode([row]))[0]


def seed_in_stage(
    registry: Registry,
    stage: Stage,
    choices: Mapping[str, str] | None = None,
    *,
    rng: random.Random | None = None,
    epochs: int | None = None,
) -> SeedState:
    """A seed as GERMINATE records it, walked to ``stage`` through every lever's ``on_enter_stage``.

    With ``rng`` its metrics hold ``epochs`` (default random 0-8) epochs of random
    measurements, as the lifecycle engine would have appended them.
    """
    decision = _germinate_decision(registry, 0, None, "linear", choices or {})
    lever_heads = {n: c for n, c in decision.choices.items() if decision.relevant[n] and n not in CORE_HEADS}
    seed = SeedState(
        seed_id="seed1-s0",
        slot=0,
        blueprint=decision.choices["blueprint"],
        blend=decision.choices["blend"],
        topology="cnn",
        germinated_epoch=0,
        max_epochs=MAX_EPOCHS,
        choices=dict(lever_heads),
        values={n: decision.values[n] for n in lever_heads},
    )
    registry.enter_stage(seed, Stage.DORMANT, Stage.GERMINATED)
    old = Stage.GERMINATED
    for i, new in enumerate(_STAGE_PATH[stage]):
        seed.stage = new
        seed.stage_entered_epoch = i + 1
        registry.enter_stage(seed, old, new)
        old = new
    if rng is not None:
        _random_metrics(seed, rng, rng.randint(0, 8) if epochs is None else epochs)
    return seed


def _random_metrics(seed: SeedState, rng: random.Random, epochs: int) -> None:
    m = seed.metrics
    for _ in range(epochs):
        m.stage.append(int(rng.choice(sorted(LIVE_STAGES))))
        m.alpha.append(rng.random())
        m.grad_norm.append(rng.expovariate(1.0))
        m.grad_ratio.append(rng.expovariate(5.0))
        m.host_grad_via_seed.append(rng.expovariate(1.0))
        m.host_weight_change.append(rng.expovariate(100.0))
        m.weight_norm.append(rng.expovariate(0.5))
        m.contribution.append(rng.uniform(-0.1, 0.1) if rng.random() < 0.5 else None)
        m.val_accuracy.append(rng.random())
        m.alpha_batch_var.append(rng.random() * 0.1)
        m.exploded.append(rng.random() < 0.05)
        m.coadaptation_delta.append(rng.uniform(-0.05, 0.05) if rng.random() < 0.3 else None)
    if epochs:
        m.stage[-1] = int(seed.stage) if seed.stage in LIVE_STAGES else m.stage[-1]


# -- a lifecycle on a tiny host --------------------------------------------------------


class Harness:
    """A :class:`~esper_kernel.grow.lifecycle.Lifecycle` on a tiny CNN host, driven by hand.

    ``germinate`` takes head choices by name; ``end_epoch`` hands the lifecycle
    a fabricated measurement for every live slot, so gates can be driven
    without training anything::

        h = Harness(["my_lever"])
        seed = h.germinate(0, my_head="STRICT")
        h.end_epoch(grad_ratio=0.3)
    """

    def __init__(
        self,
        levers: Sequence[str] = (),
        *,
        registry: Registry | None = None,
        host: torch.nn.Module | None = None,
        width: int = 4,
        blocks: int = N_SLOTS,
        max_epochs: int = MAX_EPOCHS,
    ) -> None:
        self.registry = registry if registry is not None else open_registry(levers, n_slots=blocks)
        self.host = host if host is not None else build_host("cnn", CNNHostConfig(width=width, blocks=blocks))
        self.lifecycle = Lifecycle(self.host, self.registry, LifecycleConfig(max_epochs=max_epochs), log=null_log())
        #: The host's optimizer as the epoch runner keeps it, so a lever's lr effect can be read.
        self.optimizer = HostOptimizer(self.lifecycle)
        self.epoch = 0

    def germinate(
        self, slot: int = 0, *, blueprint: str | None = "conv_small", blend: str = "linear", **choices: str
    ) -> SeedState:
        decision = _germinate_decision(self.registry, slot, blueprint, blend, choices)
        return self.lifecycle.germinate(slot, decision, self.epoch)

    def end_epoch(
        self,
        *,
        grad_ratio: float = 1.0,
        contribution: float | None = 0.01,
        val_accuracy: float = 0.5,
        grad_norm: float = 1.0,
        slots: Mapping[int, SlotMeasure] | None = None,
    ) -> None:
        """End the current epoch with the same fabricated measure for every live slot."""
        measure = SlotMeasure(grad_norm=grad_norm, grad_ratio=grad_ratio, contribution=contribution)
        per_slot = dict(slots) if slots is not None else {i: measure for i, s in enumerate(self.lifecycle.seeds) if s}
        self.lifecycle.end_epoch(EpochMeasure(self.epoch, val_accuracy, 1.0, per_slot))
        self.epoch += 1

    def seed_group_lr(self, slot: int = 0) -> float:
        """The learning rate of the live seed's optimizer param group in ``slot``."""
        return self.optimizer.seed_group_lr(slot)

    def seed(self, slot: int = 0) -> SeedState | None:
        return self.lifecycle.seeds[slot]

    def stage(self, slot: int = 0) -> Stage:
        return self.lifecycle.stages[slot]

    def run_until(self, stage: Stage, slot: int = 0, *, max_epochs: int = 12, **measure: Any) -> bool:
        """End epochs until ``slot`` is in ``stage`` (True) or ``max_epochs`` ran out (False)."""
        for _ in range(max_epochs):
            if self.stage(slot) is stage:
                return True
            self.end_epoch(**measure)
        return self.stage(slot) is stage

    def seed_parameter_count(self, slot: int = 0) -> int:
        """Scalar parameters of the live seed in ``slot`` (and its gate)."""
        return sum(p.numel() for p in self.lifecycle.slots[slot].seed_parameters())

    def cull_all(self) -> None:
        for i, s in enumerate(self.lifecycle.seeds):
            if s is not None:
                self.lifecycle.cull(i, self.epoch, reason="test")

    def batch(self, n: int = 2, size: int = 8) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


# -- compile -------------------------------------------------------------------------------


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs Dynamo hands it and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


def compile_graph_counts(levers: Sequence[str], rounds: Sequence[Sequence[Mapping[str, str]]]) -> list[int]:
    """Graphs compiled after each round of a tiny CNN host's life under ``torch.compile``.

    Each round germinates one seed per slot with the given head choices (one
    mapping per slot), walks them through TRAINING into BLENDING with a
    forward pass every epoch, then culls them. Round 0 is the baseline: what
    the kernel's own lifecycle compiles. Graphs added by later rounds are
    what the lever's choices cost.
    """
    import torch._dynamo

    registry = open_registry(levers)
    host = build_host("cnn", CNNHostConfig(width=4, blocks=N_SLOTS)).eval()
    backend = CountingBackend()
    torch._dynamo.reset()
    compiled = torch.compile(host, backend=backend, fullgraph=False)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    counts: list[int] = []
    with torch._dynamo.config.patch(recompile_limit=64), torch.no_grad():
        compiled(x)
        for per_slot in rounds:
            h = Harness(registry=registry, host=host)
            for slot, choices in enumerate(per_slot[:N_SLOTS]):
                h.germinate(slot, **choices)
            compiled(x)
            for _ in range(12):
                h.end_epoch(grad_ratio=1.0)
                compiled(x)
                if all(h.stage(i) is not Stage.GERMINATED and h.stage(i) is not Stage.TRAINING for i in range(N_SLOTS)):
                    break
            h.cull_all()
            compiled(x)
            counts.append(backend.graphs)
    torch._dynamo.reset()
    return counts
