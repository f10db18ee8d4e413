"""One atomic-write helper: every artifact gets the user's usual file mode, and a failed write keeps the old file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from esper_kernel.infra.checkpoint import FORMAT, load, save_atomic
from esper_kernel.infra.files import write_atomic, write_text_atomic


def _plain_mode(tmp_path: Path) -> int:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    return plain.stat().st_mode & 0o777


def test_checkpoint_and_summary_have_the_mode_of_any_file_the_user_writes(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoint.pt"
    save_atomic({"format": FORMAT, "x": 1}, ckpt)
    summary = write_text_atomic(tmp_path / "run" / "summary.json", "{}\n")
    assert load(ckpt)["x"] == 1
    assert summary.read_text() == "{}\n"
    assert {ckpt.stat().st_mode & 0o777, summary.stat().st_mode & 0o777} == {_plain_mode(tmp_path)}


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    path = write_text_atomic(tmp_path / "summary.json", "old\n")

    def boom(f: BinaryIO) -> None:
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, boom)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
