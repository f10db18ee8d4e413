"""The levers report: one structure for ``esper levers list/show --json`` and the human view.

The ``--json`` schema (``esper.levers/1``) is documented in
``docs/levers-cli.md``; change it only by bumping the schema version. Light on
purpose (attrs and rich, no torch): ``esper levers`` must start fast.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from esper_kernel.compose.stages import Op

if TYPE_CHECKING:
    from esper_kernel.compose.discovery import LeverInfo, LoadFailure, Selection
    from esper_kernel.compose.registry import Registry

LEVERS_SCHEMA = "esper.levers/1"


# -- the report: one structure for both --json and the human view -----------


@attrs.frozen
class ChoiceRecord:
    name: str
    value: Any


@attrs.frozen
class ConditionRecord:
    head: str
    choices: tuple[str, ...]


@attrs.frozen
class HeadRecord:
    name: str
    description: str
    choices: tuple[ChoiceRecord, ...]
    default: str
    ops: tuple[str, ...]
    condition: ConditionRecord | None


@attrs.frozen
class FieldRecord:
    name: str
    key: str
    observed: bool
    description: str


@attrs.frozen
class SafetyRecord:
    level: str
    reason: str
    declared: bool


@attrs.frozen
class LeverRecord:
    name: str
    distribution: str
    version: str
    entry_point: str
    heads: tuple[HeadRecord, ...]
    telemetry: tuple[FieldRecord, ...]
    compile_safety: SafetyRecord
    hooks: tuple[str, ...]
    requires: tuple[str, ...]
    conflicts_with: tuple[str, ...]


@attrs.frozen
class FailureRecord:
    name: str
    distribution: str
    version: str
    entry_point: str
    error: str


@attrs.frozen
class LeversReport:
    schema: str
    levers: tuple[LeverRecord, ...]
    failures: tuple[FailureRecord, ...]

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, allow_nan=False)


def json_value(value: Any) -> Any:
    """A head value as JSON: scalars as themselves, enum members by name, anything else as repr.

    Values are whatever a lever chose to attach to its choices; the schema
    promises valid JSON, so non-finite floats and objects become strings.
    """
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def _op_names(ops: frozenset[Op]) -> tuple[str, ...]:
    return tuple(op.name.lower() for op in sorted(ops))


def lever_record(reg: Registry, info: LeverInfo) -> LeverRecord:
    hooks = reg.hooks_of(info.name)
    heads = tuple(
        HeadRecord(
            name=h.name,
            description=h.spec.description,
            choices=tuple(ChoiceRecord(c, json_value(v)) for c, v in zip(h.spec.choices, h.spec.values, strict=True)),
            default=h.spec.default,
            ops=_op_names(h.spec.ops),
            condition=(
                None if h.spec.condition is None else ConditionRecord(h.spec.condition.head, h.spec.condition.choices)
            ),
        )
        for h in reg.space.heads
        if h.lever == info.name
    )
    fields = tuple(
        FieldRecord(f.spec.name, f.key, f.spec.observed, f.spec.description) for f in reg.fields if f.lever == info.name
    )
    safety = reg.safety[info.name]
    return LeverRecord(
        name=info.name,
        distribution=info.distribution,
        version=info.version,
        entry_point=info.entry_point,
        heads=heads,
        telemetry=fields,
        compile_safety=SafetyRecord(safety.level.value, safety.reason, "compile_safety" in hooks),
        hooks=hooks,
        requires=info.requires,
        conflicts_with=info.conflicts_with,
    )


def failure_record(fail: LoadFailure) -> FailureRecord:
    return FailureRecord(fail.name, fail.distribution, fail.version, fail.entry_point, fail.error)


def levers_report(reg: Registry, names: Sequence[str] | None = None, failures: bool = True) -> LeversReport:
    """The report for the active levers (or just ``names``), in lever order."""
    chosen = [lv for lv in reg.levers if names is None or lv.name in names]
    return LeversReport(
        schema=LEVERS_SCHEMA,
        levers=tuple(lever_record(reg, lv) for lv in chosen),
        failures=tuple(failure_record(f) for f in reg.failures) if failures else (),
    )


# -- human rendering ---------------------------------------------------------


def dash(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "-"


def _head_text(head: HeadRecord) -> Text:
    text = Text()
    text.append(head.name, style="bold")
    text.append(": ")
    text.append("  ".join(f"{c.name}={c.value}" for c in head.choices))
    ops = "all ops" if len(head.ops) == len(Op) else "ops " + ", ".join(head.ops)
    text.append(f"\n  default {head.default}; {ops}", style="dim")
    if head.condition is not None:
        text.append(f"; only if {head.condition.head} in {{{', '.join(head.condition.choices)}}}", style="dim")
    if head.description:
        text.append(f"\n  {head.description}", style="italic")
    return text


def _field_text(field: FieldRecord) -> Text:
    text = Text(field.key, style="bold")
    if field.observed:
        text.append(" (observed)", style="green")
    if field.description:
        text.append(f" - {field.description}")
    return text


def lever_panel(lever: LeverRecord) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("entry point", Text(lever.entry_point))
    grid.add_row("hooks", Text(dash(lever.hooks)))
    safety = Text(lever.compile_safety.level, style="bold")
    if lever.compile_safety.reason:
        safety.append(f" - {lever.compile_safety.reason}")
    grid.add_row("compile safety", safety)
    for i, head in enumerate(lever.heads):
        grid.add_row("heads" if i == 0 else "", _head_text(head))
    if not lever.heads:
        grid.add_row("heads", Text("-"))
    for i, field in enumerate(lever.telemetry):
        grid.add_row("telemetry" if i == 0 else "", _field_text(field))
    if not lever.telemetry:
        grid.add_row("telemetry", Text("-"))
    grid.add_row("requires", Text(dash(lever.requires)))
    grid.add_row("conflicts with", Text(dash(lever.conflicts_with)))
    title = Text.assemble((lever.name, "bold"), f"  {lever.distribution} {lever.version}")
    return Panel(grid, title=title, title_align="left")


def failures_panel(failures: Sequence[FailureRecord]) -> Panel:
    # One block per failure rather than a table: the error text is long and
    # would be folded into an unreadable column on an 80-column terminal.
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    for f in failures:
        line = Text.assemble((f.name, "bold"), f"  {f.distribution} {f.version}  entry point {f.entry_point}")
        grid.add_row(line)
        grid.add_row(Text(f"  {f.error}", style="red"))
    return Panel(grid, title=Text("failed to load", style="bold red"), title_align="left", border_style="red")


def render(report: LeversReport, selection: Selection) -> Group:
    parts: list[Any] = [lever_panel(lv) for lv in report.levers]
    if not report.levers:
        from esper_kernel.compose.discovery import ENV_NO_AUTOLOAD

        hint = ""
        if not selection.autoload and selection.only is None:
            hint = f" ({ENV_NO_AUTOLOAD} is set: name levers with --levers or ESPER_LEVERS)"
        parts.append(Text(f"No levers active{hint}."))
    if report.failures:
        parts.append(failures_panel(report.failures))
    return Group(*parts)
