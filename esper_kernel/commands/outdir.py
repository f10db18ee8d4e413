"""A run's output directory: refused when it cannot be written or already holds a run, fresh by default, resumable.

``esper run`` without ``--out`` writes a fresh ``runs/<time>-<id>`` and points
``runs/latest`` at it (``esper train``, ``eval``, ``sweep`` and ``frontier`` a
``runs/<time>-<command>-<id>``, through :func:`claim_out`); a resumed run cuts its event stream back to what its
checkpoint saw, so no epoch is recorded twice.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from esper_kernel.infra import checkpoint
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import LATEST as LATEST

CHECKPOINT = "checkpoint.pt"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
#: The files that make a directory hold a run.
RUN_FILES = (EVENTS, SUMMARY, CHECKPOINT)


def check_out(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output directory that cannot be written, or that holds a run, before touching it.

    Nothing is created or changed here; the nearest existing ancestor is probed
    with a temporary file because permission bits do not tell the truth for
    root or for read-only mounts.
    """
    for parent in (out, *out.parents):
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise EsperError(f"{flag} {out}: {parent} is a file, not a directory")
        try:
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as exc:
            raise EsperError(f"{flag} {out}: cannot write in {parent} ({exc.strerror or exc})") from None
        break
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not overwrite:
        raise EsperError(
            f"{flag} {out} already holds a run ({', '.join(held)}); pass --overwrite to replace it, "
            f"--resume {out} to continue it, or choose another {flag}"
        )


def fresh_out(out: Path, latest: str = LATEST, command: str = "") -> Path:
    """Where a command given ``--out out`` writes: for the default (``runs/latest``), a new
    ``runs/<time>-<id>`` (``runs/<time>-<command>-<id>`` when ``command`` is given).

    ``runs/latest`` itself becomes a link to it (:func:`point_latest`) once the
    run starts. A ``runs/latest`` that is a real directory (an older layout) is
    used as it is.
    """
    link = Path(latest)
    if out != link or (out.exists() and not out.is_symlink()):
        return out
    kind = f"{command}-" if command else ""
    return link.parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}{uuid.uuid4().hex[:6]}"


def claim_out(out: str | Path, command: str) -> Path:
    """The directory ``esper COMMAND --out out`` writes, created, with ``runs/latest`` pointing at it
    when it is the default's fresh one: commands run one after another without ``--out`` never collide."""
    path = fresh_out(Path(out), command=command)
    path.mkdir(parents=True, exist_ok=True)
    point_latest(path)
    return path


def point_latest(out: Path, latest: str = LATEST) -> None:
    """Point ``runs/latest`` at ``out`` (atomically), if ``out`` is a fresh run directory beside it."""
    link = Path(latest)
    if out == link or out.parent != link.parent or (link.exists() and not link.is_symlink()):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    os.replace(tmp, link)


def _prepare_out(out: Path, state: dict[str, Any] | None) -> int:
    """Make ``out`` ready to write; returns how many superseded events a resume dropped.

    A fresh run (validated, so ``--overwrite`` was given if a run was here)
    removes the old run's files so no stale summary sits beside new events. A
    resumed run cuts ``events.jsonl`` back to what the checkpoint had seen, so
    epochs run again after the checkpoint are not listed twice.
    """
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.remove_stale_temps(out)
    if state is None:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        point_latest(out)
        return 0
    size = state.get("events_bytes")
    if not isinstance(size, int):
        return 0
    return truncate_events(out / EVENTS, size)


def truncate_events(path: Path, size: int) -> int:
    """Cut the events after byte ``size`` (the checkpoint's), atomically; returns how many were dropped.

    The run's own ``run.*`` events after the checkpoint (an interruption, a
    failure) are kept: they are history, not epochs that will be run again. A
    torn last line (a kill mid-write) is dropped with the rest.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    if len(data) <= size:
        return 0
    kept, dropped = [data[:size]], 0
    for line in data[size:].splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            event = json.loads(line).get("event", "")
        except (ValueError, AttributeError):
            event = ""
        if isinstance(event, str) and event.startswith("run.") and line.endswith(b"\n"):
            kept.append(line)
        else:
            dropped += 1
    checkpoint.write_atomic(b"".join(kept), path)
    return dropped
