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
* ``on_enter_stage`` for every legal transition and every choice, and
  ``on_epoch`` for seeds in every live stage: knobs stay valid, and the lever
  writes only knobs it owns (``HeadSpec.knob`` or its ``writes``), never a
  build-time knob after the module exists;
* knob ownership composed with every installed lever: two levers writing one
  knob (so one silently overwrites the other's choice) fail, unless one
  declares that it composes;
* the declared compile safety, by counting the graphs Dynamo compiles for a
  tiny CNN host while the lever's choices vary across seeds;
* lever state and choices surviving a real checkpoint.

The building blocks (:class:`Harness`, :func:`open_registry`,
:func:`random_view`, :func:`seed_in_stage`, :class:`CountingBackend`) live in
:mod:`esper_kernel.harness`, plain code without pytest, and are re-exported
here for a lever's own effect tests.
"""

from __future__ import annotations

import math
import pkgutil
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from esper_kernel.compose.actions import N_OPS
from esper_kernel.compose.discovery import installed_entry_points
from esper_kernel.compose.registry import Registry, check_compile_safety
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.specs import FieldContext, Safety
from esper_kernel.compose.stages import LIVE_STAGES, TRANSITIONS, Op, Stage
from esper_kernel.harness import (
    _STAGE_PATH,
    MAX_EPOCHS,
    CountingBackend,
    Harness,
    LeverUnderTest,
    compile_graph_counts,
    open_registry,
    random_view,
    seed_in_stage,
)
from esper_kernel.infra.checkpoint import FORMAT, load, save_atomic
from esper_kernel.infra.errors import PluginError

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

    def test_on_epoch_every_stage(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        for choices in lut.choice_rounds():
            for stage in sorted(LIVE_STAGES):
                seed = seed_in_stage(lut.registry, stage, choices)
                for epoch in range(seed.stage_entered_epoch, MAX_EPOCHS):
                    # Raises, naming the lever, on a knob it does not own or one that could not take effect.
                    lut.registry.on_epoch(seed, epoch)
                    _check_knobs(seed, f"on_epoch(epoch {epoch}) in {stage.name} with {choices}")

    def test_knob_ownership_with_installed_levers(self, lever_under_test: LeverUnderTest) -> None:
        lut = lever_under_test
        others = [ep.name for ep in installed_entry_points() if ep.name != lut.name]
        for other in others:
            try:
                open_registry([lut.name, other])
            except PluginError as exc:
                if "is written by" in str(exc):
                    raise AssertionError(f"lever {lut.name!r} and installed lever {other!r}: {exc}") from exc
                # Anything else (an unrelated lever that fails to load, a declared conflict) is not this check's.

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
