"""The one way the kernel writes an artifact: atomically, with the user's usual file mode.

The bytes go to a temporary file in the same directory, are flushed to disk
and renamed over ``path``: a process killed mid-write leaves the previous file
intact, never a torn one. The temporary file is created with ``open``, not
``mkstemp``, so the result has the mode any file the user writes has (the
umask applies); mkstemp's 0600 would survive the rename.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_SUFFIX", "write_atomic", "write_text_atomic"]

#: Suffix of the temporary files atomic writes rename into place (a killed write may leave one).
TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file, then rename it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        with tmp.open("xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
