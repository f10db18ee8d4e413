"""Atomic checkpoint files, safe loading, and resuming against the active levers."""

from __future__ import annotations

import importlib
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import LeverDists

from esper_kernel.commands.outdir import CHECKPOINT
from esper_kernel.commands.run import run
from esper_kernel.infra.checkpoint import FORMAT, CheckpointError, load, save_atomic
from esper_kernel.settings.config import RunConfig, with_overrides


class Smuggled:
    """Not a tensor, not plain data: weights_only loading must refuse to build it."""

    def __init__(self) -> None:
        self.payload = "would run code"


def _ckpt(step: int) -> dict[str, Any]:
    return {"format": FORMAT, "step": step, "weights": torch.arange(4.0) * step}


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.pt"
    save_atomic(_ckpt(3), path)
    got = load(path)
    assert got["step"] == 3 and torch.equal(got["weights"], torch.arange(4.0) * 3)
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_failed_write_leaves_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.pt"
    save_atomic(_ckpt(1), path)
    before = path.read_bytes()
    real_save = torch.save

    def torn_save(obj: Any, f: io.BufferedWriter, *args: Any, **kwargs: Any) -> None:
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:100])  # half a file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic(_ckpt(2), path)

    assert path.read_bytes() == before
    assert load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_interrupt_during_write_also_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_atomic(_ckpt(1), path)

    def interrupted(obj: Any, f: io.BufferedWriter, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(_ckpt(2), path)
    assert load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "obj": Smuggled()}, path)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*evil\.pt") as info:
        load(path)
    assert "Smuggled" in str(info.value) or "weights_only" in str(info.value)


def test_non_esper_files_are_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*notes\.txt"):
        load(text)

    other = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match=r"model\.pt is not an Esper checkpoint"):
        load(other)

    bare = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError, match="not an Esper checkpoint"):
        load(bare)

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load(tmp_path / "missing.pt")


# -- resuming against the levers that are active ------------------------------------


def _tiny(out: Path, **kw: Any) -> RunConfig:
    return with_overrides(RunConfig(), out=str(out), env__epochs=3, env__train_size=64, env__val_size=32, **kw)


def test_resume_without_a_lever_the_checkpoint_needs_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_LEVERS", "tempo,dwell")
    assert run(_tiny(tmp_path), stop_after=1) == {"interrupted_at": 1}
    assert sorted(load(tmp_path / CHECKPOINT)["levers"]) == ["dwell", "tempo"]

    monkeypatch.setenv("ESPER_LEVERS", "tempo")
    with pytest.raises(CheckpointError) as info:
        run(_tiny(tmp_path), resume=tmp_path)
    msg = str(info.value)
    assert "'dwell'" in msg and "esper-kernel" in msg and str(tmp_path) in msg
    assert "'tempo'" not in msg


def test_resume_with_an_extra_lever_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_LEVERS", "tempo")
    run(_tiny(tmp_path), stop_after=1)
    monkeypatch.setenv("ESPER_LEVERS", "tempo,dwell")
    with pytest.raises(CheckpointError, match="'dwell' are active but were not"):
        run(_tiny(tmp_path), resume=tmp_path)


def test_resume_of_a_directory_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        run(_tiny(tmp_path), resume=tmp_path / "nothing")


EXTRA_LEVER = """
from esper_kernel import CompileSafety, HeadSpec, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name="extra_head", choices=("a", "b"), values=(1, 2), default="a", ops={"germinate"})

@hookimpl
def compile_safety():
    return CompileSafety("none")
"""


def test_resume_after_uninstalling_a_named_lever_names_it(tmp_path: Path, lever_dist: LeverDists) -> None:
    lever = lever_dist("extra", EXTRA_LEVER, dist="acme-extra", version="0.3")
    out = tmp_path / "run"
    run(_tiny(out, levers=("tempo", "extra")), stop_after=1)
    # pip uninstall: the distribution's metadata is gone.
    for info in lever.site.glob("*.dist-info"):
        shutil.rmtree(info)
    importlib.invalidate_caches()
    with pytest.raises(CheckpointError) as exc:
        run(_tiny(out), resume=out)
    msg = str(exc.value)
    assert "'extra'" in msg and "acme-extra" in msg and "0.3" in msg
