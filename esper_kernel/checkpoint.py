"""Atomic checkpoints, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python data only, so loading it
never runs code from the file. It is written to a temporary file in the same
directory, flushed to disk and renamed over the old one: a process killed
mid-write leaves the previous checkpoint intact, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from esper_kernel.errors import EsperError

FORMAT = "esper.checkpoint/1"
#: Suffix of the temporary files atomic writes rename into place.
TEMP_SUFFIX = ".tmp"


class CheckpointError(EsperError):
    """A checkpoint that is missing, unreadable, or does not fit this run."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is always a whole file."""
    _replace_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always a whole file (old or new)."""
    _replace_atomic(path, lambda f: f.write(data))


def _replace_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files a killed write left in ``directory``; returns what was removed.

    ``kill -9`` during a write skips the cleanup in :func:`save_atomic`; the
    temporary file is never the real one, so removing it loses nothing.
    """
    removed = []
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an Esper checkpoint (format {FORMAT})")
    return data
