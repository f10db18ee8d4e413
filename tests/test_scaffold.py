"""`esper levers new`: the generated lever is discovered through its entry point and passes its contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from esper_kernel.commands.scaffold import scaffold
from esper_kernel.infra.errors import EsperError


def _esper() -> list[str]:
    script = Path(sys.executable).with_name("esper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "esper_kernel.cli"]


def _install_metadata(root: Path, site: Path) -> None:
    """What `pip install -e` would leave: a dist-info whose entry points come from the generated pyproject."""
    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    eps = meta["entry-points"]["esper.levers"]
    (info / "entry_points.txt").write_text("[esper.levers]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))


def test_scaffolded_lever_is_listed_and_passes_its_contract(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_esper(), "levers", "new", "warmup", "--dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    root = tmp_path / "esper-lever-warmup"
    assert {p.name for p in root.iterdir()} >= {"pyproject.toml", "README.md", "esper_lever_warmup.py", "tests"}
    site = tmp_path / "site"
    _install_metadata(root, site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    listed = subprocess.run(
        [*_esper(), "levers", "list", "--json", "--levers", "warmup"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    (lever,) = json.loads(listed.stdout)["levers"]
    assert (lever["name"], lever["distribution"]) == ("warmup", "esper-lever-warmup")
    assert lever["compile_safety"]["level"] == "none"
    assert set(lever["hooks"]) == {"action_head", "mask", "on_enter_stage", "telemetry_fields", "compile_safety"}

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(root / "tests")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "10 passed" in tests.stdout, tests.stdout


def test_scaffold_refuses_bad_names_and_existing_directories(tmp_path: Path) -> None:
    for bad in ("Warmup", "my-lever", "class", "op", "1st"):
        with pytest.raises(EsperError, match="lowercase Python identifier"):
            scaffold(bad, tmp_path)
    scaffold("ok", tmp_path)
    with pytest.raises(EsperError, match="already exists"):
        scaffold("ok", tmp_path)
