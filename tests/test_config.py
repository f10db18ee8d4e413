"""Run configuration: TOML files, the errors a user sees for a bad one, and CLI overrides."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from esper_kernel.cli import main
from esper_kernel.episode.env import EnvConfig
from esper_kernel.settings.config import (
    ConfigError,
    RunConfig,
    load_config,
    structure_config,
    unstructure_config,
    with_overrides,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_toml_sets_every_value_and_round_trips(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
policy = "random"
levers = ["tempo", "dwell"]
seed = 7
out = "runs/x"
allow_graph_breaks = true
checkpoint_every = 2

[env]
task = "sequences"
epochs = 9
slots = 2
host_lr = 0.05
param_rent = 0
""",
    )
    cfg = load_config(path)
    assert cfg.policy == "random" and cfg.levers == ("tempo", "dwell") and cfg.seed == 7
    assert cfg.out == "runs/x" and cfg.allow_graph_breaks is True and cfg.checkpoint_every == 2
    assert cfg.env.task == "sequences" and cfg.env.epochs == 9 and cfg.env.slots == 2
    assert cfg.env.host_lr == 0.05
    # An int where a float is expected is fine in TOML (0 for 0.0)
    assert cfg.env.param_rent == 0.0 and isinstance(cfg.env.param_rent, float)
    # Unset keys keep their defaults.
    assert cfg.env.batch_size == EnvConfig().batch_size
    assert structure_config(unstructure_config(cfg)) == cfg


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == RunConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[env]\nepoch = 5\n", "env.epoch: unknown key"),
        ("sed = 3\n", "sed: unknown key"),
        ('[env]\nepochs = "ten"\n', "env.epochs: expected int, got str 'ten'"),
        ('[env]\nhost_lr = "fast"\n', "env.host_lr: expected float"),
        ("[env]\ncompile = 1\n", "env.compile: expected bool"),
        ('levers = "tempo"\n', "levers: expected a list of names"),
        ('levers = ["tempo", 3]\n', "expected str, got int 3"),
    ],
)
def test_bad_values_name_the_key_path_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert expected in msg
    assert str(path) in msg


def test_bad_toml_syntax_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[env\nepochs = 3\n", name="broken.toml")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*not valid TOML.*line 1"):
        load_config(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml")


def test_overrides_apply_only_given_values() -> None:
    base = RunConfig(seed=3, env=EnvConfig(epochs=7, slots=2))
    cfg = with_overrides(base, seed=None, policy="random", env__epochs=4, env__slots=None)
    assert (cfg.seed, cfg.policy, cfg.env.epochs, cfg.env.slots) == (3, "random", 4, 2)
    with pytest.raises(ConfigError, match=r"command line.*env\.epochs: expected int"):
        with_overrides(base, env__epochs="4")


@pytest.mark.parametrize("body", ["[env\n", "[env]\nepoch = 3\n", '[env]\nepochs = "ten"\n'])
def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path, body: str) -> None:
    path = _write(tmp_path, body, name="bad.toml")
    result = CliRunner().invoke(main, ["run", "--config", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error:") and "bad.toml" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_flags_override_file_values(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
seed = 5
policy = "random"
out = "ignored-by-flag"

[env]
epochs = 6
train_size = 64
val_size = 32
""",
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", "--config", str(path), "--epochs", "2", "--policy", "heuristic", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2
    cfg = summary["config"]
    assert cfg["policy"] == "heuristic" and cfg["env"]["epochs"] == 2 and cfg["out"] == str(out)
    # Values the flags do not touch come from the file.
    assert cfg["seed"] == 5 and cfg["env"]["train_size"] == 64 and cfg["env"]["val_size"] == 32


# -- docs/config.md ----------------------------------------------------------------


def _doc() -> str:
    return DOCS.read_text(encoding="utf-8")


def test_docs_example_config_parses() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", _doc(), flags=re.S)
    assert blocks, "docs/config.md has no ```toml example"
    for block in blocks:
        cfg = structure_config(tomllib.loads(block), where="docs/config.md")
        assert isinstance(cfg, RunConfig)


def _toml_repr(value: object) -> str:
    """How the docs table shows a default: as it would be written in TOML, or "unset" for None."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def test_docs_name_every_key_with_its_default() -> None:
    doc = _doc()
    for cls, prefix in ((RunConfig, ""), (EnvConfig, "env.")):
        defaults = cls()
        for field in attrs.fields(cls):
            if field.name == "env":
                continue
            key = f"{prefix}{field.name}"
            row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{key}`")), None)
            assert row is not None, f"{key} has no row in docs/config.md"
            shown = f"`{_toml_repr(getattr(defaults, field.name))}`"
            assert shown in row, f"{key}: default {shown} not in: {row}"


# -- the README's config files ------------------------------------------------------


def test_every_config_file_the_readme_names_exists_and_parses_as_its_commands_config() -> None:
    """`esper run --config F` / `esper train --config F` in the README name files a fresh clone has."""
    import shlex

    from esper_kernel.settings.config import TrainConfig, structure_as

    root = DOCS.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    uses = []
    for line in readme.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part.split("#")[0]) if part.strip().startswith("esper ") else []
            if "--config" in words:
                uses.append((words[1], words[words.index("--config") + 1]))
    assert ("train", "examples/train.toml") in uses and ("run", "examples/run.toml") in uses, uses
    for command, name in uses:
        path = root / name
        assert path.is_file(), f"README: esper {command} --config {name}: no such file"
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        cls = TrainConfig if command == "train" else RunConfig
        structure_as(data, cls, where=name)  # raises a one-line error on any bad key or value
    assert not re.search(r"--config (run|train)\.toml", readme)
