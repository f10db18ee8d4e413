"""The lever contract test kit: fixtures, a lifecycle harness and the contract suite.

Installed as a pytest plugin (entry point ``esper`` in the ``pytest11`` group),
so its fixtures are available in any project that has ``esper-kernel``
installed. A lever author runs the whole contract with::

    from esper_kernel.testing import LeverContract

    class TestMyLever(LeverContract):
        lever = "my_lever"      # the entry-point name, loaded through real entry points

The contract checks, through the lever's installed entry point:

* hook conformance (pluggy's ``check_pending``; ``action_head`` and
  ``compile_safety`` implemented; ``telemetry_fields`` is optional);
* head specs (at least two choices, default among them, relevant exactly for
  the ops they list);
* masks over many random states (bool, right shape, never an empty row, and
  composable with the kernel's own masks);
* telemetry (identifier names, unique, finite-or-None on seeds in every stage
  with random metrics);
* ``on_enter_stage`` for every legal transition and every choice;
* the declared compile safety, by counting the graphs Dynamo compiles for a
  tiny CNN host while the lever's choices vary across seeds;
* lever state and choices surviving a real checkpoint.

The same building blocks (:class:`Harness`, :func:`open_registry`,
:func:`random_view`, :func:`seed_in_stage`, :class:`CountingBackend`) are
public for a lever's own effect tests.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import math
import pkgutil
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import torch

from esper_kernel.actions import N_OPS, Decision, MaskView
from esper_kernel.blueprints import blueprint_names
from esper_kernel.checkpoint import FORMAT, load, save_atomic
from esper_kernel.core import CoreHeads
from esper_kernel.errors import PluginError
from esper_kernel.hosts import CNNHostConfig, build_host
from esper_kernel.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig, SlotMeasure
from esper_kernel.registry import ComposedField, LeverInfo, Registry, Selection, installed_entry_points
from esper_kernel.run import check_compile_safety
from esper_kernel.seeds import SeedState
from esper_kernel.specs import CompileSafety, FieldContext, HeadSpec, Safety
from esper_kernel.stages import LIVE_STAGES, TRANSITIONS, Op, Stage
from esper_kernel.telemetry import null_log

__all__ = [
    "CountingBackend",
    "Harness",
    "LeverContract",
    "LeverUnderTest",
    "check_compile_safety",
    "compile_graph_counts",
    "open_registry",
    "random_view",
    "seed_in_stage",
]

#: Random states each mask/telemetry check walks through (seeded: failures reproduce).
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
    lever_heads = {n: c for n, c in decision.choices.items() if decision.relevant[n] and n not in _CORE}
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


_CORE = frozenset({"op", "slot", "blueprint", "blend"})


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
    """A :class:`~esper_kernel.lifecycle.Lifecycle` on a tiny CNN host, driven by hand.

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


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def esper_registry_factory() -> Callable[..., Registry]:
    """``factory(levers, n_slots=2, topology="cnn")``: a registry with exactly those levers."""
    return open_registry


@pytest.fixture
def esper_harness_factory() -> Callable[..., Harness]:
    """``factory(levers, **kwargs)``: a :class:`Harness` driving a lifecycle with those levers."""
    return Harness


@pytest.fixture
def lever_under_test(request: pytest.FixtureRequest) -> LeverUnderTest:
    """The lever named by the test class's (or module's) ``lever`` attribute, composed with the kernel."""
    name = getattr(request.cls, "lever", None) or getattr(request.module, "lever", None)
    if not isinstance(name, str) or not name:
        raise pytest.UsageError(
            f'{request.node.nodeid}: set `lever = "<entry-point name>"` on the test class to use lever_under_test'
        )
    return LeverUnderTest(name, open_registry([name]))


@pytest.fixture
def _esper_one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the contract ----------------------------------------------------------------------------


@pytest.mark.usefixtures("_esper_one_thread")
class LeverContract:
    """Subclass as ``TestX(LeverContract)`` with ``lever = "<name>"`` to run the contract."""

    lever: ClassVar[str] = ""

    def test_hook_conformance(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        # Registry.open ran pluggy's check_pending; run it again so the check is explicit.
        lut.registry.pm.check_pending()
        hooks = lut.registry.hooks_of(lut.name)
        # Any subset of hooks is a valid lever (docs/hooks.md); a head and a compile declaration are what
        # make it a lever Tamiyo can pull and the kernel can compile safely.
        missing = [h for h in ("action_head", "compile_safety") if h not in hooks]
        assert not missing, f"lever {lut.name!r} does not implement {missing}; it implements {list(hooks)}"
        assert lut.info.distribution != "<unknown distribution>", "the entry point has no distribution"

    def test_head_specs(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        space = lut.registry.space
        assert lut.heads, f"lever {lut.name!r} declares no head"
        for spec in lut.heads:
            assert spec.size >= 2, f"head {spec.name!r} needs >= 2 choices"
            assert spec.default in spec.choices
            assert len(spec.values) == spec.size
            assert spec.description, f"head {spec.name!r} has no description (shown by `esper levers list`)"
            i = space.head(spec.name).index
            for op in Op:
                row = {"op": op.name.lower()}
                for other in space.heads:  # the most permissive condition values
                    if spec.condition is not None and other.name == spec.condition.head:
                        row[other.name] = spec.condition.choices[0]
                relevant = bool(space.relevance(space.encode([row]))[0, i])
                expect = op in spec.ops
                assert relevant == expect, f"head {spec.name!r} relevant={relevant} for op {op.name}; ops {spec.ops}"
                if not expect:
                    other_choice = spec.choices[(spec.default_index + 1) % spec.size]
                    decision = space.decode(space.encode([{**row, spec.name: other_choice}]))[0]
                    assert decision.choices[spec.name] == spec.default, "an irrelevant head must record its default"

    def test_masks_over_random_states(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        reg = lut.registry
        sources = [s for s in reg.masks.sources if s.lever == lut.name]
        rng = random.Random(f"esper-masks-{lut.name}")
        for _ in range(N_RANDOM_STATES):
            view = random_view(reg, rng)
            composed = reg.masks(view)  # raises, naming the lever, on a bad shape or an empty row
            assert composed.shape == (view.n_envs, N_OPS, reg.space.n_heads, reg.space.max_choices)
            for src in sources:
                got = src.fn(view)
                if got is None:
                    continue
                assert isinstance(got, Mapping)
                for name, m in got.items():
                    spec = reg.space.head(name).spec
                    assert m.dtype == torch.bool, f"mask {name!r} dtype {m.dtype}"
                    assert tuple(m.shape) in ((view.n_envs, spec.size), (view.n_envs, N_OPS, spec.size))
                    rows = m if m.dim() == 2 else m[:, sorted(int(o) for o in spec.ops)]
                    empty = ~rows.any(-1)
                    assert not bool(empty.any()), (
                        f"mask {name!r} of lever {lut.name!r} leaves no legal choice at epoch "
                        f"{view.epoch.tolist()} stages {view.slot_stage.tolist()}"
                    )

    def test_telemetry(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        names = [f.spec.name for f in lut.fields]
        assert len(names) == len(set(names)), f"duplicate telemetry names {names}"
        assert all(n.isidentifier() for n in names)
        assert all(f.spec.description for f in lut.fields), "every telemetry field needs a description"
        rng = random.Random(f"esper-telemetry-{lut.name}")
        seeds: list[SeedState | None] = [None]
        for stage in _STAGE_PATH:
            for choices in lut.choice_rounds():
                seeds.append(seed_in_stage(lut.registry, stage, choices, rng=rng))
                seeds.append(seed_in_stage(lut.registry, stage, choices, rng=rng, epochs=0))
        for seed in seeds:
            epoch = rng.randrange(MAX_EPOCHS)
            ctx = FieldContext(seed, 0, epoch, MAX_EPOCHS, rng.random(), rng.expovariate(1.0))
            for f in lut.fields:
                v = f.spec.compute(ctx)
                where = f"{f.key} on a {seed.stage.name if seed else 'missing'} seed"
                assert v is None or isinstance(v, int | float), f"{where} returned {v!r}"
                assert v is None or math.isfinite(v), f"{where} returned {v!r}: return None, not NaN/inf"

    def test_on_enter_stage_every_transition(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        for choices in lut.choice_rounds():
            for old, news in TRANSITIONS.items():
                for new in news:
                    base = Stage.GERMINATED if old is Stage.DORMANT else old
                    seed = seed_in_stage(lut.registry, base, choices)
                    seed.stage = new
                    lut.registry.enter_stage(seed, old, new)
                    _check_knobs(seed, f"{old.name} -> {new.name} with {choices}")

    def test_compile_safety(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        level = lut.safety.level
        if level is Safety.BREAKS_GRAPH:
            assert lut.safety.reason, "a BREAKS_GRAPH lever must say why"
            with pytest.raises(PluginError, match=lut.name):
                check_compile_safety(lut.registry, allow_graph_breaks=False)
            check_compile_safety(lut.registry, allow_graph_breaks=True)
            return
        default = {h.name: h.default for h in lut.heads}
        rounds: list[list[Mapping[str, str]]] = [[default, default]]
        for choices in lut.choice_rounds():
            rounds.append([choices, default])
        counts = compile_graph_counts([lut.name], rounds)
        extra = counts[-1] - counts[0]
        if level is Safety.NONE:
            assert extra == 0, (
                f"lever {lut.name!r} declares compile safety NONE but its choices compiled {extra} extra "
                f"graph(s) (after each round: {counts}); declare SPECIALIZES or BREAKS_GRAPH"
            )
        else:
            n_choices = sum(h.size for h in lut.heads)
            assert extra <= n_choices, f"SPECIALIZES allows one graph per choice ({n_choices}), got {extra}"

    def test_checkpoint_round_trip(self, lever_under_test: LeverUnderTest, tmp_path: Path) -> None:
        lut = lever_under_test
        rounds = lut.choice_rounds()
        h = Harness(registry=lut.registry)
        h.germinate(0, **rounds[-1])
        h.germinate(1, **rounds[0])
        h.run_until(Stage.BLENDING, 0, max_epochs=8)
        before = [s for s in h.lifecycle.seeds if s is not None]
        assert before
        path = tmp_path / "checkpoint.pt"
        save_atomic({"format": FORMAT, "lifecycle": h.lifecycle.state_dict()}, path)
        state = load(path)  # weights_only: lever state must be plain data
        fresh = Harness(registry=lut.registry)
        fresh.lifecycle.load_state_dict(state["lifecycle"])
        after = [s for s in fresh.lifecycle.seeds if s is not None]
        for a, b in zip(before, after, strict=True):
            assert b.lever_state == a.lever_state
            assert b.choices == a.choices
            assert b.values == a.values
            assert b.knobs == a.knobs


def _check_knobs(seed: SeedState, where: str) -> None:
    k = seed.knobs
    for name in ("steepness", "g2_threshold", "lr_scale", "width_scale", "explode_norm"):
        v = getattr(k, name)
        assert isinstance(v, int | float) and math.isfinite(v) and v > 0, f"{where}: knob {name}={v!r}"
    for name in ("blend_steps", "dwell_epochs", "min_blend_epochs", "probation_epochs"):
        v = getattr(k, name)
        assert isinstance(v, int) and v >= 0, f"{where}: knob {name}={v!r} must be an int >= 0"
    if k.seed_input_transform is not None:
        fn = pkgutil.resolve_name(k.seed_input_transform)
        x = torch.randn(2, 4, 3, 3)
        y = fn(x, **k.seed_input_kwargs)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"{where}: seed_input_transform changes the shape"
