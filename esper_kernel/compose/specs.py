"""The data lever plugins hand the kernel through the hooks.

Everything here is a frozen attrs class: once a plugin has declared a head,
a telemetry field or its compile safety, nothing can change it behind the
kernel's back.
"""

from __future__ import annotations

import enum
import keyword
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.compose.seeds import KNOB_NAMES, Point, Timeline
from esper_kernel.compose.stages import ALL_OPS, LIVE_STAGES, Op, Stage

if TYPE_CHECKING:
    from esper_kernel.compose.seeds import SeedState


def _identifier(kind: str) -> Callable[[Any, attrs.Attribute[str], str], None]:
    def check(_inst: Any, _attr: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
            raise ValueError(f"{kind} name {value!r} must be a Python identifier")

    return check


def _strs(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _values(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(items)


def _to_ops(ops: Iterable[Op | int | str]) -> frozenset[Op]:
    out: set[Op] = set()
    for op in ops:
        if isinstance(op, str):
            try:
                out.add(Op[op.upper()])
            except KeyError:
                known = ", ".join(o.name for o in Op)
                raise ValueError(f"unknown op {op!r}; ops are {known}") from None
        else:
            out.add(Op(op))
    return frozenset(out)


@attrs.frozen
class HeadCondition:
    """Makes a head relevant only when another head chose one of ``choices``.

    Example: a steepness head matters only when ``blend`` is ``sigmoid``:
    ``HeadCondition(head="blend", choices=("sigmoid",))``.
    """

    head: str
    choices: tuple[str, ...] = attrs.field(converter=_strs)


@attrs.frozen
class HeadSpec:
    """One categorical decision added to Tamiyo's factored action space.

    ``choices`` are the names the policy picks between and the telemetry
    reports; ``values`` are what the lever reads back from the seed (epochs,
    multipliers, ...). ``ops`` are the lifecycle ops for which the head is
    relevant: for any other op the head is not sampled into the log-prob and
    its default is recorded.

    ``knob`` makes the lever declarative: on entering ``on_enter`` the kernel
    sets ``seed.knobs.<knob>`` to the chosen value, and the lever needs no
    ``on_enter_stage`` for it. It also declares the lever the knob's owner
    (see ``composes``), and lets the kernel's timing (``MaskView.timeline``)
    count on the quickest choice for a timing knob.

    ``until`` declares the head's mask: a choice is legal while a seed
    germinated now with it still reaches that point of its life (a
    :data:`~esper_kernel.compose.seeds.Point`) within the episode; where no choice
    does, only the one that gets there soonest (the default, among equals).
    """

    name: str = attrs.field(validator=_identifier("head"))
    choices: tuple[str, ...] = attrs.field(converter=_strs)
    values: tuple[Any, ...] = attrs.field(converter=_values)
    default: str
    ops: frozenset[Op] = attrs.field(default=ALL_OPS, converter=_to_ops)
    condition: HeadCondition | None = None
    description: str = ""
    knob: str | None = None
    on_enter: Stage = attrs.field(default=Stage.GERMINATED, converter=Stage)
    until: Point | None = None

    def __attrs_post_init__(self) -> None:
        where = f"head {self.name!r}"
        if self.knob is not None and self.knob not in KNOB_NAMES:
            raise ValueError(f"{where} sets knob {self.knob!r}, which does not exist; knobs are {sorted(KNOB_NAMES)}")
        if self.until is not None:
            Timeline(0, 0, 0, 0, 0).at(self.until)  # raises on a point no seed reaches
        if self.on_enter not in LIVE_STAGES:
            raise ValueError(f"{where} sets its knob on entering {self.on_enter.name}, which is not a live stage")
        if len(self.choices) < 2:
            raise ValueError(f"{where} needs at least 2 choices, got {list(self.choices)}")
        if len(set(self.choices)) != len(self.choices):
            raise ValueError(f"{where} has duplicate choice names {list(self.choices)}")
        if len(self.values) != len(self.choices):
            raise ValueError(f"{where} has {len(self.choices)} choices but {len(self.values)} values")
        if self.default not in self.choices:
            raise ValueError(f"{where} default {self.default!r} is not one of its choices {list(self.choices)}")
        if not self.ops:
            raise ValueError(f"{where} applies to no op")

    @property
    def size(self) -> int:
        return len(self.choices)

    @property
    def default_index(self) -> int:
        return self.choices.index(self.default)

    def value_of(self, choice: str) -> Any:
        return self.values[self.choices.index(choice)]


@attrs.frozen
class FieldContext:
    """What a telemetry field is computed from: one slot of one env, once per epoch."""

    seed: SeedState | None
    slot: int
    epoch: int
    max_epochs: int
    val_accuracy: float
    train_loss: float

    def latest(self, metric: str) -> float | None:
        """The seed's most recent measured ``metrics.<metric>`` (None: no seed, or nothing measured yet)."""
        values: list[Any] = getattr(self.seed.metrics, metric) if self.seed is not None else []
        return next((float(v) for v in reversed(values) if v is not None), None)


FieldFn = Callable[[FieldContext], "float | None"]


@attrs.frozen
class TelemetryField:
    """A number a lever publishes every epoch for every slot.

    ``compute`` returns a float, or None where the field does not apply (no
    seed, wrong stage); observed fields enter Tamiyo's observation (None
    reads as 0.0) and every field lands in ``epoch.completed`` events as
    ``<lever>.<name>``.
    """

    name: str = attrs.field(validator=_identifier("telemetry field"))
    description: str
    compute: FieldFn
    observed: bool = False


class Safety(enum.Enum):
    """How a lever affects a host compiled with ``torch.compile``."""

    NONE = "none"  # only values in tensors change: never recompiles
    SPECIALIZES = "specializes"  # changes module structure: one graph per distinct choice
    BREAKS_GRAPH = "breaks_graph"  # cannot be captured whole: refused unless allowed


@attrs.frozen
class CompileSafety:
    level: Safety = attrs.field(converter=Safety)
    reason: str = ""


UNDECLARED_SAFETY = CompileSafety(
    Safety.BREAKS_GRAPH, "the lever does not implement compile_safety(), so nothing is promised"
)
