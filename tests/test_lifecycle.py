"""The lifecycle engine: transition table, ops, gates, events, knobs, blends,
parameter accounting, counterfactuals and checkpoint round trips.

Most tests drive :class:`Lifecycle` with fabricated :class:`EpochMeasure`s so
each gate sees exactly the numbers the test chose; the tests about training
(parameter accounting, contribution, checkpoints) run real epochs on a tiny
task through :class:`EpochRunner`.
"""

from __future__ import annotations

import copy
import io
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from esper_kernel import hookimpl
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import LeverInfo
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import LIVE_STAGES, TRANSITIONS, IllegalTransition, Stage, check_transition
from esper_kernel.data.generated import make_shapes
from esper_kernel.data.tasks import TaskData
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.hosts import CNNHost, CNNHostConfig, Host, TransformerHost, TransformerHostConfig
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig, LifecycleError, SlotMeasure
from esper_kernel.grow.optim import HostOptimizer
from esper_kernel.grow.slots import alpha_sigmoid
from esper_kernel.grow.training import EpochRunner

CNN_CFG = CNNHostConfig(width=8, blocks=3)
TF_CFG = TransformerHostConfig(vocab_size=32, dim=32, heads=2, layers=3, max_len=16)
#: With max_epochs=20 the default dwell is max(1, int(20 * 0.1)) = 2.
CONFIG = LifecycleConfig(max_epochs=20)


# ------------------------------------------------------------------ helpers


class Recorder:
    """A structlog-compatible logger that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for ev, kw in self.events if ev == name]

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(kw["old"], kw["new"], kw["reason"]) for kw in self.named("seed.stage_changed")]

    def gates(self) -> list[tuple[str, bool]]:
        return [(kw["gate"], kw["passed"]) for kw in self.named("seed.gate_evaluated")]


class StageLever:
    """A test lever: records every on_enter_stage call and optionally sets knobs."""

    def __init__(self, **knobs: Any) -> None:
        self.calls: list[tuple[str, Stage, Stage]] = []
        self.knobs = knobs
        self.writes = tuple(knobs)  # the knobs this lever owns

    @hookimpl
    def on_enter_stage(self, seed: SeedState, old: Stage, new: Stage) -> None:
        self.calls.append((seed.seed_id, old, new))
        for name, value in self.knobs.items():
            setattr(seed.knobs, name, value)


def make_registry(topology: str = "cnn", lever: object | None = None) -> Registry:
    core = CoreHeads(3, blueprint_names(topology), topology)
    levers = [] if lever is None else [LeverInfo("probe", "esper-test-probe", "1.0", "tests:probe", lever)]
    return Registry(core, levers)


def make_host(topology: str = "cnn") -> Host:
    return CNNHost(CNN_CFG) if topology == "cnn" else TransformerHost(TF_CFG)


def make_lifecycle(
    topology: str = "cnn",
    *,
    lever: object | None = None,
    log: Recorder | None = None,
    config: LifecycleConfig = CONFIG,
) -> Lifecycle:
    torch.manual_seed(0)
    return Lifecycle(make_host(topology), make_registry(topology, lever), config, log=log or Recorder())


def germinate(lc: Lifecycle, slot: int, epoch: int, blueprint: str = "norm", blend: str = "linear") -> SeedState:
    space = lc.registry.space
    decision = space.decode(
        space.encode([{"op": "germinate", "slot": f"s{slot}", "blueprint": blueprint, "blend": blend}])
    )[0]
    assert lc.apply(decision, epoch)
    seed = lc.seeds[slot]
    assert seed is not None
    return seed


def measure(
    epoch: int,
    slot: int = 0,
    *,
    grad_ratio: float = 1.0,
    contribution: float | None = None,
    grad_norm: float = 1.0,
    exploded: bool = False,
) -> EpochMeasure:
    m = SlotMeasure(grad_norm=grad_norm, grad_ratio=grad_ratio, contribution=contribution, exploded=exploded)
    return EpochMeasure(epoch=epoch, val_accuracy=0.5, host_grad_norm=1.0, slots={slot: m})


def drive_to(lc: Lifecycle, slot: int, target: Stage, epoch: int, contribution: float = 0.05) -> int:
    """End epochs (good measures) from ``epoch`` until ``slot`` is in ``target``; returns the next epoch."""
    for _ in range(50):
        if lc.stages[slot] is target:
            return epoch
        lc.end_epoch(measure(epoch, slot, contribution=contribution))
        epoch += 1
    raise AssertionError(f"slot {slot} never reached {target.name}; it is {lc.stages[slot].name}")


def tiny_shapes() -> TaskData:
    return make_shapes(0, n_train=128, n_val=64)


def fixed_batch(topology: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if topology == "cnn":
        return torch.randn(4, 3, 32, 32, generator=g)
    return torch.randint(0, TF_CFG.vocab_size, (2, 16), generator=g)


def seed_group(opt: HostOptimizer, seed_id: str) -> dict[str, Any]:
    groups = [g for g in opt.param_groups if g.get("seed_id") == seed_id]
    assert len(groups) == 1, f"expected one param group for {seed_id}, found {len(groups)}"
    return groups[0]


def ids(params: Any) -> set[int]:
    return {id(p) for p in params}


# ------------------------------------------------------------------ 1. transition table


ALL_PAIRS = list(itertools.product(Stage, Stage))
LEGAL = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def test_transition_table_covers_every_stage_and_has_the_documented_edges() -> None:
    assert set(TRANSITIONS) == set(Stage)
    assert len(LEGAL) == 12
    assert len(ILLEGAL) == len(Stage) ** 2 - 12
    # Nothing goes back to DORMANT except a fossil's or an embargoed slot.
    assert {a for a, b in LEGAL if b is Stage.DORMANT} == {Stage.FOSSILIZED, Stage.EMBARGOED}
    # Every live stage can be culled; only PROBATIONARY can be fossilized.
    assert {a for a, b in LEGAL if b is Stage.CULLED} == set(LIVE_STAGES)
    assert {a for a, b in LEGAL if b is Stage.FOSSILIZED} == {Stage.PROBATIONARY}


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=[f"{a.name}->{b.name}" for a, b in LEGAL])
def test_every_legal_transition_is_accepted(old: Stage, new: Stage) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{a.name}->{b.name}" for a, b in ILLEGAL])
def test_every_illegal_transition_raises(old: Stage, new: Stage) -> None:
    with pytest.raises(IllegalTransition, match=f"illegal transition {old.name} -> {new.name}"):
        check_transition(old, new)


# ------------------------------------------------------------------ 2. ops on wrong stages


def test_germinate_on_an_occupied_slot_is_refused() -> None:
    lc = make_lifecycle()
    opt = HostOptimizer(lc)
    germinate(lc, 0, 0)
    with pytest.raises(LifecycleError, match="cannot germinate slot 0: it is GERMINATED, not DORMANT"):
        germinate(lc, 0, 0, blueprint="attention")
    # The refusal changed nothing: the first seed is still there, alone in its group.
    seed = lc.seeds[0]
    assert seed is not None and seed.blueprint == "norm"
    assert len(opt.param_groups) == 2


def test_germinate_on_an_embargoed_slot_is_refused() -> None:
    lc = make_lifecycle()
    germinate(lc, 1, 0)
    lc.cull(1, 0, reason="test")
    with pytest.raises(LifecycleError, match="cannot germinate slot 1: it is EMBARGOED"):
        germinate(lc, 1, 0)


def test_cull_of_a_dormant_slot_is_refused() -> None:
    lc = make_lifecycle()
    with pytest.raises(LifecycleError, match=r"cannot cull slot 2: no live seed there \(DORMANT\)"):
        lc.cull(2, 0, reason="tamiyo")


@pytest.mark.parametrize("target", [Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING])
def test_fossilize_of_a_non_probationary_seed_is_refused(target: Stage) -> None:
    lc = make_lifecycle()
    germinate(lc, 0, 0)
    drive_to(lc, 0, target, 0)
    with pytest.raises(LifecycleError, match=f"cannot fossilize seed1-s0: it is {target.name}, not PROBATIONARY"):
        lc.fossilize(0, 9)
    assert lc.stages[0] is target


def test_fossilize_of_an_empty_slot_is_refused() -> None:
    lc = make_lifecycle()
    with pytest.raises(LifecycleError, match="cannot fossilize slot 0: no live seed"):
        lc.fossilize(0, 0)


def test_fossilize_when_g5_fails_is_refused_and_changes_nothing() -> None:
    lc = make_lifecycle()
    germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, 0, contribution=-0.02)
    with pytest.raises(LifecycleError, match="cannot fossilize seed1-s0: gate G5 fails"):
        lc.fossilize(0, epoch)
    assert lc.stages[0] is Stage.PROBATIONARY
    assert lc.slots[0].seed is not None and not lc.slots[0].fossils


# ------------------------------------------------------------------ 3. gates


class _WrongShape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1]


class _NaNOut(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def test_g1_passes_for_a_well_formed_seed() -> None:
    log = Recorder()
    lc = make_lifecycle(log=log)
    seed = germinate(lc, 1, 0, blueprint="conv_small")
    assert lc.gate_g1(seed).passed
    lc.end_epoch(measure(0, 1))
    assert lc.stages[1] is Stage.TRAINING
    assert log.gates() == [("G1", True)]


@pytest.mark.parametrize("bad", [_WrongShape, _NaNOut])
def test_g1_fails_and_culls_a_seed_with_bad_output(bad: type[nn.Module]) -> None:
    log = Recorder()
    lc = make_lifecycle(log=log)
    seed = germinate(lc, 0, 0)
    lc.slots[0].seed = bad()
    gate = lc.gate_g1(seed)
    assert not gate.passed and gate.values == {"shape_ok": 0.0}
    lc.end_epoch(measure(0))
    assert lc.stages[0] is Stage.EMBARGOED
    assert lc.seeds[0] is None and seed.cull_reason == "g1_failed"
    assert ("GERMINATED", "CULLED", "g1_failed") in log.transitions()


def _to_training(lc: Lifecycle) -> int:
    germinate(lc, 0, 0)
    lc.end_epoch(measure(0))  # G1 -> TRAINING, entered at epoch 1
    lc.end_epoch(measure(1))  # dwell is 2: too early for G2
    assert lc.stages[0] is Stage.TRAINING
    return 2


@pytest.mark.parametrize(("ratio", "passes"), [(0.0, False), (0.0999, False), (0.10, True), (0.5, True)])
def test_g2_compares_the_grad_ratio_with_its_threshold(ratio: float, passes: bool) -> None:
    log = Recorder()
    lc = make_lifecycle(log=log)
    epoch = _to_training(lc)
    assert log.gates() == [("G1", True)]  # G2 is not evaluated before the dwell
    lc.end_epoch(measure(epoch, grad_ratio=ratio))
    g2 = log.named("seed.gate_evaluated")[-1]
    assert g2["gate"] == "G2" and g2["passed"] is passes
    assert g2["values"] == {"grad_ratio": ratio} and g2["thresholds"] == {"grad_ratio": 0.10}
    assert lc.stages[0] is (Stage.BLENDING if passes else Stage.TRAINING)


def test_g2_failing_keeps_training_until_it_passes() -> None:
    lc = make_lifecycle()
    epoch = _to_training(lc)
    for e in range(epoch, epoch + 3):
        lc.end_epoch(measure(e, grad_ratio=0.01))
        assert lc.stages[0] is Stage.TRAINING
    lc.end_epoch(measure(epoch + 3, grad_ratio=0.2))
    assert lc.stages[0] is Stage.BLENDING


def test_g3_needs_alpha_one_and_the_minimum_blend_epochs() -> None:
    lc = make_lifecycle()
    seed = germinate(lc, 0, 0)
    drive_to(lc, 0, Stage.BLENDING, 0)
    # Neither met.
    seed.blend_epochs = 1
    gate = lc.gate_g3(seed)
    assert not gate.passed and gate.values == {"alpha": 0.2, "blend_epochs": 1.0}
    # Enough epochs, alpha not yet 1 (5 steps to the full ramp).
    seed.blend_epochs = 4
    assert seed.blend_epochs >= seed.knobs.min_blend_epochs
    gate = lc.gate_g3(seed)
    assert not gate.passed and gate.values["alpha"] == pytest.approx(0.8)
    # Alpha at 1 after 2 steps, but fewer than 3 blending epochs.
    seed.knobs.blend_steps = 2
    seed.blend_epochs = 2
    gate = lc.gate_g3(seed)
    assert not gate.passed and gate.values == {"alpha": 1.0, "blend_epochs": 2.0}
    assert gate.thresholds == {"alpha": 1.0, "blend_epochs": 3.0}
    # Both met.
    seed.blend_epochs = 3
    assert lc.gate_g3(seed).passed


def test_g3_moves_a_blending_seed_to_probation_after_exactly_blend_steps_epochs() -> None:
    log = Recorder()
    lc = make_lifecycle(log=log)
    germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.BLENDING, 0)
    for k in range(1, 5):
        lc.end_epoch(measure(epoch))
        epoch += 1
        assert lc.stages[0] is Stage.BLENDING, f"left BLENDING after {k} epochs"
    lc.end_epoch(measure(epoch))
    assert lc.stages[0] is Stage.PROBATIONARY
    assert [p for g, p in log.gates() if g == "G3"] == [False] * 4 + [True]


@pytest.mark.parametrize(
    ("contributions", "exploded", "passes"),
    [
        ([0.01], [False], True),
        ([0.0], [False], False),
        ([-0.03], [False], False),
        ([None], [False], False),
        # The latest measured contribution counts, not the best one.
        ([0.2, -0.01, None], [False, False, False], False),
        ([-0.2, 0.01, None], [False, False, False], True),
        # One exploded epoch anywhere in the seed's life fails it.
        ([0.3, 0.3], [True, False], False),
    ],
)
def test_g5_needs_a_positive_contribution_and_healthy_gradients(
    contributions: list[float | None], exploded: list[bool], passes: bool
) -> None:
    lc = make_lifecycle()
    seed = germinate(lc, 0, 0)
    seed.metrics.contribution = list(contributions)
    seed.metrics.exploded = list(exploded)
    gate = lc.gate_g5(seed)
    assert gate.gate == "G5" and gate.passed is passes
    assert gate.values["healthy"] == float(not any(exploded))


def test_g5_sees_exploded_gradients_from_the_measured_grad_norm() -> None:
    lc = make_lifecycle()
    germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.BLENDING, 0)
    # Not flagged by the runner, but the norm is above the knob's explode_norm.
    lc.end_epoch(measure(epoch, contribution=0.1, grad_norm=1e4))
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, epoch + 1, contribution=0.1)
    assert lc.fossilize_ok() == [False, False, False]
    with pytest.raises(LifecycleError, match="G5"):
        lc.fossilize(0, epoch)


def test_probation_times_out_after_exactly_probation_epochs() -> None:
    log = Recorder()
    lc = make_lifecycle(log=log)
    seed = germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, 0)
    assert seed.knobs.probation_epochs == 5
    for _ in range(4):
        lc.end_epoch(measure(epoch, contribution=0.1))
        epoch += 1
        assert lc.stages[0] is Stage.PROBATIONARY
    lc.end_epoch(measure(epoch, contribution=0.1))
    assert lc.stages[0] is Stage.EMBARGOED
    assert seed.cull_reason == "probation_timeout"
    assert ("PROBATIONARY", "CULLED", "probation_timeout") in log.transitions()
    assert seed.metrics.stage.count(int(Stage.PROBATIONARY)) == 5


@pytest.mark.parametrize("embargo", [1, 2, 3])
def test_a_culled_slot_is_embargoed_for_embargo_epochs_then_dormant(embargo: int) -> None:
    lc = make_lifecycle(config=LifecycleConfig(max_epochs=20, embargo_epochs=embargo))
    germinate(lc, 0, 0)
    lc.end_epoch(measure(0))
    lc.cull(0, 1, reason="tamiyo")  # Tamiyo's op at the start of epoch 1
    # Stage seen by Tamiyo's decision at the start of each later epoch.
    seen = []
    for epoch in range(1, 1 + embargo + 2):
        lc.end_epoch(EpochMeasure(epoch, 0.5, 1.0))
        seen.append(lc.stages[0])
    assert seen == [Stage.EMBARGOED] * embargo + [Stage.DORMANT] * 2
    germinate(lc, 0, 2 + embargo)  # legal again


def test_an_automatic_cull_embargoes_for_the_same_number_of_decisions() -> None:
    lc = make_lifecycle()
    seed = germinate(lc, 0, 0)
    lc.slots[0].seed = _WrongShape()
    lc.end_epoch(measure(0))  # G1 fails: culled at the end of epoch 0
    assert seed.cull_reason == "g1_failed"
    assert lc.stages[0] is Stage.EMBARGOED  # during epoch 1: one decision blocked
    lc.end_epoch(EpochMeasure(1, 0.5, 1.0))
    assert lc.stages[:1] == [Stage.DORMANT]


# ------------------------------------------------------------------ 4. events and lever calls


def test_every_gate_and_transition_emits_an_event_and_calls_the_lever() -> None:
    log = Recorder()
    lever = StageLever()
    lc = make_lifecycle(log=log, lever=lever)
    germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, 0)
    lc.fossilize(0, epoch)
    germinate(lc, 0, epoch)
    lc.cull(0, epoch, reason="tamiyo")

    changes = log.named("seed.stage_changed")
    expected = [
        ("seed1-s0", "DORMANT", "GERMINATED", "germinate"),
        ("seed1-s0", "GERMINATED", "TRAINING", "G1"),
        ("seed1-s0", "TRAINING", "BLENDING", "G2"),
        ("seed1-s0", "BLENDING", "PROBATIONARY", "G3"),
        ("seed1-s0", "PROBATIONARY", "FOSSILIZED", "fossilize"),
        ("seed2-s0", "DORMANT", "GERMINATED", "germinate"),
        ("seed2-s0", "GERMINATED", "CULLED", "tamiyo"),
        ("seed2-s0", "CULLED", "EMBARGOED", "embargo"),
    ]
    assert [(c["seed_id"], c["old"], c["new"], c["reason"]) for c in changes] == expected
    assert all(c["slot"] == 0 for c in changes)
    # The lever saw the same transitions, in the same order, each exactly once.
    assert [(s, o.name, n.name) for s, o, n in lever.calls] == [(s, o, n) for s, o, n, _ in expected]

    gates = log.named("seed.gate_evaluated")
    # G1 once, G2 once (after the 2-epoch dwell), G3 five times, G5 at fossilize.
    assert [g["gate"] for g in gates] == ["G1", "G2"] + ["G3"] * 5 + ["G5"]
    for g in gates:
        assert set(g) >= {"seed_id", "slot", "stage", "gate", "passed", "values", "thresholds"}
        assert set(g["values"]) == set(g["thresholds"])
    assert gates[-1]["values"] == {"contribution": 0.05, "healthy": 1.0}
    assert gates[-1]["thresholds"] == {"contribution": 0.0, "healthy": 1.0}


def test_a_failed_fossilize_still_reports_its_gate() -> None:
    log = Recorder()
    lever = StageLever()
    lc = make_lifecycle(log=log, lever=lever)
    germinate(lc, 0, 0)
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, 0, contribution=-0.1)
    calls = len(lever.calls)
    with pytest.raises(LifecycleError):
        lc.fossilize(0, epoch)
    last = log.named("seed.gate_evaluated")[-1]
    assert (last["gate"], last["passed"], last["stage"]) == ("G5", False, "PROBATIONARY")
    assert last["values"]["contribution"] == pytest.approx(-0.1)
    assert len(lever.calls) == calls  # no transition, no lever call


def test_lever_knobs_are_applied_after_each_transition() -> None:
    lever = StageLever(lr_scale=0.5, isolate_blending=False)
    lc = make_lifecycle(lever=lever)
    opt = HostOptimizer(lc)
    germinate(lc, 0, 0)
    assert opt.seed_group_lr(0) == pytest.approx(0.005)
    drive_to(lc, 0, Stage.BLENDING, 0)
    assert float(lc.slots[0].isolate) == 0.0  # a CNN seed co-adapting because the lever said so


# ------------------------------------------------------------------ 5. knob defaults


def test_knob_defaults_are_the_kernels() -> None:
    lc = make_lifecycle(config=LifecycleConfig())
    opt = HostOptimizer(lc)
    seed = germinate(lc, 0, 0)
    k = seed.knobs
    assert k.blend_steps == 5
    assert k.steepness == 1.0
    assert k.dwell_epochs == max(1, int(LifecycleConfig().max_epochs * 0.1)) == 2
    assert k.min_blend_epochs == 3
    assert k.g2_threshold == 0.10
    assert k.probation_epochs == 5
    assert lc.config.host_lr == 0.01
    assert opt.seed_group_lr(0) == 0.01 == opt.param_groups[0]["lr"]


@pytest.mark.parametrize(("max_epochs", "dwell"), [(1, 1), (9, 1), (10, 1), (25, 2), (100, 10)])
def test_default_dwell_scales_with_the_episode(max_epochs: int, dwell: int) -> None:
    lc = make_lifecycle(config=LifecycleConfig(max_epochs=max_epochs))
    assert germinate(lc, 0, 0).knobs.dwell_epochs == dwell


@pytest.mark.parametrize(("topology", "isolate"), [("cnn", 1.0), ("transformer", 0.0)])
def test_blending_isolation_defaults_by_topology(topology: str, isolate: float) -> None:
    lc = make_lifecycle(topology)
    germinate(lc, 0, 0)
    slot = lc.slots[0]
    # Training seeds are always isolated and incubating.
    assert (float(slot.isolate), float(slot.incubate)) == (1.0, 1.0)
    epoch = drive_to(lc, 0, Stage.TRAINING, 0)
    assert (float(slot.isolate), float(slot.incubate)) == (1.0, 1.0)
    epoch = drive_to(lc, 0, Stage.BLENDING, epoch)
    assert (float(slot.isolate), float(slot.incubate)) == (isolate, 0.0)
    drive_to(lc, 0, Stage.PROBATIONARY, epoch)
    assert float(slot.isolate) == isolate


# ------------------------------------------------------------------ 6. blend curves


def _alpha_curve(blend: str, steepness: float = 1.0) -> tuple[list[float], list[Stage]]:
    """Alpha in force during each epoch from germination to probation."""
    lever = StageLever(steepness=steepness) if steepness != 1.0 else None
    lc = make_lifecycle(lever=lever)
    germinate(lc, 0, 0, blend=blend)
    alphas, stages = [], []
    for epoch in range(12):
        alphas.append(float(lc.slots[0].alpha))
        stages.append(lc.stages[0])
        lc.end_epoch(measure(epoch, contribution=0.1))
    return alphas, stages


@pytest.mark.parametrize("blend", ["linear", "gated"])
def test_linear_and_gated_base_alpha_ramp_k_over_5(blend: str) -> None:
    alphas, stages = _alpha_curve(blend)
    blending = [a for a, s in zip(alphas, stages, strict=True) if s is Stage.BLENDING]
    assert blending == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    before = [a for a, s in zip(alphas, stages, strict=True) if s in (Stage.GERMINATED, Stage.TRAINING)]
    after = [a for a, s in zip(alphas, stages, strict=True) if s is Stage.PROBATIONARY]
    assert before == [0.0] * 3 and after and all(a == 1.0 for a in after)


@pytest.mark.parametrize("steepness", [1.0, 3.0])
def test_sigmoid_alpha_follows_alpha_sigmoid(steepness: float) -> None:
    alphas, stages = _alpha_curve("sigmoid", steepness)
    blending = [a for a, s in zip(alphas, stages, strict=True) if s is Stage.BLENDING]
    expected = [alpha_sigmoid(k, 5, steepness) for k in range(1, 6)]
    assert blending == pytest.approx(expected, abs=1e-6)
    assert blending != pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-3)  # really not linear


@pytest.mark.parametrize("blend", ["linear", "sigmoid", "gated"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_alpha_stays_in_unit_interval_and_is_monotone(blend: str, steps: int) -> None:
    lc = make_lifecycle(lever=StageLever(blend_steps=steps, probation_epochs=100))
    germinate(lc, 0, 0, blend=blend)
    alphas = []
    for epoch in range(20):
        alphas.append(float(lc.slots[0].alpha))
        lc.end_epoch(measure(epoch, contribution=0.1))
    assert all(0.0 <= a <= 1.0 for a in alphas)
    assert alphas == sorted(alphas) and alphas[-1] == 1.0


# ------------------------------------------------------------------ 7. parameter accounting


def test_germinate_adds_a_param_group_with_exactly_the_seeds_parameters() -> None:
    lc = make_lifecycle()
    opt = HostOptimizer(lc)
    seed = germinate(lc, 1, 0, blueprint="conv_small", blend="gated")
    slot = lc.slots[1]
    group = seed_group(opt, seed.seed_id)
    assert slot.seed is not None and slot.gate is not None
    expected = ids([*slot.seed.parameters(), *slot.gate.parameters()])
    assert ids(group["params"]) == ids(slot.seed_parameters()) == expected
    assert group["lr"] == 0.01
    # The host group does not hold them, and host_parameters() excludes them.
    assert not ids(group["params"]) & ids(opt.param_groups[0]["params"])
    assert not ids(group["params"]) & ids(lc.host.host_parameters())  # type: ignore[operator]


def test_cull_removes_the_seed_from_host_parameters_and_optimizer() -> None:
    lc = make_lifecycle()
    runner = EpochRunner(lc, tiny_shapes(), max_batches=2)
    seed = germinate(lc, 0, 0, blueprint="conv_small")
    runner.run_epoch(0)  # gives the seed optimizer state (momentum buffers)
    opt = runner.optimizer
    params = ids(lc.slots[0].seed_parameters())
    assert params & ids(opt.state)
    n_groups = len(opt.param_groups)
    lc.cull(0, 1, reason="tamiyo")
    assert not params & ids(lc.host.parameters())
    assert not params & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not params & ids(opt.state)
    assert len(opt.param_groups) == n_groups - 1
    assert all(g.get("seed_id") != seed.seed_id for g in opt.param_groups)
    runner.run_epoch(1)  # and training goes on without it


def test_fossilize_moves_the_seed_into_the_host_at_host_lr() -> None:
    lc = make_lifecycle(lever=StageLever(lr_scale=0.25))
    runner = EpochRunner(lc, tiny_shapes(), max_batches=2)
    seed = germinate(lc, 0, 0, blueprint="conv_small")
    assert runner.optimizer.seed_group_lr(0) == pytest.approx(0.0025)
    epoch = drive_to(lc, 0, Stage.PROBATIONARY, 0)
    params = lc.slots[0].seed_parameters()
    lc.fossilize(0, epoch)
    assert ids(params) <= ids(lc.host.host_parameters())  # type: ignore[operator]
    assert ids(params) <= ids(lc.host.parameters())
    (group,) = [g for g in runner.optimizer.param_groups if g.get("fossil_of") == seed.seed_id]
    assert group["lr"] == 0.01 and group["seed_id"] is None
    assert ids(group["params"]) == ids(params)
    before = [p.detach().clone() for p in params]
    runner.run_epoch(epoch)
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True)), "the fossil stopped training"


# ------------------------------------------------------------------ 8. invisibility and counterfactual


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("blend", ["linear", "sigmoid", "gated"])
def test_germination_leaves_host_output_unchanged(topology: str, blend: str) -> None:
    lc = make_lifecycle(topology)
    lc.host.eval()
    x = fixed_batch(topology)
    with torch.no_grad():
        before = lc.host(x)
        for slot, bp in enumerate(blueprint_names(topology)[:3]):
            germinate(lc, slot, 0, blueprint=bp, blend=blend)
            # Make the seeds non-trivial: a zero-initialised seed would hide a visible one.
            for p in lc.slots[slot].seed_parameters():
                p.add_(0.1 * torch.randn_like(p))
        after = lc.host(x)
    assert torch.equal(before, after)


def test_contribution_is_none_before_blending_and_a_float_during() -> None:
    lc = make_lifecycle(config=LifecycleConfig(max_epochs=10))  # dwell 1
    runner = EpochRunner(lc, tiny_shapes(), max_batches=2)
    seed = germinate(lc, 0, 0)
    stages, contributions = [], []
    for epoch in range(4):
        stage = lc.stages[0]
        result = runner.run_epoch(epoch)
        stages.append(stage)
        contributions.append(result.measure.slots[0].contribution)
    assert stages == [Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.BLENDING]
    assert contributions[:2] == [None, None]
    assert all(isinstance(c, float) and -1.0 <= c <= 1.0 for c in contributions[2:])
    assert seed.metrics.contribution == contributions


# ------------------------------------------------------------------ 9. checkpoint round trip


def _build_checkpointed() -> tuple[Lifecycle, EpochRunner, int]:
    """A lifecycle with a fossil in slot 0 and a live, blending gated seed in slot 1."""
    lc = make_lifecycle(config=LifecycleConfig(max_epochs=10))
    runner = EpochRunner(lc, tiny_shapes(), max_batches=2, generator=torch.Generator().manual_seed(3))
    germinate(lc, 0, 0, blueprint="conv_small", blend="sigmoid")
    epoch = 0
    while lc.stages[0] is not Stage.PROBATIONARY:
        runner.run_epoch(epoch)
        epoch += 1
    # A probation epoch measured as worth keeping, then Tamiyo fossilizes.
    lc.end_epoch(measure(epoch, 0, contribution=0.05))
    epoch += 1
    lc.fossilize(0, epoch)
    germinate(lc, 1, epoch, blueprint="attention", blend="gated")
    for _ in range(3):
        runner.run_epoch(epoch)
        epoch += 1
    assert lc.stages[1] is Stage.BLENDING
    assert 0.0 < float(lc.slots[1].alpha) < 1.0
    return lc, runner, epoch


def _optimizer_signature(opt: HostOptimizer) -> list[dict[str, Any]]:
    out = []
    for g in opt.param_groups:
        out.append(
            {
                "lr": g["lr"],
                "seed_id": g.get("seed_id"),
                "fossil_of": g.get("fossil_of"),
                "params": [p.detach().clone() for p in g["params"]],
                "momentum": [opt.state[p].get("momentum_buffer") for p in g["params"]],
            }
        )
    return out


def _assert_same_optimizer(a: HostOptimizer, b: HostOptimizer) -> None:
    sa, sb = _optimizer_signature(a), _optimizer_signature(b)
    assert len(sa) == len(sb)
    for ga, gb in zip(sa, sb, strict=True):
        assert (ga["lr"], ga["seed_id"], ga["fossil_of"]) == (gb["lr"], gb["seed_id"], gb["fossil_of"])
        assert len(ga["params"]) == len(gb["params"])
        for pa, pb in zip(ga["params"], gb["params"], strict=True):
            assert torch.equal(pa, pb)
        for ma, mb in zip(ga["momentum"], gb["momentum"], strict=True):
            assert (ma is None) == (mb is None)
            if ma is not None:
                assert torch.equal(ma, mb)


def _outputs(lc: Lifecycle) -> torch.Tensor:
    lc.host.eval()
    with torch.no_grad():
        out: torch.Tensor = lc.host(fixed_batch("cnn"))
    return out


def test_state_dict_round_trip_restores_host_optimizer_and_training() -> None:
    a, runner_a, epoch = _build_checkpointed()
    buf = io.BytesIO()
    torch.save({**a.state_dict(), **runner_a.optimizer.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    gen_state = runner_a.generator.get_state()

    torch.manual_seed(123)  # a different initialisation: loading must overwrite all of it
    b = Lifecycle(CNNHost(CNN_CFG), make_registry(), LifecycleConfig(max_epochs=10), log=Recorder())
    b.load_state_dict(copy.deepcopy(state))
    opt_b = HostOptimizer(b)
    opt_b.load_state_dict(copy.deepcopy(state))

    assert b.stages == a.stages == [Stage.DORMANT, Stage.BLENDING, Stage.DORMANT]
    assert len(b.slots[0].fossils) == 1 and b.slots[1].blend == "gated"
    seed_a, seed_b = a.seeds[1], b.seeds[1]
    assert seed_a is not None and seed_b is not None
    assert (seed_b.seed_id, seed_b.blend_epochs) == (seed_a.seed_id, seed_a.blend_epochs)
    assert seed_b.knobs == seed_a.knobs and seed_b.metrics == seed_a.metrics
    assert [s.seed_id for s in b.history] == [s.seed_id for s in a.history]
    assert float(b.slots[1].alpha) == float(a.slots[1].alpha)
    assert torch.equal(_outputs(a), _outputs(b))
    _assert_same_optimizer(runner_a.optimizer, opt_b)

    runner_b = EpochRunner(b, tiny_shapes(), max_batches=2, generator=torch.Generator(), optimizer=opt_b)
    runner_b.generator.set_state(gen_state)
    results = []
    for runner in (runner_a, runner_b):
        torch.manual_seed(99)
        results.append(runner.run_epoch(epoch))
    ra, rb = results
    assert (ra.train_loss, ra.val_accuracy) == (rb.train_loss, rb.val_accuracy)
    assert ra.measure == rb.measure
    assert b.stages == a.stages
    assert torch.equal(_outputs(a), _outputs(b))
    _assert_same_optimizer(runner_a.optimizer, opt_b)
    # And the epoch did train: outputs moved since the checkpoint.
    b2 = Lifecycle(CNNHost(CNN_CFG), make_registry(), LifecycleConfig(max_epochs=10), log=Recorder())
    b2.load_state_dict(copy.deepcopy(state))
    assert not torch.equal(_outputs(b2), _outputs(a))
