"""Each setting declared once: every command's flags, the TOML keys, the resume refusals and the docs agree."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from esper_kernel.cli import main
from esper_kernel.settings.config import SETTINGS_OF, command_settings, docs_blocks, with_overrides
from esper_kernel.settings.declare import COMMANDS, fields_of, sync_blocks

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _options(command: str) -> dict[str, click.Option]:
    cmd = main.commands[command]
    return {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}


def test_docs_config_tables_are_the_declarations() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert sync_blocks(text, docs_blocks()) == text, "run: python -m esper_kernel.settings.config docs/config.md"


def test_every_setting_is_documented_with_help_and_its_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for root, _owners in SETTINGS_OF.values():
        for f in fields_of(root):
            assert f.setting.help.strip(), f.key
            assert f"`{f.key}`" in text, f"{f.key} is not in docs/config.md"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_an_option_for_each_of_its_settings(command: str) -> None:
    opts = _options(command)
    for f in command_settings(command):
        assert f.setting.flag in opts, f"esper {command} lacks {f.setting.flag}"
        assert opts[f.setting.flag].name == f.param


def test_a_flag_is_spelled_typed_and_explained_the_same_in_every_command() -> None:
    seen: dict[tuple[type, str], tuple[str, object, str, str | None]] = {}
    for command in COMMANDS:
        opts = _options(command)
        for f in command_settings(command):
            opt = opts[f.setting.flag or ""]
            shape = (f.key, type(opt.type), opt.help or "", opt.metavar)
            if (f.owner, f.key) in seen:
                assert seen[f.owner, f.key] == shape, f"{f.setting.flag} differs in esper {command}"
            seen[f.owner, f.key] = shape


def test_the_shared_episode_settings_are_flags_of_all_four_commands() -> None:
    for command in COMMANDS:
        opts = _options(command)
        for flag in ("--train-size", "--val-size", "--epochs", "--task", "--data-dir", "--batch-size", "--device"):
            assert flag in opts, f"esper {command} lacks {flag}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_sets_the_config_key_it_names(command: str) -> None:
    root, _ = SETTINGS_OF[command]
    base = root()
    for f in command_settings(command):
        value = f.default
        if value is None:
            continue
        changed = with_overrides(base, **{f.param: value})
        got = changed
        for part in f.key.split("."):
            got = getattr(got, part)
        assert got == value, f.key


def test_a_range_is_the_same_refusal_from_every_command(tmp_path: Path) -> None:
    for command in COMMANDS:
        result = CliRunner().invoke(main, [command, "--train-size", "0", "--out", str(tmp_path / command)])
        assert result.exit_code == 2, (command, result.output)
        line = result.stderr.strip().splitlines()[-1]
        assert "env.train_size (--train-size): must be between 1 and 200000, got 0" in line, (command, line)
        assert not (tmp_path / command).exists()


def test_resume_refuses_every_setting_that_would_change_the_run(tmp_path: Path) -> None:
    for args, flag in ((["--train-size", "64"], "--train-size"), (["--host-lr", "0.1"], "--host-lr")):
        result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path / "nope"), *args])
        assert result.exit_code == 2
        assert flag in result.stderr and "--resume" in result.stderr, result.stderr
