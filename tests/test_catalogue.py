"""The policy catalogue: one grammar and one builder, so run, eval and sweep accept the same specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from esper_kernel.cli import main
from esper_kernel.commands.evaluate import evaluate
from esper_kernel.commands.outdir import SUMMARY
from esper_kernel.episode.env import EnvConfig
from esper_kernel.infra.errors import EsperError
from esper_kernel.tamiyo import catalogue
from esper_kernel.tamiyo.catalogue import KINDS, PolicyKind, PolicySpec, parse_policy, register
from esper_kernel.tamiyo.policies import WaitPolicy

TINY = EnvConfig(epochs=4, train_size=48, val_size=24, batch_size=16)
TINY_TOML = "[env]\ntrain_size = 48\nval_size = 24\nbatch_size = 16\n"


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML, encoding="utf-8")
    return path


def _run(tmp_path: Path, tiny_toml: Path, policy: str) -> dict[str, object]:
    out = tmp_path / policy.replace(":", "_").replace("+", "_").replace("=", "_")
    result = esper("run", "--epochs", "4", "--config", str(tiny_toml), "--out", str(out), "--policy", policy, "--quiet")
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads((out / SUMMARY).read_text())
    return summary


def test_run_plays_wait_and_never_grows(tmp_path: Path, tiny_toml: Path) -> None:
    summary = _run(tmp_path, tiny_toml, "wait")
    assert summary["seeds"] == [] and summary["params"] == summary["base_params"]


@pytest.mark.parametrize("policy", ["random+tempo=FAST", "heuristic+dwell=MINIMAL", "static:3000"])
def test_run_accepts_what_eval_accepts(tmp_path: Path, tiny_toml: Path, policy: str) -> None:
    summary = _run(tmp_path, tiny_toml, policy)
    assert summary["epochs"] == 4
    if policy.startswith("static"):
        # The host was widened to about 3,000 parameters and never grew.
        assert summary["seeds"] == [] and 3000 <= int(summary["params"]) < 3600  # type: ignore[call-overload]


def test_run_says_what_a_bare_static_needs(tmp_path: Path) -> None:
    result = esper("run", "--policy", "static", "--out", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert "static:N" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("greedy:wait", "greedy: applies to a policy file or pretrained"),
        ("greedy:", "name a policy file or pretrained after greedy:"),
        ("heuristic+tempo", "expected HEAD=CHOICE"),
        ("static+tempo=FAST", "nothing can be forced"),
    ],
)
def test_one_grammar_for_every_command(spec: str, why: str) -> None:
    for flag in ("--policy", "--policies"):
        with pytest.raises(EsperError, match=why):
            parse_policy(spec, flag=flag)


def test_an_unknown_name_is_one_line_naming_the_kinds(tmp_path: Path) -> None:
    result = esper("run", "--policy", "heuristc", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "'heuristc'" in line and "heuristic" in line and "wait" in line


def test_a_new_kind_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "KINDS", dict(KINDS))
    built: list[int] = []

    def build(_arg: str, _spec: PolicySpec, ctx: catalogue.BuildContext) -> WaitPolicy:
        built.append(ctx.seed)
        return WaitPolicy()

    register(PolicyKind("idle", "waits, for this test", build))
    doc = evaluate(TINY, [PolicySpec("wait"), parse_policy("idle")], [0, 1])
    idle = doc["policies"][1]
    assert idle["name"] == "idle" and idle["vs_reference"]["final_val_accuracy"]["mean"] == 0.0
    assert built == [0, 1]  # built once per episode, with that episode's seed
    with pytest.raises(ValueError, match="twice"):
        register(PolicyKind("idle", "again", build))
