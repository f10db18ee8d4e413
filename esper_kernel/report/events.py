"""What a run directory holds, read from its files into plain data the plots and tables draw.

Nothing here imports torch or matplotlib: ``esper report`` and ``esper compare``
read JSON only. Every figure is drawn from these structures, so a test can
check a plot against the events (one marker per stage change, one span per
stage a seed entered) without reading pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.infra.errors import EsperError

EVENTS = "events.jsonl"
SUMMARY = "summary.json"
TRAIN_SUMMARY = "train_summary.json"
EVAL = "eval.json"
EVAL_SCHEMA = "esper.eval/1"
JOURNAL = "episodes.jsonl"

#: Kernel heads that say *where* and *what* a seed is, not how a lever tunes it.

#: Stage changes marked on the accuracy plot, by the stage entered.
MARKER_KINDS: Mapping[str, str] = {
    "GERMINATED": "germinate",
    "BLENDING": "blend",
    "FOSSILIZED": "fossilize",
    "CULLED": "cull",
}
#: Stages drawn as spans on the seed timeline; the terminal ones are drawn as end marks.
SPAN_STAGES = ("GERMINATED", "TRAINING", "BLENDING", "PROBATIONARY", "EMBARGOED")
END_STAGES = ("FOSSILIZED", "CULLED")
#: Changes Tamiyo's op makes before the epoch trains; every other one (a gate) happens after it.
_START_OF_EPOCH = frozenset({"germinate", "tamiyo", "fossilize"})


class ReportError(EsperError):
    """A directory or file ``esper report`` / ``esper compare`` cannot read."""


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Parse ``events.jsonl``; a line that is not a JSON object is an error naming the file and line."""
    events: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            # A run killed mid-write leaves a torn last line; everything before it is still good.
            if i == len(lines):
                break
            raise ReportError(f"{path}:{i}: not JSON ({exc.msg})") from exc
        if not isinstance(event, dict) or "event" not in event:
            raise ReportError(f"{path}:{i}: not an event (a JSON object with an 'event' key)")
        events.append(event)
    return events


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


# -- a run's episode ------------------------------------------------------------


@attrs.frozen
class StageChange:
    """One ``seed.stage_changed`` event, placed on the epoch axis.

    ``x`` counts epochs trained: an op Tamiyo takes at epoch ``e`` acts before
    the epoch trains (``x = e``); a gate decides after it (``x = e + 1``).
    """

    epoch: int
    x: float
    episode: int | None
    seed_id: str
    slot: int
    old: str
    new: str
    reason: str
    blueprint: str | None
    choices: Mapping[str, str]


@attrs.frozen
class EpochRow:
    """One ``epoch.completed`` event; ``fields`` holds the levers' per-slot telemetry."""

    epoch: int
    train_loss: float | None
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    params: int | None
    stages: tuple[str, ...]
    fields: Mapping[str, tuple[float | None, ...]]


@attrs.frozen
class Marker:
    """A stage change drawn on the accuracy curve."""

    x: float
    kind: str
    slot: int
    seed_id: str


@attrs.frozen
class Span:
    """A seed in one stage on one slot, from ``start`` to ``end`` (epochs trained)."""

    slot: int
    seed_id: str
    stage: str
    start: float
    end: float


@attrs.frozen
class SeedLabel:
    """What the timeline writes under a seed, within the epochs it occupied (``x`` to ``end``)."""

    slot: int
    seed_id: str
    x: float
    end: float
    blueprint: str
    choices: Mapping[str, str]


def stage_changes(events: Sequence[Mapping[str, Any]]) -> list[StageChange]:
    changes: list[StageChange] = []
    last_x: dict[str, float] = {}
    for e in events:
        if e.get("event") != "seed.stage_changed":
            continue
        epoch = int(e.get("epoch") or 0)
        reason = str(e.get("reason", ""))
        seed_id = str(e.get("seed_id"))
        if reason == "embargo":
            # The embargo follows its cull at once, whenever the cull happened.
            x = last_x.get(seed_id, float(epoch))
        else:
            x = float(epoch if reason in _START_OF_EPOCH else epoch + 1)
        last_x[seed_id] = x
        choices = dict(e.get("choices") or {})
        if e.get("blend") is not None:
            choices = {"blend": str(e["blend"]), **choices}
        changes.append(
            StageChange(
                epoch=epoch,
                x=x,
                episode=e.get("episode"),
                seed_id=seed_id,
                slot=int(e.get("slot", 0)),
                old=str(e.get("old")),
                new=str(e.get("new")),
                reason=reason,
                blueprint=e.get("blueprint"),
                choices=choices,
            )
        )
    return changes


@attrs.frozen
class RunData:
    """One episode of ``esper run``: its config, every epoch, every stage change."""

    path: Path
    run_id: str
    config: Mapping[str, Any]
    levers: tuple[Mapping[str, Any], ...]
    failed_levers: tuple[Mapping[str, Any], ...]
    epochs: tuple[EpochRow, ...]
    changes: tuple[StageChange, ...]
    released: tuple[tuple[float, int], ...]
    summary: Mapping[str, Any] | None
    n_slots: int

    @property
    def num_classes(self) -> int | None:
        n = (self.summary or {}).get("num_classes")
        return int(n) if isinstance(n, int) and n > 0 else None

    @property
    def chance(self) -> float | None:
        return None if self.num_classes is None else 1.0 / self.num_classes

    @property
    def total_epochs(self) -> int:
        return len(self.epochs)

    def markers(self) -> list[Marker]:
        """One marker per germination, blend, fossilization and cull, in event order."""
        return [Marker(c.x, MARKER_KINDS[c.new], c.slot, c.seed_id) for c in self.changes if c.new in MARKER_KINDS]

    def spans(self) -> list[Span]:
        """One span per stage a seed entered (of :data:`SPAN_STAGES`), ending at its next change."""
        end_of_run = float(self.total_epochs)
        out: list[Span] = []
        open_span: dict[int, tuple[str, str, float]] = {}

        def close(slot: int, x: float) -> None:
            if slot in open_span:
                seed_id, stage, start = open_span.pop(slot)
                out.append(Span(slot, seed_id, stage, start, max(x, start)))

        # Slot releases end embargoes; merge them into the change order by position.
        releases = sorted(self.released)
        r = 0
        for c in self.changes:
            while r < len(releases) and releases[r][0] <= c.x:
                close(releases[r][1], releases[r][0])
                r += 1
            close(c.slot, c.x)
            if c.new in SPAN_STAGES:
                open_span[c.slot] = (c.seed_id, c.new, c.x)
        for x, slot in releases[r:]:
            close(slot, x)
        for slot in list(open_span):
            close(slot, end_of_run)
        return out

    def ends(self) -> list[StageChange]:
        """Fossilizations and culls: drawn as end marks on the timeline."""
        return [c for c in self.changes if c.new in END_STAGES]

    def labels(self) -> list[SeedLabel]:
        ends: dict[str, float] = {}
        for s in self.spans():
            ends[s.seed_id] = max(ends.get(s.seed_id, s.end), s.end)
        for c in self.ends():
            ends[c.seed_id] = max(ends.get(c.seed_id, c.x), c.x)
        return [
            SeedLabel(c.slot, c.seed_id, c.x, ends.get(c.seed_id, c.x), c.blueprint or "?", c.choices)
            for c in self.changes
            if c.new == "GERMINATED"
        ]

    def lever_fields(self) -> dict[str, list[str]]:
        """Telemetry keys by lever, in the order the events list them."""
        by_lever: dict[str, list[str]] = {}
        for row in self.epochs[:1]:
            for key in row.fields:
                lever, _, _ = key.partition(".")
                by_lever.setdefault(lever, []).append(key)
        return by_lever

    def fates(self) -> dict[str, int]:
        """How many seeds ended in each stage (from the summary, else the events)."""
        seeds = (self.summary or {}).get("seeds")
        final: dict[str, str] = {}
        if isinstance(seeds, list):
            final = {str(s.get("seed_id")): str(s.get("final_stage")) for s in seeds if isinstance(s, dict)}
            final = {k: "CULLED" if v == "EMBARGOED" else v for k, v in final.items()}
        else:
            for c in self.changes:
                final[c.seed_id] = "CULLED" if c.new == "EMBARGOED" else c.new
        counts: dict[str, int] = {}
        for stage in final.values():
            counts[stage] = counts.get(stage, 0) + 1
        return counts


def _epoch_row(e: Mapping[str, Any]) -> EpochRow:
    fields = {k: tuple(_num(v) for v in vals) for k, vals in e.items() if "." in k and isinstance(vals, list)}
    params = e.get("params")
    return EpochRow(
        epoch=int(e.get("epoch") or 0),
        train_loss=_num(e.get("train_loss")),
        train_accuracy=_num(e.get("train_accuracy")),
        val_loss=_num(e.get("val_loss")),
        val_accuracy=_num(e.get("val_accuracy")),
        params=int(params) if isinstance(params, int) else None,
        stages=tuple(str(s) for s in e.get("stages") or ()),
        fields=fields,
    )


def _last_started(events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    # A resumed run appends: the last run.started carries the config it resumed with
    # (a training run trained further has a larger episode count than its first start).
    return next((e for e in reversed(events) if e.get("event") == "run.started"), {})


def run_data(path: Path, events: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> RunData:
    started = _last_started(events)
    epochs: dict[int, EpochRow] = {}
    for e in events:
        if e.get("event") == "epoch.completed":
            row = _epoch_row(e)
            epochs[row.epoch] = row
    changes = stage_changes(events)
    released = tuple(
        (float(int(e.get("epoch") or 0) + (0 if e.get("old") == "FOSSILIZED" else 1)), int(e.get("slot", 0)))
        for e in events
        if e.get("event") == "slot.released"
    )
    config = dict(started.get("config") or {})
    rows = tuple(epochs[k] for k in sorted(epochs))
    n_slots = max([len(r.stages) for r in rows] + [int((config.get("env") or {}).get("slots") or 0)] + [0])
    return RunData(
        path=path,
        run_id=str(started.get("run_id") or (summary or {}).get("run_id") or path.name),
        config=config,
        levers=tuple(started.get("levers") or ()),
        failed_levers=tuple(started.get("failed_levers") or ()),
        epochs=rows,
        changes=tuple(changes),
        released=released,
        summary=summary,
        n_slots=n_slots,
    )


# -- a training run -----------------------------------------------------------
