"""``esper run`` end to end: outputs, resume equals uninterrupted, CLI errors, compile safety, tasks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import LeverDists

from esper_kernel.cli import main
from esper_kernel.commands.outdir import CHECKPOINT, EVENTS, SUMMARY
from esper_kernel.commands.run import check_compile_safety, make_policy, run
from esper_kernel.compose.discovery import Selection, installed_entry_points
from esper_kernel.episode.env import EnvConfig, build_registry, observation_names
from esper_kernel.infra.checkpoint import load
from esper_kernel.infra.errors import PluginError
from esper_kernel.infra.telemetry import read_events
from esper_kernel.settings.config import RunConfig, with_overrides

TINY_TOML = """
[env]
train_size = 128
val_size = 64
"""


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("esper: error: ")
    return lines[0]


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML, encoding="utf-8")
    return path


# -- the command -------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["heuristic", "random"])
def test_cli_run_writes_events_summary_and_checkpoint(tmp_path: Path, tiny_toml: Path, policy: str) -> None:
    out = tmp_path / "out"
    result = esper("run", "--epochs", "4", "--out", str(out), "--config", str(tiny_toml), "--policy", policy)
    assert result.exit_code == 0, result.output
    assert "esper run: done" in result.stderr and "val accuracy" in result.stderr

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["epochs"] == 4
    assert 0.0 <= summary["final_val_accuracy"] <= 1.0
    assert summary["config"]["policy"] == policy and summary["config"]["env"]["train_size"] == 128
    installed = sorted(ep.name for ep in installed_entry_points())
    assert [lv["name"] for lv in summary["levers"]] == installed

    events = read_events(out / EVENTS)
    assert events[0]["event"] == "run.started" and events[-1]["event"] == "run.finished"
    assert [e["epoch"] for e in events if e["event"] == "epoch.completed"] == [0, 1, 2, 3]

    state = load(out / CHECKPOINT)
    assert state["env"]["epoch"] == 4
    assert state["run_id"] == summary["run_id"] == events[0]["run_id"]


def test_cli_run_drives_with_a_policy_trained_by_esper_train(tmp_path: Path, tiny_toml: Path) -> None:
    trained = tmp_path / "ppo"
    result = esper(
        "train",
        "--episodes",
        "2",
        "--envs",
        "2",
        "--epochs",
        "3",
        "--train-size",
        "64",
        "--val-size",
        "32",
        "--out",
        str(trained),
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    # The run's env must match what the policy saw: the same slots, task and levers (epochs may differ).
    result = esper(
        "run", "--epochs", "3", "--out", str(out), "--config", str(tiny_toml), "--policy", str(trained / "policy.pt")
    )
    assert result.exit_code == 0, result.output
    decisions = [e for e in read_events(out / EVENTS) if e["event"] == "decision"]
    assert len(decisions) == 3


def test_cli_run_refuses_a_policy_trained_with_other_levers(tmp_path: Path, tiny_toml: Path) -> None:
    trained = tmp_path / "ppo"
    result = esper(
        "train",
        "--episodes",
        "1",
        "--envs",
        "1",
        "--epochs",
        "2",
        "--train-size",
        "64",
        "--val-size",
        "32",
        "--levers",
        "tempo",
        "--out",
        str(trained),
    )
    assert result.exit_code == 0, result.output
    result = esper(
        "run",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--config",
        str(tiny_toml),
        "--levers",
        "dwell",
        "--policy",
        str(trained / "policy.pt"),
    )
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert "tempo" in line and "dwell" in line


def test_cli_unknown_lever_exits_2_listing_installed_levers(tmp_path: Path) -> None:
    line = _one_line_error(esper("run", "--levers", "tempo,nope", "--out", str(tmp_path / "o"), "--quiet"))
    assert "'nope'" in line
    for name in (ep.name for ep in installed_entry_points()):
        assert name in line
    assert not (tmp_path / "o" / SUMMARY).exists()


def test_cli_resume_of_nothing_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(esper("run", "--resume", str(tmp_path / "none"), "--quiet"))
    assert "no checkpoint at" in line


# -- compile safety ---------------------------------------------------------------------

BREAKS_GRAPH = """
from esper_kernel import CompileSafety, Safety, hookimpl

@hookimpl
def compile_safety():
    return CompileSafety(Safety.BREAKS_GRAPH, "reads .item() inside forward")
"""

UNDECLARED = """
from esper_kernel import HeadSpec, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name="quiet_head", choices=("a", "b"), values=(1, 2), default="a", ops={"germinate"})
"""


def test_compile_refuses_graph_breaking_lever_naming_it_and_its_reason(
    lever_dist: LeverDists, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lever_dist("breaker", BREAKS_GRAPH, dist="acme-breaker", version="1.2")
    reg = build_registry(RunConfig().env, Selection(only=("breaker", "tempo")))

    with pytest.raises(PluginError) as info:
        check_compile_safety(reg, allow_graph_breaks=False)
    msg = str(info.value)
    assert "'breaker'" in msg and "acme-breaker" in msg and "reads .item() inside forward" in msg
    assert "tempo" not in msg  # the safe lever is not blamed
    assert "--allow-graph-breaks" in msg
    check_compile_safety(reg, allow_graph_breaks=True)  # allowed: no error

    # Through the CLI it is refused before anything compiles.
    monkeypatch.setenv("ESPER_LEVERS", "breaker,tempo")
    line = _one_line_error(esper("run", "--compile", "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet"))
    assert "breaker" in line and "reads .item() inside forward" in line


def test_lever_without_compile_declaration_counts_as_breaking(lever_dist: LeverDists) -> None:
    lever_dist("quiet", UNDECLARED)
    reg = build_registry(RunConfig().env, Selection(only=("quiet",)))
    with pytest.raises(PluginError, match=r"'quiet'.*does not implement compile_safety"):
        check_compile_safety(reg, allow_graph_breaks=False)


def test_builtin_levers_pass_the_compile_check() -> None:
    check_compile_safety(build_registry(RunConfig().env, Selection()), allow_graph_breaks=False)


# -- resume equals uninterrupted --------------------------------------------------------


def _cfg(out: Path, policy: str, epochs: int) -> RunConfig:
    return with_overrides(
        RunConfig(),
        out=str(out),
        policy=policy,
        env__epochs=epochs,
        env__train_size=128,
        env__val_size=64,
        checkpoint_every=1,  # a checkpoint at the stop: the resume starts exactly there
    )


def _host(out: Path) -> dict[str, torch.Tensor]:
    host: dict[str, torch.Tensor] = load(out / CHECKPOINT)["env"]["lifecycle"]["host"]
    return host


_SAME = ("epochs", "final_val_accuracy", "best_val_accuracy", "return", "params", "seeds", "run_id")


@pytest.mark.parametrize(("policy", "epochs", "stop"), [("heuristic", 12, 7), ("random", 8, 3)])
def test_resume_gives_the_uninterrupted_result(tmp_path: Path, policy: str, epochs: int, stop: int) -> None:
    whole = run(_cfg(tmp_path / "whole", policy, epochs))
    assert whole["seeds"], "the run should grow seeds, or resuming them is not tested"

    part = tmp_path / "part"
    assert run(_cfg(part, policy, epochs), stop_after=stop) == {"interrupted_at": stop}
    assert not (part / SUMMARY).exists()
    assert load(part / CHECKPOINT)["env"]["epoch"] == stop
    resumed = run(_cfg(tmp_path / "ignored", policy, epochs), resume=part)

    for key in _SAME[:-1]:
        assert resumed[key] == whole[key], key
    a, b = _host(tmp_path / "whole"), _host(part)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # One run: the resumed part appends to the same stream under the same run id.
    events = read_events(part / EVENTS)
    assert {e["run_id"] for e in events} == {resumed["run_id"]}
    assert [e["epoch"] for e in events if e["event"] == "epoch.completed"] == list(range(epochs))
    starts = [e for e in events if e["event"] == "run.started"]
    assert [s["resumed_from_epoch"] for s in starts] == [None, stop]
    assert not (tmp_path / "ignored").exists()


# -- tasks through the CLI ---------------------------------------------------------------


def _cifar_batch(path: Path, n: int, seed: int) -> None:
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3 * 32 * 32), generator=g, dtype=torch.uint8)
    payload: dict[bytes, Any] = {
        b"batch_label": b"test",
        b"labels": torch.randint(0, 10, (n,), generator=g).tolist(),
        b"data": np.asarray(images.numpy(), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(n)],
    }
    with path.open("wb") as fh:
        pickle.dump(payload, fh, protocol=2)


def test_cli_cifar10_from_local_pickles(tmp_path: Path) -> None:
    data = tmp_path / "cifar-10-batches-py"
    data.mkdir()
    _cifar_batch(data / "data_batch_1", 24, 1)
    _cifar_batch(data / "test_batch", 12, 2)
    out = tmp_path / "out"
    result = esper(
        "run", "--task", "cifar10", "--data-dir", str(tmp_path), "--epochs", "2", "--out", str(out), "--quiet"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["epochs"] == 2 and summary["config"]["env"]["task"] == "cifar10"
    # 12 validation images: accuracy is a multiple of 1/12.
    assert round(summary["final_val_accuracy"] * 12, 6) == round(summary["final_val_accuracy"] * 12)


def test_cli_text_task_from_a_utf8_file(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("Grüße aus Köln — naïve café, 東京 → 🙂. " * 60, encoding="utf-8")
    out = tmp_path / "out"
    result = esper("run", "--task", "text", "--data-dir", str(text), "--epochs", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["epochs"] == 2 and summary["config"]["env"]["task"] == "text"
    assert summary["config"]["env"]["data_dir"] == str(text)


def test_cli_data_task_without_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    line = _one_line_error(esper("run", "--task", "cifar10", "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet"))
    assert "cifar10" in line and "--data-dir is required" in line


def test_cli_unknown_task_is_a_clear_error(tmp_path: Path) -> None:
    line = _one_line_error(esper("run", "--task", "mnist", "--out", str(tmp_path / "o"), "--quiet"))
    assert "'mnist'" in line and "shapes" in line


def test_cli_pretrained_policy_for_a_task_without_one_is_one_line(tmp_path: Path) -> None:
    result = esper("run", "--task", "shapes", "--policy", "pretrained", "--out", str(tmp_path / "out"))
    line = _one_line_error(result)
    assert "no pretrained policy ships for task 'shapes'" in line and "pairs" in line
    assert not (tmp_path / "out").exists()


def test_cli_pretrained_policy_drives_the_default_task(tmp_path: Path, tiny_toml: Path) -> None:
    # The shipped policy is package data; a fresh install must find it and run it on its own task.
    out = tmp_path / "out"
    result = esper("run", "--policy", "pretrained", "--epochs", "4", "--config", str(tiny_toml), "--out", str(out))
    assert result.exit_code == 0, result.output
    decisions = [e for e in read_events(out / EVENTS) if e["event"] == "decision"]
    assert len(decisions) == 4
    assert json.loads((out / SUMMARY).read_text())["config"]["policy"] == "pretrained"


def test_a_policy_runs_the_episode_length_it_was_trained_on_unless_told(tmp_path: Path, tiny_toml: Path) -> None:
    from esper_kernel.tamiyo.ppo import PPOPolicy, save_policy, trained_on

    reg = build_registry(EnvConfig(), Selection())
    stamp = trained_on(EnvConfig(epochs=3))
    path = save_policy(PPOPolicy.for_registry(reg, observation_names(reg, 3), trained_on=stamp), tmp_path / "p.pt")

    def decisions(*args: str) -> int:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = esper("run", "--policy", f"greedy:{path}", "--out", str(out), *args)
        assert result.exit_code == 0, result.output
        n = sum(e["event"] == "decision" for e in read_events(out / EVENTS))
        # The user is told when the policy, not a flag or the file, chose the length.
        assert ("the episode length" in result.stderr) == ("--epochs" not in args and "five" not in args[1])
        return n

    assert decisions("--config", str(tiny_toml)) == 3
    assert decisions("--config", str(tiny_toml), "--epochs", "2") == 2
    chosen = tmp_path / "five.toml"
    chosen.write_text(TINY_TOML + "epochs = 5\n", encoding="utf-8")
    assert decisions("--config", str(chosen)) == 5


def test_cli_greedy_pretrained_plays_the_most_probable_choices(tmp_path: Path, tiny_toml: Path) -> None:
    out = tmp_path / "out"
    args = ("--epochs", "4", "--config", str(tiny_toml), "--out", str(out))
    result = esper("run", "--policy", "greedy:pretrained", *args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / SUMMARY).read_text())["config"]["policy"] == "greedy:pretrained"
    reg = build_registry(EnvConfig(), Selection())
    policy = make_policy("greedy:pretrained", reg, len(observation_names(reg, EnvConfig().slots)), 0, EnvConfig())
    assert getattr(policy, "greedy", False) is True
    line = _one_line_error(esper("run", "--policy", "greedy:heuristic", "--out", str(tmp_path / "h")))
    assert "greedy: applies to a policy file or pretrained" in line


def test_progress_shows_the_seeds_a_slot_fossilized() -> None:
    from types import SimpleNamespace

    from esper_kernel.commands.run import _stages
    from esper_kernel.compose.stages import Stage

    def seed(slot: int, stage: Stage) -> SimpleNamespace:
        return SimpleNamespace(slot=slot, stage=stage)

    history = [seed(0, Stage.FOSSILIZED), seed(0, Stage.FOSSILIZED), seed(1, Stage.CULLED), seed(2, Stage.FOSSILIZED)]
    lifecycle = SimpleNamespace(stages=[Stage.DORMANT, Stage.DORMANT, Stage.BLENDING], history=history)
    # Every slot is dormant or live again after a fossilization; the display still says what grew.
    assert _stages(SimpleNamespace(lifecycle=lifecycle)) == (  # type: ignore[arg-type]
        "DORMANT (2 fossilized)",
        "DORMANT",
        "BLENDING (1 fossilized)",
    )
