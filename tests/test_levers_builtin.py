"""The built-in levers, each driven through the real lifecycle.

Every test loads the levers from their installed entry points, composes them
with the kernel's core heads, germinates seeds through the composed action
space (encode -> mask check -> decode -> ``Lifecycle.apply``) and trains a
small CNN host with the real :class:`EpochRunner`, so an effect asserted here
is the effect a run would have.

G2 compares the seed's per-parameter gradient with the host's, which for a
freshly zero-initialised seed trained for two batches is noise; tests that
need a seed to reach BLENDING set ``seed.knobs.g2_threshold = 0.0`` right
after germination (no lever owns that knob), so G2 passes the first time it
is evaluated and what is measured is the lever, not the gate's luck.
"""

from __future__ import annotations

import ast
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import torch._dynamo

import esper_kernel
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import Selection, load_levers
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import Knobs, SeedState, default_dwell
from esper_kernel.compose.specs import Safety
from esper_kernel.compose.stages import LIVE_STAGES, Op, Stage
from esper_kernel.data.generated import make_sequences, make_shapes
from esper_kernel.data.tasks import TaskData
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.hosts import CNNHost, CNNHostConfig, Host, TransformerHost, TransformerHostConfig
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig, SlotMeasure
from esper_kernel.grow.slots import alpha_linear, alpha_sigmoid
from esper_kernel.grow.training import EpochResult, EpochRunner, compute_fields

LEVERS = ("dwell", "isolation", "lr", "probation", "steepness", "tempo")
CNN_CFG = CNNHostConfig(width=8, blocks=2)
BLUEPRINT = "conv_small"
MAX_EPOCHS = 30
HOST_LR = LifecycleConfig().host_lr
#: Choices that get a seed through its whole life in the fewest epochs.
QUICK = {"dwell": "MINIMAL", "tempo": "FAST", "probation": "SHORT"}


@pytest.fixture(scope="module")
def task() -> TaskData:
    return make_shapes(0, n_train=256, n_val=64)


# ------------------------------------------------------------------ the rig


class _Events:
    """A structlog stand-in that keeps every lifecycle event with the epoch it happened in."""

    def __init__(self) -> None:
        self.epoch = 0
        self.items: list[tuple[int, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.items.append((self.epoch, event, kw))

    def of(self, event: str, **match: Any) -> list[tuple[int, dict[str, Any]]]:
        return [
            (e, kw) for e, name, kw in self.items if name == event and all(kw.get(k) == v for k, v in match.items())
        ]


def open_registry(levers: Sequence[str], n_slots: int, topology: str = "cnn") -> Registry:
    result = load_levers(Selection(only=tuple(levers)))
    assert not result.failures
    core = CoreHeads(n_slots, blueprint_names(topology), topology)
    return Registry(core, result.levers, result.failures)


class Rig:
    """One host, its registry, lifecycle and epoch runner, stepped one epoch at a time."""

    def __init__(
        self,
        task: TaskData,
        levers: Sequence[str] = LEVERS,
        *,
        max_epochs: int = MAX_EPOCHS,
        host: Host | None = None,
        backend: Callable[..., Any] | None = None,
    ) -> None:
        torch.manual_seed(0)
        self.host: Host = host if host is not None else CNNHost(CNN_CFG)
        self.registry = open_registry(levers, len(self.host.slot_dims), self.host.topology)
        self.events = _Events()
        self.lifecycle = Lifecycle(self.host, self.registry, LifecycleConfig(max_epochs=max_epochs), log=self.events)
        compiled = None if backend is None else torch.compile(self.host, backend=backend, fullgraph=True)
        self.runner = EpochRunner(self.lifecycle, task, batch_size=32, max_batches=2, compiled=compiled)
        self.epoch = 0
        self.results: list[EpochResult] = []
        self.fields: list[dict[str, list[float | None]]] = []

    def view(self) -> MaskView:
        lc = self.lifecycle
        return MaskView(
            space=self.registry.space,
            n_envs=1,
            n_slots=len(lc.slots),
            topology=lc.topology,
            max_epochs=lc.config.max_epochs,
            epoch=torch.tensor([self.epoch]),
            slot_stage=torch.tensor([[int(s) for s in lc.stages]]),
            fossilize_ok=torch.tensor([lc.fossilize_ok()]),
            blueprints=blueprint_names(lc.topology),
        )

    def germinate(
        self, slot: int = 0, *, blend: str = "linear", blueprint: str = BLUEPRINT, **choices: str
    ) -> SeedState:
        space = self.registry.space
        row = {"op": "germinate", "slot": f"s{slot}", "blueprint": blueprint, "blend": blend, **choices}
        mask = self.registry.masks(self.view())
        for head, choice in row.items():
            legal = mask[0, int(Op.GERMINATE), space.head(head).index, space.choice_index(head, choice)]
            assert bool(legal), f"{head}={choice} is masked at epoch {self.epoch}"
        decision = space.decode(space.encode([row]))[0]
        self.events.epoch = self.epoch
        assert self.lifecycle.apply(decision, self.epoch)
        seed = self.lifecycle.seeds[slot]
        assert seed is not None
        seed.knobs.g2_threshold = 0.0  # see the module docstring
        return seed

    def step(self) -> EpochResult:
        self.events.epoch = self.epoch
        result = self.runner.run_epoch(
            self.epoch, observe=lambda r: self.fields.append(compute_fields(self.registry, self.lifecycle, r))
        )
        self.results.append(result)
        self.epoch += 1
        return result

    def live_through(self, seed: SeedState, limit: int = 40, each: Callable[[], None] | None = None) -> None:
        """Step until ``seed`` is no longer live, calling ``each`` before every epoch."""
        for _ in range(limit):
            if seed.stage not in LIVE_STAGES:
                return
            if each is not None:
                each()
            self.step()
        assert seed.stage not in LIVE_STAGES, f"{seed.seed_id} still {seed.stage.name} after {limit} epochs"

    def until_dormant(self, slot: int, limit: int = 5) -> None:
        for _ in range(limit):
            if self.lifecycle.stages[slot] is Stage.DORMANT:
                return
            self.step()
        assert self.lifecycle.stages[slot] is Stage.DORMANT, f"slot {slot} not dormant after {limit} epochs"


def epochs_in(seed: SeedState, stage: Stage) -> list[int]:
    """Indices (epochs since germination) the seed spent in ``stage``."""
    return [i for i, s in enumerate(seed.metrics.stage) if s == stage]


# ------------------------------------------------------------------ composition


def test_composed_space_heads_order_and_relevance() -> None:
    reg = open_registry(LEVERS, n_slots=2)
    space = reg.space
    assert space.names == ("op", "slot", "blueprint", "blend", *LEVERS)
    table = {h.name: (h.lever, h.spec.choices, h.spec.default, h.spec.ops, h.spec.condition) for h in space.heads}
    assert table["dwell"][1:3] == (("MINIMAL", "SHORT", "STANDARD", "EXTENDED"), "STANDARD")
    assert table["isolation"][1:3] == (("DEFAULT", "ISOLATED", "COADAPT"), "DEFAULT")
    assert table["lr"][1:3] == (("CAUTIOUS", "STANDARD", "AGGRESSIVE"), "STANDARD")
    assert table["probation"][1:3] == (("SHORT", "STANDARD", "LONG"), "STANDARD")
    assert table["steepness"][1:3] == (("GENTLE", "NORMAL", "SHARP"), "NORMAL")
    assert [space.head(n).spec.values for n in LEVERS] == [
        (1, 2, 3, 5),
        (None, True, False),
        (0.75, 1.0, 2.0),
        (3, 5, 8),
        (0.5, 1.0, 2.0),
        (3, 5, 8, 12),
    ]
    for name in LEVERS:
        lever, _, _, ops, cond = table[name]
        assert lever == name
        assert ops == frozenset({Op.GERMINATE})
        assert cond == (esper_kernel.HeadCondition("blend", ("sigmoid",)) if name == "steepness" else None)
    assert {s.lever for s in reg.masks.sources} == {"esper", *LEVERS}
    assert all(reg.safety[n].level is Safety.NONE for n in LEVERS)

    idx = {n: space.names.index(n) for n in LEVERS}
    rows = space.encode(
        [
            {"op": "germinate", "blend": "sigmoid"},
            {"op": "germinate", "blend": "linear"},
            {"op": "germinate", "blend": "gated"},
            {"op": "wait"},
            {"op": "cull"},
            {"op": "fossilize"},
        ]
    )
    rel = space.relevance(rows)
    assert all(bool(rel[0, i]) for i in idx.values())
    for r in (1, 2):
        assert not bool(rel[r, idx["steepness"]])
        assert all(bool(rel[r, i]) for n, i in idx.items() if n != "steepness")
    for r in (3, 4, 5):
        assert not any(bool(rel[r, i]) for i in idx.values())


def _legal(reg: Registry, epoch: int, head: str) -> list[str]:
    view = MaskView(
        space=reg.space,
        n_envs=1,
        n_slots=2,
        topology="cnn",
        max_epochs=MAX_EPOCHS,
        epoch=torch.tensor([epoch]),
        slot_stage=torch.zeros(1, 2, dtype=torch.long),
        fossilize_ok=torch.zeros(1, 2, dtype=torch.bool),
        blueprints=blueprint_names("cnn"),
    )
    # The composer raises if any lever leaves a relevant head with no legal choice.
    row = reg.masks(view)[0, int(Op.GERMINATE), reg.space.head(head).index]
    spec = reg.space.head(head).spec
    return [c for i, c in enumerate(spec.choices) if bool(row[i])]


@pytest.mark.parametrize(
    ("head", "epochs_left", "legal"),
    [
        # 1 germinated epoch + dwell + 3 (the G3 minimum) must fit.
        ("dwell", 30, ["MINIMAL", "SHORT", "STANDARD", "EXTENDED"]),
        ("dwell", 9, ["MINIMAL", "SHORT", "STANDARD", "EXTENDED"]),
        ("dwell", 8, ["MINIMAL", "SHORT", "STANDARD"]),
        ("dwell", 6, ["MINIMAL", "SHORT"]),
        ("dwell", 1, ["MINIMAL"]),
        # The earliest BLENDING epoch is the third.
        ("isolation", 3, ["DEFAULT", "ISOLATED", "COADAPT"]),
        ("isolation", 2, ["DEFAULT"]),
        ("steepness", 3, ["GENTLE", "NORMAL", "SHARP"]),
        ("steepness", 2, ["NORMAL"]),
        ("lr", 1, ["CAUTIOUS", "STANDARD", "AGGRESSIVE"]),
        # Earliest probation epoch is the sixth: patience P times out iff 5 + P <= epochs left;
        # of the patiences that cannot, only the shortest stays.
        ("probation", 13, ["SHORT", "STANDARD", "LONG"]),
        ("probation", 12, ["SHORT", "STANDARD", "LONG"]),
        ("probation", 9, ["SHORT", "STANDARD"]),
        ("probation", 7, ["SHORT"]),
        # The ramp's last epoch must fall inside the episode: 1 germinated epoch + the
        # quickest dwell (MINIMAL, 1) + the ramp must fit (the fixed bug: dwell was ignored).
        ("tempo", 14, ["FAST", "STANDARD", "SLOW", "GLACIAL"]),
        ("tempo", 13, ["FAST", "STANDARD", "SLOW"]),
        ("tempo", 7, ["FAST", "STANDARD"]),
        ("tempo", 6, ["FAST"]),
        ("tempo", 5, ["FAST"]),
        ("tempo", 1, ["FAST"]),
    ],
)
def test_masks_drop_choices_that_cannot_take_effect(head: str, epochs_left: int, legal: list[str]) -> None:
    reg = open_registry(LEVERS, n_slots=2)
    assert _legal(reg, MAX_EPOCHS - epochs_left, head) == legal


def test_masks_never_leave_a_row_empty() -> None:
    reg = open_registry(LEVERS, n_slots=2)
    for epoch in range(MAX_EPOCHS):
        for head in LEVERS:
            assert _legal(reg, epoch, head), (epoch, head)


# ------------------------------------------------------------------ effects, lever by lever


@pytest.mark.parametrize(("choice", "steps"), [("FAST", 3), ("STANDARD", 5), ("SLOW", 8), ("GLACIAL", 12)])
def test_tempo_blends_over_exactly_the_chosen_epochs(task: TaskData, choice: str, steps: int) -> None:
    rig = Rig(task)
    seed = rig.germinate(dwell="MINIMAL", tempo=choice)
    while seed.stage is not Stage.PROBATIONARY:
        rig.step()
        assert rig.epoch < 20
    blending = epochs_in(seed, Stage.BLENDING)
    assert len(blending) == steps
    assert seed.knobs.blend_steps == steps
    alphas = [seed.metrics.alpha[i] for i in blending]
    assert alphas == pytest.approx([alpha_linear(k, steps) for k in range(1, steps + 1)], abs=1e-6)
    assert alphas[-1] == 1.0


@pytest.mark.parametrize(("choice", "dwell"), [("MINIMAL", 1), ("SHORT", 2), ("STANDARD", 3), ("EXTENDED", 5)])
def test_dwell_trains_exactly_the_chosen_epochs_before_g2(task: TaskData, choice: str, dwell: int) -> None:
    # The shortest episode the dwell mask allows this choice in: the seed must
    # then finish its (fastest) blend on the very last epoch.
    max_epochs = 1 + dwell + Knobs().min_blend_epochs
    rig = Rig(task, max_epochs=max_epochs)
    seed = rig.germinate(dwell=choice, tempo="FAST")
    for _ in range(max_epochs):
        rig.step()
    assert seed.knobs.dwell_epochs == dwell
    assert len(epochs_in(seed, Stage.TRAINING)) == dwell
    g2 = rig.events.of("seed.gate_evaluated", seed_id=seed.seed_id, gate="G2")
    assert g2 and g2[0][0] == dwell  # germinated at epoch 0, trained epochs 1..dwell
    assert all(kw["passed"] for _, kw in g2) and len(g2) == 1
    g3_pass = rig.events.of("seed.gate_evaluated", seed_id=seed.seed_id, gate="G3", passed=True)
    assert [e for e, _ in g3_pass] == [max_epochs - 1]
    assert seed.stage is Stage.PROBATIONARY


def _blending_host_grads(rig: Rig, seed: SeedState) -> tuple[list[float], list[float]]:
    isolate: list[float] = []

    def watch() -> None:
        if seed.stage is Stage.BLENDING:
            isolate.append(float(rig.host.seed_slots()[seed.slot].isolate))

    rig.live_through(seed, limit=12, each=lambda: None if seed.stage is Stage.PROBATIONARY else watch())
    return [seed.metrics.host_grad_via_seed[i] for i in epochs_in(seed, Stage.BLENDING)], isolate


@pytest.mark.parametrize(("choice", "isolated"), [("DEFAULT", True), ("ISOLATED", True), ("COADAPT", False)])
def test_isolation_controls_host_gradient_through_the_seed(task: TaskData, choice: str, isolated: bool) -> None:
    rig = Rig(task)
    seed = rig.germinate(isolation=choice, **QUICK)
    grads, isolate = _blending_host_grads(rig, seed)
    assert len(grads) == 3 and len(isolate) == 3
    # Before blending every seed is isolated, whatever the choice.
    assert all(seed.metrics.host_grad_via_seed[i] == 0.0 for i in epochs_in(seed, Stage.TRAINING))
    if isolated:
        assert grads == [0.0, 0.0, 0.0]
        assert isolate == [1.0, 1.0, 1.0]
    else:
        assert all(g > 0.0 for g in grads)
        assert isolate == [0.0, 0.0, 0.0]


def test_isolation_default_follows_topology_on_a_transformer() -> None:
    seq = make_sequences(0, n_train=64, n_val=32, seq_len=8, vocab_size=16)
    host = TransformerHost(TransformerHostConfig(vocab_size=16, dim=16, heads=2, layers=2, max_len=8))
    rig = Rig(seq, host=host)
    seed = rig.germinate(isolation="DEFAULT", blueprint="mlp_small", **QUICK)
    grads, isolate = _blending_host_grads(rig, seed)
    assert seed.knobs.isolate_blending is None  # DEFAULT leaves it to the kernel
    assert isolate == [0.0, 0.0, 0.0]
    assert all(g > 0.0 for g in grads)


@pytest.mark.parametrize(("choice", "scale"), [("CAUTIOUS", 0.75), ("STANDARD", 1.0), ("AGGRESSIVE", 2.0)])
def test_lr_scales_the_seed_param_group(task: TaskData, choice: str, scale: float) -> None:
    rig = Rig(task)
    seed = rig.germinate(lr=choice, dwell="MINIMAL", tempo="FAST")
    seen: dict[Stage, float] = {}
    for _ in range(5):  # GERMINATED, TRAINING, BLENDING x3
        seen[seed.stage] = rig.runner.optimizer.seed_group_lr(0)
        rig.step()
    assert set(seen) == {Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING}
    assert all(lr == pytest.approx(scale * HOST_LR) for lr in seen.values())
    host_groups = [g["lr"] for g in rig.runner.optimizer.param_groups if g.get("seed_id") is None]
    assert host_groups == [HOST_LR]


def _sigmoid_blend(task: TaskData, choice: str) -> tuple[SeedState, list[float]]:
    rig = Rig(task)
    seed = rig.germinate(blend="sigmoid", steepness=choice, dwell="MINIMAL", tempo="STANDARD")
    while seed.stage is not Stage.PROBATIONARY:
        rig.step()
        assert rig.epoch < 12
    return seed, [seed.metrics.alpha[i] for i in epochs_in(seed, Stage.BLENDING)]


def test_steepness_shapes_the_sigmoid_blend(task: TaskData) -> None:
    curves: dict[str, list[float]] = {}
    for choice, value in (("GENTLE", 0.5), ("NORMAL", 1.0), ("SHARP", 2.0)):
        seed, alphas = _sigmoid_blend(task, choice)
        assert seed.choices["steepness"] == choice
        assert seed.knobs.steepness == value
        assert alphas == pytest.approx([alpha_sigmoid(k, 5, value) for k in range(1, 6)], abs=1e-6)
        curves[choice] = alphas
    # A sharper sigmoid stays low longer and then rises faster.
    assert curves["SHARP"][0] < curves["NORMAL"][0] < curves["GENTLE"][0]
    assert curves["SHARP"][3] > curves["GENTLE"][3]


def test_steepness_is_irrelevant_for_a_linear_blend(task: TaskData) -> None:
    rig = Rig(task)
    row = {"op": "germinate", "blend": "linear", "steepness": "SHARP"}
    space = rig.registry.space
    assert not bool(space.relevance(space.encode([row]))[0, space.names.index("steepness")])
    seed = rig.germinate(blend="linear", steepness="SHARP", dwell="MINIMAL", tempo="STANDARD")
    assert "steepness" not in seed.choices
    while seed.stage is not Stage.PROBATIONARY:
        rig.step()
    assert seed.knobs.steepness == 1.0
    alphas = [seed.metrics.alpha[i] for i in epochs_in(seed, Stage.BLENDING)]
    assert alphas == pytest.approx([k / 5 for k in range(1, 6)], abs=1e-6)


@pytest.mark.parametrize(("choice", "patience"), [("SHORT", 3), ("STANDARD", 5), ("LONG", 8)])
def test_probation_culls_after_exactly_the_chosen_patience(task: TaskData, choice: str, patience: int) -> None:
    # The shortest episode in which the mask says this patience times out.
    max_epochs = 2 + Knobs().min_blend_epochs + patience
    rig = Rig(task, max_epochs=max_epochs)
    seed = rig.germinate(probation=choice, dwell="MINIMAL", tempo="FAST")
    rig.live_through(seed, limit=max_epochs)
    assert seed.cull_reason == "probation_timeout"
    assert seed.knobs.probation_epochs == patience
    assert len(epochs_in(seed, Stage.PROBATIONARY)) == patience
    culls = rig.events.of("seed.stage_changed", seed_id=seed.seed_id, new="CULLED")
    assert [(e, kw["reason"]) for e, kw in culls] == [(max_epochs - 1, "probation_timeout")]


# ------------------------------------------------------------------ all six, and each one removed

FULL = {
    "dwell": "SHORT",
    "isolation": "COADAPT",
    "lr": "AGGRESSIVE",
    "probation": "SHORT",
    "steepness": "SHARP",
    "tempo": "FAST",
}
#: What each lever's FULL choice does, and what the kernel does without the lever.
KNOB_WITH = {
    "dwell": 2,
    "isolation": False,
    "lr": 2.0,
    "probation": 3,
    "steepness": 2.0,
    "tempo": 3,
}
KNOB_WITHOUT = {
    "dwell": default_dwell(MAX_EPOCHS),
    "isolation": None,
    "lr": 1.0,
    "probation": Knobs().probation_epochs,
    "steepness": Knobs().steepness,
    "tempo": Knobs().blend_steps,
}


def _knob(seed: SeedState, lever: str) -> Any:
    k = seed.knobs
    return {
        "dwell": k.dwell_epochs,
        "isolation": k.isolate_blending,
        "lr": k.lr_scale,
        "probation": k.probation_epochs,
        "steepness": k.steepness,
        "tempo": k.blend_steps,
    }[lever]


class FullRun:
    """A sigmoid seed in slot 0 with a non-default choice for every active lever, to its timeout."""

    def __init__(self, task: TaskData, levers: Sequence[str], gated_neighbour: bool = False) -> None:
        self.levers = tuple(levers)
        self.rig = rig = Rig(task, levers)
        self.seed = rig.germinate(0, blend="sigmoid", **{k: v for k, v in FULL.items() if k in levers})
        self.neighbour = rig.germinate(1, blend="gated", **QUICK) if gated_neighbour else None
        self.group_lr: list[float] = []
        self.isolate: list[float] = []
        slot = rig.host.seed_slots()[0]

        def watch() -> None:
            self.group_lr.append(rig.runner.optimizer.seed_group_lr(0))
            if self.seed.stage is Stage.BLENDING:
                self.isolate.append(float(slot.isolate))

        rig.live_through(self.seed, limit=25, each=watch)

    def check_effects(self) -> None:
        seed, active = self.seed, set(self.levers)
        expect = {n: (KNOB_WITH if n in active else KNOB_WITHOUT)[n] for n in LEVERS}
        assert {n: _knob(seed, n) for n in LEVERS} == expect
        assert seed.cull_reason == "probation_timeout"
        assert len(epochs_in(seed, Stage.TRAINING)) == expect["dwell"]
        steps = expect["tempo"]
        blending = epochs_in(seed, Stage.BLENDING)
        assert len(blending) == steps
        alphas = [seed.metrics.alpha[i] for i in blending]
        assert alphas == pytest.approx([alpha_sigmoid(k, steps, expect["steepness"]) for k in range(1, steps + 1)])
        assert len(epochs_in(seed, Stage.PROBATIONARY)) == expect["probation"]
        assert self.isolate == [0.0 if "isolation" in active else 1.0] * steps
        assert self.group_lr == pytest.approx([expect["lr"] * HOST_LR] * len(seed.metrics.stage))


@pytest.fixture(scope="module")
def full_run(task: TaskData) -> FullRun:
    return FullRun(task, LEVERS, gated_neighbour=True)


def test_all_six_levers_take_effect_together(full_run: FullRun) -> None:
    full_run.check_effects()


@pytest.mark.parametrize("removed", LEVERS)
def test_removing_a_lever_removes_its_head_mask_fields_and_effect(task: TaskData, removed: str) -> None:
    rest = tuple(n for n in LEVERS if n != removed)
    run = FullRun(task, rest)
    reg = run.rig.registry
    assert reg.space.names == ("op", "slot", "blueprint", "blend", *rest)
    assert removed not in {s.lever for s in reg.masks.sources}
    assert removed not in reg.safety
    keys = set(run.rig.fields[-1])
    assert not any(k.startswith(f"{removed}.") for k in keys)
    assert {k.split(".")[0] for k in keys} == set(rest)
    run.check_effects()


# ------------------------------------------------------------------ telemetry

FIELDS = {
    "dwell": ("training_gradient_stability", "g2_headroom", "early_accuracy_signal"),
    "isolation": ("host_gradient_norm_via_seed", "host_weight_change_rate", "coadaptation_delta"),
    "lr": ("seed_loss_gradient", "seed_weight_magnitude", "lr_stability_ratio"),
    "probation": ("probation_epochs_remaining", "contribution_trend"),
    "steepness": ("alpha_variance", "early_contribution_signal"),
    "tempo": ("blending_velocity", "contribution_at_alpha_milestones"),
}
OBSERVED = {
    "dwell.training_gradient_stability",
    "dwell.g2_headroom",
    "isolation.host_gradient_norm_via_seed",
    "lr.seed_loss_gradient",
    "probation.probation_epochs_remaining",
    "tempo.blending_velocity",
}


def test_telemetry_fields_are_named_and_observed_as_declared(full_run: FullRun) -> None:
    expected = [f"{lever}.{name}" for lever in LEVERS for name in FIELDS[lever]]
    assert [f.key for f in full_run.rig.registry.fields] == expected
    assert all(list(epoch) == expected for epoch in full_run.rig.fields)
    assert {f.key for f in full_run.rig.registry.observed_fields()} == OBSERVED


def test_telemetry_fields_report_what_happened(full_run: FullRun) -> None:
    rig, seed = full_run.rig, full_run.seed
    met = seed.metrics
    n = len(met.stage)  # germinated at epoch 0: epoch i is metrics index i

    def series(key: str, slot: int = 0) -> list[float | None]:
        return [rig.fields[e][key][slot] for e in range(n)]

    for key in (k for epoch in rig.fields for k in epoch):
        assert all(v is None or math.isfinite(v) for v in series(key)), key
    training = epochs_in(seed, Stage.TRAINING)
    blending = epochs_in(seed, Stage.BLENDING)
    probation = epochs_in(seed, Stage.PROBATIONARY)

    # dwell
    stability = series("dwell.training_gradient_stability")
    assert stability[: training[1]] == [None] * training[1]
    assert stability[training[1]] == pytest.approx(statistics.pvariance([met.grad_norm[i] for i in training]))
    headroom = series("dwell.g2_headroom")
    g2 = rig.events.of("seed.gate_evaluated", seed_id=seed.seed_id, gate="G2")[0]
    assert headroom[g2[0]] == pytest.approx(g2[1]["values"]["grad_ratio"] - g2[1]["thresholds"]["grad_ratio"])
    assert all(v is None for v in headroom[training[-1] + 1 :])
    assert series("dwell.early_accuracy_signal") == pytest.approx(
        [rig.results[e].val_accuracy - rig.results[0].val_accuracy for e in range(n)]
    )

    # isolation (COADAPT): no host gradient via the seed until it blends, then some
    via_seed = series("isolation.host_gradient_norm_via_seed")
    assert all(via_seed[i] == 0.0 for i in training)
    assert all((v or 0.0) > 0.0 for v in (via_seed[i] for i in blending))
    assert all((v or 0.0) > 0.0 for v in series("isolation.host_weight_change_rate"))
    # Measured at most now and then; the field holds the latest measurement.
    deltas = series("isolation.coadaptation_delta")
    assert deltas[: blending[0]] == [None] * blending[0]
    assert deltas == [
        next((d for d in reversed(met.coadaptation_delta[: e + 1]) if d is not None), None) for e in range(n)
    ]

    # lr
    assert all((v or 0.0) > 0.0 for v in series("lr.seed_loss_gradient"))
    assert all((v or 0.0) > 0.0 for v in series("lr.seed_weight_magnitude"))
    assert series("lr.lr_stability_ratio") == [1.0] * n

    # probation: a countdown from the moment G3 passes, ending at the timeout
    remaining = series("probation.probation_epochs_remaining")
    assert remaining[: blending[-1]] == [None] * blending[-1]
    assert remaining[blending[-1] :] == [3.0, 2.0, 1.0, 0.0]
    trend = series("probation.contribution_trend")
    points = [(float(i), met.contribution[i]) for i in probation]
    fit = statistics.linear_regression([x for x, _ in points], [float(y or 0.0) for _, y in points])
    assert trend[: probation[1]] == [None] * probation[1]
    assert trend[-1] == pytest.approx(fit.slope)

    # steepness: alpha variance only for the gated neighbour
    assert series("steepness.alpha_variance") == [None] * n
    assert full_run.neighbour is not None
    gated = series("steepness.alpha_variance", slot=1)[: len(full_run.neighbour.metrics.stage)]
    assert all(v is not None and v >= 0.0 for v in gated)
    early = series("steepness.early_contribution_signal")
    first = next(i for i in blending if met.alpha[i] >= 0.3)
    assert early[:first] == [None] * first
    assert early[first:] == [met.contribution[first]] * (n - first)

    # tempo
    velocity = series("tempo.blending_velocity")
    assert velocity[1:] == pytest.approx([met.alpha[i] - met.alpha[i - 1] for i in range(1, n)])
    assert velocity[blending[0]] == pytest.approx(alpha_sigmoid(1, 3, 2.0))
    assert series("tempo.contribution_at_alpha_milestones")[-1] is not None


def test_coadaptation_delta_reports_a_measured_counterfactual(task: TaskData) -> None:
    # Whoever measures the counterfactual hands it to the lifecycle in the
    # SlotMeasure; the field carries it through, and keeps it while unmeasured.
    rig = Rig(task, ("isolation",))
    seed = rig.germinate()
    measure = EpochMeasure(
        epoch=0, val_accuracy=0.5, host_grad_norm=1.0, slots={0: SlotMeasure(coadaptation_delta=0.25)}
    )
    rig.lifecycle.end_epoch(measure)
    result = EpochResult(0, 1.0, 0.5, 1.0, 0.5, 1.0, measure)
    fields = compute_fields(rig.registry, rig.lifecycle, result)
    assert fields["isolation.coadaptation_delta"] == [0.25, None]
    assert seed.metrics.coadaptation_delta == [0.25]
    later = EpochMeasure(epoch=1, val_accuracy=0.5, host_grad_norm=1.0, slots={0: SlotMeasure()})
    rig.lifecycle.end_epoch(later)
    fields = compute_fields(rig.registry, rig.lifecycle, EpochResult(1, 1.0, 0.5, 1.0, 0.5, 1.0, later))
    assert fields["isolation.coadaptation_delta"] == [0.25, None]


# ------------------------------------------------------------------ compile safety


class _CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


#: Per lever, a first choice every seed uses (A) and a second one (B).
CHOICE_PAIRS = {
    "dwell": ("MINIMAL", "SHORT"),
    "isolation": ("COADAPT", "ISOLATED"),
    "lr": ("CAUTIOUS", "AGGRESSIVE"),
    "probation": ("SHORT", "STANDARD"),
    "steepness": ("GENTLE", "SHARP"),
    "tempo": ("FAST", "STANDARD"),
}


class CompiledSession:
    """One compiled host trained through a sequence of whole seed lives, counting graphs.

    The first seed takes every lever's A choice; then, for each lever in turn,
    one seed takes that lever's B choice (the others A); last, a seed with a
    gated blend. Every seed runs through every stage to its probation timeout
    and is culled, so the compiled host sees each choice's effect on every
    stage it touches. Dynamo caches graphs, so a graph first compiled during
    the B seed of lever L is one L's choice caused.
    """

    def __init__(self, task: TaskData) -> None:
        torch._dynamo.reset()
        backend = _CountingBackend()
        # Long enough that no choice is masked for running past the episode's end.
        rig = Rig(task, max_epochs=200, backend=backend)
        keys: set[tuple[tuple[bool, str | None, int], ...]] = set()

        def key() -> None:
            keys.add(tuple(s.live_key() for s in rig.host.seed_slots()))

        def life(choices: dict[str, str], blend: str = "sigmoid") -> int:
            before = backend.graphs
            seed = rig.germinate(0, blend=blend, **choices)
            assert {n: seed.choices[n] for n in choices} == choices
            rig.live_through(seed, limit=25, each=key)
            assert seed.cull_reason == "probation_timeout"
            key()
            rig.until_dormant(0)
            return backend.graphs - before

        base = {lever: a for lever, (a, _) in CHOICE_PAIRS.items()}
        # A raised limit, so an extra recompile is counted instead of falling back to eager.
        with torch._dynamo.config.patch(recompile_limit=64):
            self.fixed_graphs = life(base)
            self.fixed_keys = len(keys)
            self.added = {lever: life({**base, lever: b}) for lever, (_, b) in CHOICE_PAIRS.items()}
            self.keys = len(keys)
            # Steepness is irrelevant for a gated blend, so it is not recorded on the seed.
            self.gated_added = life({k: v for k, v in base.items() if k != "steepness"}, blend="gated")
        self.total = backend.graphs


@pytest.fixture(scope="module")
def compiled_session(task: TaskData) -> CompiledSession:
    return CompiledSession(task)


def test_compiled_host_compiles_once_per_module_set(compiled_session: CompiledSession) -> None:
    s = compiled_session
    print(f"fixed choices: {s.fixed_graphs} graphs for {s.fixed_keys} live-seed module sets; added per lever {s.added}")
    # No seed, and one sigmoid seed in slot 0: a training graph and a no-grad eval graph for each.
    assert s.fixed_keys == 2
    assert s.fixed_graphs == 2 * s.fixed_keys


@pytest.mark.parametrize("lever", LEVERS)
def test_compile_safety_none_means_no_recompile_across_choices(compiled_session: CompiledSession, lever: str) -> None:
    assert open_registry(LEVERS, 2).safety[lever].level is Safety.NONE
    assert compiled_session.added[lever] == 0
    assert compiled_session.keys == compiled_session.fixed_keys


def test_the_recompile_counter_sees_a_real_specialization(compiled_session: CompiledSession) -> None:
    # The core's blend head changes the module set (a gated blend adds a gate):
    # the same counter must see it, or the zeros above would prove nothing.
    assert compiled_session.gated_added == 2
    assert compiled_session.total == compiled_session.fixed_graphs + 2


# ------------------------------------------------------------------ kernel independence

KERNEL = Path(esper_kernel.__file__).parent
HEAD_NAMES = frozenset({"tempo", "dwell", "isolation", "probation", "steepness", "lr"})


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _param_group_lr_keys(tree: ast.AST) -> set[int]:
    """``"lr"`` where it is torch's optimizer param-group key, not a head name."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "params" for k in node.keys):
            out.update(id(k) for k in node.keys if isinstance(k, ast.Constant) and k.value == "lr")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "group":
            out.add(id(node.slice))
    return out


KNOB_NAMES = frozenset(f.name for f in attrs.fields(Knobs))


def _knob_names(tree: ast.AST) -> set[int]:
    """Knob field names (``Knobs.steepness`` is the kernel's own) in getattr or a list of knob names."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = [e for e in node.elts if isinstance(e, ast.Constant)]
            if len(names) == len(node.elts) >= 2 and all(e.value in KNOB_NAMES for e in names):
                out.update(id(e) for e in names)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in KNOB_NAMES
        ):
            out.add(id(node.args[1]))
    return out


def kernel_mentions_of_builtin_levers(source: str) -> list[str]:
    """Imports of the built-in levers and their head names as string literals.

    Docstrings are prose; ``"lr"`` as torch's param-group key and knob field
    names (``"steepness"`` is a :class:`Knobs` field) are the kernel's own.
    """
    tree = ast.parse(source)
    skip = _docstrings(tree) | _param_group_lr_keys(tree) | _knob_names(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("esper_levers_builtin")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("esper_levers_builtin"):
            found.append(str(node.module))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and (node.value in HEAD_NAMES or "esper_levers_builtin" in node.value)
        ):
            found.append(f"{node.value!r} (line {node.lineno})")
    return found


def test_kernel_names_no_builtin_lever() -> None:
    files = sorted(KERNEL.rglob("*.py"))
    assert len(files) > 10
    found = {
        str(f.relative_to(KERNEL)): hits for f in files if (hits := kernel_mentions_of_builtin_levers(f.read_text()))
    }
    assert found == {}


def test_kernel_scan_catches_a_lever_name() -> None:
    bad = 'import esper_levers_builtin.tempo\n\ndef f(seed):\n    """Mentions tempo."""\n    return seed.value("lr")\n'
    assert kernel_mentions_of_builtin_levers(bad) == ["esper_levers_builtin.tempo", "'lr' (line 5)"]
    ok = 'def f(group, p):\n    """tempo, lr"""\n    group["lr"] = 1\n    return {"params": p, "lr": 0.1}\n'
    knobs = 'for n in ("steepness", "lr_scale"):\n    getattr(k, n)\ngetattr(k, "steepness")\n'
    assert kernel_mentions_of_builtin_levers(knobs) == []
    assert kernel_mentions_of_builtin_levers('seed.value("steepness")') == ["'steepness' (line 1)"]
    assert kernel_mentions_of_builtin_levers(ok) == []


def test_fields_reach_the_epoch_completed_events(tmp_path: Path) -> None:
    from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task
    from esper_kernel.infra.telemetry import Telemetry, read_events

    cfg = EnvConfig(epochs=9, slots=2, batch_size=32, train_size=64, val_size=32, width=8)
    reg = build_registry(cfg, Selection(only=LEVERS))
    path = tmp_path / "events.jsonl"
    with Telemetry(path, "levers", console=False) as tel:
        env = MorphoEnv(cfg, reg, load_task(cfg, 0), tel.log)
        env.reset(0)
        germinate = {
            "op": "germinate",
            "slot": "s0",
            "blend": "sigmoid",
            "isolation": "COADAPT",
            **QUICK,
            "dwell": "SHORT",
        }
        env.step(reg.space.encode([germinate])[0])
        seed = env.lifecycle.seeds[0]
        assert seed is not None
        seed.knobs.g2_threshold = 0.0  # see the module docstring
        while not env.done:
            env.step(reg.space.encode([{"op": "wait"}])[0])
    completed = [e for e in read_events(path) if e["event"] == "epoch.completed"]
    assert len(completed) == cfg.epochs
    keys = [f"{lever}.{name}" for lever in LEVERS for name in FIELDS[lever]]
    for event in completed:
        assert all(len(event[k]) == cfg.slots for k in keys)
    # Only a gated blend has an alpha variance; the isolation counterfactual is measured only where the runner does.
    reported = {k for k in keys if any(event[k][0] is not None for event in completed)}
    assert reported >= set(keys) - {"steepness.alpha_variance", "isolation.coadaptation_delta"}
    assert [e["probation.probation_epochs_remaining"][0] for e in completed][-4:] == [3.0, 2.0, 1.0, 0.0]
