"""Atomic checkpoints, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python data only, so loading it
never runs code from the file. It is written to a temporary file in the same
directory, flushed to disk and renamed over the old one: a process killed
mid-write leaves the previous checkpoint intact, never a torn file.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.files import TEMP_SUFFIX as TEMP_SUFFIX
from esper_kernel.infra.files import write_atomic as _write_atomic

FORMAT = "esper.checkpoint/1"


class CheckpointError(EsperError):
    """A checkpoint that is missing, unreadable, or does not fit this run."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` so that ``path`` is always a whole file."""
    _write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always a whole file (old or new)."""
    _write_atomic(path, lambda f: f.write(data))


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
    return read_state(path, FORMAT, CheckpointError, missing=f"no checkpoint at {path}", what="checkpoint")


def unreadable(path: Path, exc: BaseException) -> str:
    """Why torch could not read ``path``, in words a user can act on.

    A torch file is a zip archive whose directory is written last, so a file
    cut short by a full disk or a copy, or a file of another kind, is not one:
    say that rather than torch's internal error (``OSError: [Errno 22]``).
    """
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        if not zipfile.is_zipfile(path):
            return "not a complete torch file (it is truncated, or another kind of file)"
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    text = " ".join(str(exc).split())
    # torch's weights_only refusal is paragraphs long; what matters is which object was refused.
    refused = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if refused is not None:
        return f"{type(exc).__name__}: a weights_only load refused an object ({refused.group(0)})"
    return f"{type(exc).__name__}: {text.split('. ')[0]}"


def read_state(path: Path, fmt: str, error: type[Exception], *, missing: str, what: str) -> dict[str, Any]:
    """A dict saved by torch with ``format == fmt``, tensors and plain data only; else ``error``."""
    if not path.exists():
        raise error(missing)
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise error(f"cannot read {what} {path}: {unreadable(path, exc)}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not an Esper {what} (format {fmt})")
    return data
