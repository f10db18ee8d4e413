"""Schedule policies: a growth plan written by hand (or read off a policy), played open-loop.

A schedule is a TOML file of ``[[step]]`` tables, each one decision taken at a
given epoch whatever the network does: the fixed growth schedule of the
growing-networks literature (Net2Net and GradMax grow at fixed steps), and the
baseline a learned controller must beat. ``docs/eval.md`` documents the format::

    name = "dilated-early"

    [[step]]
    epoch = 0            # the decision taken before epoch 0 is trained
    op = "germinate"
    slot = 0
    blueprint = "dilated"
    dwell = "MINIMAL"    # any other key: a lever head and its choice
    tempo = "FAST"

    [[step]]
    epoch = 5
    op = "fossilize"
    slot = 0
    window = 6           # may wait up to 6 more decisions for the step to be legal

A step is due from its ``epoch`` and is played at the first decision within
its ``window`` at which every choice it names is legal under the masks (the
first such due step in file order; one step per decision). One whose window
closes without that (or still waiting at the episode's last decision) is
skipped and counted (:attr:`SchedulePolicy.fallbacks`), as a forced head's
fallbacks are. Heads a step does not name take their default, or the first legal
choice where a lever masks the default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from esper_kernel.compose.names import UNFORCEABLE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Op
from esper_kernel.episode.sampling import Sampled
from esper_kernel.infra.errors import EsperError
from esper_kernel.tamiyo.policies import decide_rows

if TYPE_CHECKING:
    from esper_kernel.episode.env import EnvBatch

__all__ = ["Schedule", "SchedulePolicy", "ScheduleStep", "check_schedule", "load_schedule", "parse_schedule"]

OPS = {op.name.lower(): op for op in Op}
#: Keys of a step that are not lever heads.
STEP_KEYS = ("epoch", "op", "slot", "window")


class ScheduleError(EsperError):
    """A schedule file that cannot be played, said in one line naming the step and the key."""


@attrs.frozen
class ScheduleStep:
    """One planned decision."""

    #: Position in the file, from 1 (what errors and reports name).
    index: int
    epoch: int
    op: str
    slot: int | None = None
    #: Head -> choice for every other head the step names (blueprint, blend, levers).
    choices: tuple[tuple[str, str], ...] = ()
    window: int = 0

    def as_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {"epoch": self.epoch, "op": self.op}
        if self.slot is not None:
            table["slot"] = self.slot
        table.update(dict(self.choices))
        if self.window:
            table["window"] = self.window
        return table


@attrs.frozen
class Schedule:
    name: str
    steps: tuple[ScheduleStep, ...]
    #: Where it came from (a path, or what it was read off), for errors.
    source: str

    def to_toml(self, comment: str = "") -> str:
        """The schedule as a file :func:`parse_schedule` reads back to the same steps."""
        lines = [f"# {line}" for line in comment.splitlines()] + [f"name = {_toml_str(self.name)}", ""]
        for step in self.steps:
            lines.append("[[step]]")
            lines += [f"{k} = {v if isinstance(v, int) else _toml_str(str(v))}" for k, v in step.as_table().items()]
            lines.append("")
        return "\n".join(lines)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _whole(value: object, where: str, key: str, least: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ScheduleError(f"{where}: key {key!r}: expected a whole number >= {least}, got {value!r}")
    return value


def _slot(value: object, where: str) -> int:
    if isinstance(value, str) and value.startswith("s") and value[1:].isdigit():
        return int(value[1:])
    return _whole(value, where, "slot")


def _step(index: int, table: object, source: str) -> ScheduleStep:
    where = f"schedule {source} step {index}"
    if not isinstance(table, dict):
        raise ScheduleError(f"{where}: expected a table of keys, got {table!r}")
    for key in ("epoch", "op"):
        if key not in table:
            raise ScheduleError(f"{where}: key {key!r} is missing")
    epoch = _whole(table["epoch"], where, "epoch")
    op = table["op"]
    if op not in OPS:
        raise ScheduleError(f"{where}: key 'op': {op!r} is not one of {', '.join(OPS)}")
    where = f"{where} ({op} at epoch {epoch})"
    slot = _slot(table["slot"], where) if "slot" in table else None
    if op != "wait" and slot is None:
        raise ScheduleError(f"{where}: key 'slot' is missing")
    if op == "germinate" and "blueprint" not in table:
        raise ScheduleError(f"{where}: key 'blueprint' is missing")
    choices = []
    for key, value in table.items():
        if key in STEP_KEYS:
            continue
        if not isinstance(value, str):
            raise ScheduleError(f"{where}: key {key!r}: expected a choice name (a string), got {value!r}")
        choices.append((key, value))
    window = _whole(table.get("window", 0), where, "window")
    return ScheduleStep(index, epoch, op, slot, tuple(choices), window)


def parse_schedule(text: str, source: str) -> Schedule:
    """Read a schedule's TOML; a grammar error is one line naming the step and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"schedule {source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"name", "description", "step"})
    if unknown:
        raise ScheduleError(f"schedule {source}: key {unknown[0]!r} is not a schedule key (name, description, step)")
    steps = data.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise ScheduleError(f"schedule {source}: key 'step': expected one or more [[step]] tables")
    name = data.get("name", Path(source).stem)
    return Schedule(str(name), tuple(_step(i, t, source) for i, t in enumerate(steps, 1)), source)


def load_schedule(path: str | Path) -> Schedule:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScheduleError(f"schedule {path}: cannot be read ({exc.strerror or exc})") from None
    return parse_schedule(text, str(path))


def check_schedule(schedule: Schedule, registry: Registry, slots: int) -> None:
    """Every head a step names exists, has a say in the step's op and has the choice named; slots exist."""
    space = registry.space
    for step in schedule.steps:
        where = f"schedule {schedule.source} step {step.index} ({step.op} at epoch {step.epoch})"
        if step.slot is not None and step.slot >= slots:
            raise ScheduleError(f"{where}: key 'slot': slot {step.slot} does not exist (this run has {slots} slots)")
        for head, choice in step.choices:
            if head not in space or head in UNFORCEABLE_HEADS:
                heads = ", ".join(n for n in space.names if n not in UNFORCEABLE_HEADS)
                raise ScheduleError(f"{where}: key {head!r}: no head {head!r}; heads: {heads}")
            spec = space.head(head).spec
            if OPS[step.op] not in spec.ops:
                raise ScheduleError(f"{where}: key {head!r}: head {head!r} has no say in {step.op}")
            if choice not in spec.choices:
                raise ScheduleError(
                    f"{where}: key {head!r}: head {head!r} has no choice {choice!r}; choices: {', '.join(spec.choices)}"
                )


@attrs.define
class _Cursor:
    """Where one env is in the schedule: the steps played or skipped so far (by position)."""

    done: list[int] = attrs.Factory(list)
    played: int = 0
    skipped: int = 0


class SchedulePolicy:
    """Plays a :class:`Schedule` open-loop; :attr:`fallbacks` counts the steps skipped as illegal."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._cursors: list[_Cursor] = []

    @property
    def fallbacks(self) -> int:
        return sum(c.skipped for c in self._cursors)

    @property
    def played(self) -> int:
        return sum(c.played for c in self._cursors)

    def run_state(self) -> dict[str, Any]:
        return {"cursors": [attrs.asdict(c) for c in self._cursors]}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self._cursors = [_Cursor(**c) for c in state["cursors"]]

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        while len(self._cursors) < len(envs.envs):
            self._cursors.append(_Cursor())
        space = envs.registry.space
        rows = [
            self._row(env.epoch, env.config.epochs, masks[i], space, c)
            for i, (env, c) in enumerate(zip(envs.envs, self._cursors, strict=False))
        ]
        return decide_rows(space, rows, masks)

    def _row(self, epoch: int, epochs: int, mask: torch.Tensor, space: Any, cursor: _Cursor) -> dict[str, str]:
        """The first due step (in file order) that is legal now; steps whose window is over are skipped."""
        due = [s for s in self.schedule.steps if s.index not in cursor.done and s.epoch <= epoch]
        chosen: dict[str, str] = {"op": "wait"}
        for step in due:
            row = _choices(step)
            last_chance = epoch >= step.epoch + step.window or epoch == epochs - 1
            if chosen["op"] == "wait" and epoch <= step.epoch + step.window and _legal(row, mask, space):
                chosen = row
                cursor.played += 1
            elif last_chance:
                cursor.skipped += 1  # illegal until its window closed (or the episode's last decision)
            else:
                continue  # may still become legal: wait for it
            cursor.done.append(step.index)
        return chosen


def _choices(step: ScheduleStep) -> dict[str, str]:
    row = {"op": step.op, **dict(step.choices)}
    if step.slot is not None:
        row["slot"] = f"s{step.slot}"
    return row


def _legal(row: Mapping[str, str], mask: torch.Tensor, space: Any) -> bool:
    """Whether every choice ``row`` names is legal under ``mask`` ``[n_ops, H, C]``."""
    op = OPS[row["op"]]
    if not bool(mask[0, space.op_index, op]):
        return False
    sel = mask[op]
    return all(bool(sel[space.names.index(h), space.choice_index(h, c)]) for h, c in row.items() if h != "op")


def schedule_of(decisions: Sequence[Mapping[str, Any]], name: str, source: str) -> Schedule:
    """A schedule replaying ``decisions`` (``{"epoch", "op", "slot"?, head: choice...}``), one step each."""
    steps = []
    for i, d in enumerate(decisions, 1):
        slot = d.get("slot")
        choices = tuple((k, str(v)) for k, v in d.items() if k not in STEP_KEYS)
        steps.append(ScheduleStep(i, int(d["epoch"]), str(d["op"]), None if slot is None else int(slot), choices))
    # A policy that only ever waited: its recipe is one WAIT (a schedule has at least one step).
    return Schedule(name, tuple(steps) or (ScheduleStep(1, 0, "wait"),), source)
