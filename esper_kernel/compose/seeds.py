"""A seed's recorded state: its choices, its knobs, its measured history and its timing.

Levers read ``SeedState.choices``/``value()`` and write ``SeedState.knobs``
from ``on_enter_stage`` and ``on_epoch``; the lifecycle engine reads the knobs
with these defaults and appends to ``SeedState.metrics`` once per epoch, which
is what telemetry fields are computed from. :class:`Timeline` is the one place
that says how the knobs translate into epochs.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import cattrs

from esper_kernel.compose.stages import Stage

#: A point in a seed's life that :class:`Timeline` dates: a stage it enters,
#: ``"blended"`` (its last blending epoch: alpha is 1 during it) or
#: ``"timeout"`` (its last probation epoch: culled at its end unless fossilized).
#: ``Stage.FOSSILIZED`` means the first epoch it may be fossilized.
Point = Stage | Literal["blended", "timeout"]


def default_dwell(max_epochs: int) -> int:
    """The kernel's train-to-blend dwell when no lever sets one."""
    return max(1, int(max_epochs * 0.1))


@attrs.define
class Knobs:
    """Per-seed lifecycle parameters. Every default is the kernel's own."""

    blend_steps: int = 5
    steepness: float = 1.0
    dwell_epochs: int = 1
    min_blend_epochs: int = 3
    g2_threshold: float = 0.10
    probation_epochs: int = 5
    lr_scale: float = 1.0
    #: None means "by topology": CNN seeds stay isolated while blending,
    #: transformer seeds co-adapt.
    isolate_blending: bool | None = None
    width_scale: float = 1.0
    #: An importable ``"module:function"`` applied to the seed's input while a
    #: seed is live, as ``fn(x, **seed_input_kwargs)``: lets a lever reshape
    #: the gradient path (e.g. a custom autograd.Function) without the kernel
    #: knowing it. Named, not held, so knobs stay plain data in checkpoints.
    seed_input_transform: str | None = None
    seed_input_kwargs: dict[str, float] = attrs.Factory(dict)
    #: Gradients above this norm count as an explosion (G5 and lr telemetry).
    explode_norm: float = 1e3


#: Knobs that decide when a seed reaches each stage (smaller is sooner).
TIMING_KNOBS = ("dwell_epochs", "blend_steps", "min_blend_epochs")
#: Knobs read once, when the seed's module is built on entering GERMINATED; a
#: later write could not take effect, so the kernel refuses it.
BUILD_KNOBS = frozenset({"width_scale"})
#: Knobs the compiled host graph is specialized on: the seed module's parameter shapes
#: (``width_scale``) and the seed-input transform, a function and its float kwargs traced into
#: the graph. Every other knob is read by the Python lifecycle or lands in a 0-d buffer, so a new
#: value compiles nothing. A lever declaring compile safety NONE may not change these.
GRAPH_KNOBS = frozenset({"width_scale", "seed_input_transform", "seed_input_kwargs"})
KNOB_NAMES = frozenset(f.name for f in attrs.fields(Knobs))


def initial_knobs(max_epochs: int) -> Knobs:
    """The knobs a seed starts with in an episode of ``max_epochs``, before any lever runs."""
    return Knobs(dwell_epochs=default_dwell(max_epochs))


@attrs.frozen
class Timeline:
    """When a seed reaches each point of its life, in epochs after its germination epoch.

    The earliest possible: every gate passes the first time it is tried (G1 at
    the end of the germination epoch, G2 after ``dwell_epochs`` of TRAINING,
    G3 once alpha is 1 and ``min_blend_epochs`` have passed). Built from knobs
    only, so it answers for a seed that does not exist yet as well.
    """

    training: int
    blending: int
    blended: int
    probationary: int
    timeout: int

    @classmethod
    def of(cls, knobs: Knobs) -> Timeline:
        # TRAINING lasts at least one epoch: G2 is first tried at its end.
        training = 1
        blending = training + max(1, knobs.dwell_epochs)
        # Every blend reaches alpha 1 at step ``blend_steps``; G3 also waits for the minimum.
        blend_epochs = max(1, knobs.blend_steps, knobs.min_blend_epochs)
        probationary = blending + blend_epochs
        return cls(
            training=training,
            blending=blending,
            blended=probationary - 1,
            probationary=probationary,
            timeout=probationary + max(1, knobs.probation_epochs) - 1,
        )

    def at(self, point: Point) -> int:
        """Epochs after germination at which ``point`` is reached."""
        if isinstance(point, Stage):
            if point is Stage.GERMINATED:
                return 0
            # FOSSILIZE is decided at the start of an epoch: legal in the first probation epoch.
            if point is Stage.FOSSILIZED:
                return self.probationary
            name = point.name.lower()
            if name not in ("training", "blending", "probationary"):
                raise ValueError(f"a seed does not reach {point.name} on a timeline; ask for a stage it enters")
        else:
            name = point
        if name not in ("training", "blending", "blended", "probationary", "timeout"):
            raise ValueError(f"unknown timeline point {point!r}")
        value: int = getattr(self, name)
        return value


@attrs.define
class SeedMetrics:
    """Per-epoch history of one seed, appended by the lifecycle engine.

    All lists are aligned: index i is the i-th epoch since germination.
    """

    stage: list[int] = attrs.Factory(list)
    alpha: list[float] = attrs.Factory(list)
    grad_norm: list[float] = attrs.Factory(list)
    grad_ratio: list[float] = attrs.Factory(list)
    host_grad_via_seed: list[float] = attrs.Factory(list)
    host_weight_change: list[float] = attrs.Factory(list)
    weight_norm: list[float] = attrs.Factory(list)
    contribution: list[float | None] = attrs.Factory(list)
    val_accuracy: list[float] = attrs.Factory(list)
    alpha_batch_var: list[float] = attrs.Factory(list)
    exploded: list[bool] = attrs.Factory(list)
    #: Counterfactual: the run with the opposite isolation setting, when measured.
    coadaptation_delta: list[float | None] = attrs.Factory(list)

    def epochs_in(self, stage: Stage) -> list[int]:
        """Indices (epochs since germination) at which the seed was in ``stage``."""
        return [i for i, s in enumerate(self.stage) if s == stage]


@attrs.define(eq=False)
class SeedState:
    """One seed's life: set at GERMINATE, carried until fossilized or culled."""

    seed_id: str
    slot: int
    blueprint: str
    blend: str
    topology: str
    germinated_epoch: int
    max_epochs: int
    stage: Stage = Stage.GERMINATED
    stage_entered_epoch: int = 0
    #: Head name -> chosen choice name, for every head relevant at GERMINATE.
    choices: dict[str, str] = attrs.Factory(dict)
    #: Head name -> the chosen choice's value.
    values: dict[str, Any] = attrs.Factory(dict)
    knobs: Knobs = attrs.Factory(Knobs)
    metrics: SeedMetrics = attrs.Factory(SeedMetrics)
    #: Lever name -> whatever the lever keeps; checkpointed under the lever's key.
    lever_state: dict[str, dict[str, Any]] = attrs.Factory(dict)
    blend_epochs: int = 0
    cull_reason: str | None = None

    def value(self, head: str, default: Any = None) -> Any:
        """The value chosen for ``head`` at germination, or ``default``."""
        return self.values.get(head, default)

    def epochs_in_stage(self, epoch: int) -> int:
        return epoch - self.stage_entered_epoch

    def earliest(self, point: Point) -> int:
        """The earliest epoch this seed reaches ``point`` under its current knobs."""
        return self.germinated_epoch + Timeline.of(self.knobs).at(point)

    @property
    def isolated_when_blending(self) -> bool:
        if self.knobs.isolate_blending is None:
            return self.topology in ("cnn", "cnn1d")
        return self.knobs.isolate_blending


#: Seeds to and from plain data, for checkpoints.
_converter = cattrs.Converter()


def seed_to_dict(seed: SeedState) -> dict[str, Any]:
    out: dict[str, Any] = _converter.unstructure(seed)
    return out


def seed_from_dict(data: dict[str, Any]) -> SeedState:
    return _converter.structure(data, SeedState)
