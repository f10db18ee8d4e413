"""esper eval: pairing, forced heads and their fallbacks, the static control, the output schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from esper_kernel.cli import main
from esper_kernel.commands.evaldoc import render_markdown, write_outputs
from esper_kernel.commands.evaluate import (
    EVAL_SCHEMA,
    EvalJob,
    PolicySpec,
    evaluate,
    parse_policy,
    parse_seeds,
    play_episode,
    static_width,
)
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.stages import Op
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.telemetry import null_log
from esper_kernel.tamiyo.catalogue import host_params
from esper_kernel.tamiyo.policies import ForcedPolicy, RandomPolicy

TINY = EnvConfig(epochs=4, train_size=48, val_size=24, batch_size=16)
TINY_DATA = {"epochs": 4, "train_size": 48, "val_size": 24, "batch_size": 16}


def test_two_evals_of_the_same_policy_and_seed_are_identical() -> None:
    from esper_kernel.settings.config import converter

    job = EvalJob(converter.unstructure(TINY), PolicySpec("random"), seed=3, levers=None)
    a, b = play_episode(job), play_episode(job)
    # Times are not outcomes: the wall clock and the seconds spent in hooks differ between two plays.
    assert attrs.evolve(a, wall_seconds=0, hook_seconds={}) == attrs.evolve(b, wall_seconds=0, hook_seconds={})
    other = play_episode(attrs.evolve(job, seed=4))
    assert other.final_val_accuracy != a.final_val_accuracy or other.params != a.params


def test_policies_on_one_seed_share_data_init_and_batch_order() -> None:
    # wait and a heuristic that never gets to germinate make identical decisions, so pairing
    # means identical outcomes: any difference would come from the seed's randomness leaking.
    doc = evaluate(TINY, [PolicySpec("wait"), PolicySpec("heuristic")], [0, 1], reference="wait")
    wait, heur = doc["policies"]
    assert [r["final_val_accuracy"] for r in wait["per_seed"]] == [r["final_val_accuracy"] for r in heur["per_seed"]]
    assert heur["vs_reference"]["final_val_accuracy"] == {"mean": 0.0, "se": 0.0, "ci95": [0.0, 0.0], "n": 2}


def _env_at(epoch: int, config: EnvConfig) -> EnvBatch:
    reg = build_registry(config, Selection.from_env())
    env = MorphoEnv(config, reg, load_task(config, 0), null_log())
    batch = EnvBatch([env])
    batch.reset([0])
    env.epoch = epoch
    return batch


def test_forced_choice_is_taken_where_legal() -> None:
    envs = _env_at(0, EnvConfig(epochs=40, train_size=16, val_size=8))
    policy = ForcedPolicy(RandomPolicy(0), {"tempo": "SLOW", "lr": "CAUTIOUS"})
    space = envs.registry.space
    for _ in range(40):
        s = policy.act(envs.observe(), envs.masks(), envs)
        if int(s.actions[0, space.op_index]) == Op.GERMINATE:
            assert int(s.actions[0, space.names.index("tempo")]) == space.choice_index("tempo", "SLOW")
            assert int(s.actions[0, space.names.index("lr")]) == space.choice_index("lr", "CAUTIOUS")
            break
    else:
        pytest.fail("random never germinated in 40 draws")
    assert policy.fallbacks == 0


def test_illegal_forced_choice_falls_back_to_the_nearest_legal_one_and_is_counted() -> None:
    # Two epochs before the end no long ramp can finish: GLACIAL is masked out.
    config = EnvConfig(epochs=40, train_size=16, val_size=8)
    envs = _env_at(38, config)
    space = envs.registry.space
    tempo = space.names.index("tempo")
    policy = ForcedPolicy(RandomPolicy(0), {"tempo": "GLACIAL"})
    germinated = 0
    for _ in range(60):
        masks = envs.masks()
        s = policy.act(envs.observe(), masks, envs)
        if int(s.actions[0, space.op_index]) != Op.GERMINATE:
            continue
        germinated += 1
        legal = masks[0, Op.GERMINATE, tempo].nonzero().flatten().tolist()
        assert space.choice_index("tempo", "GLACIAL") not in legal
        assert int(s.actions[0, tempo]) == max(legal)  # nearest to the last choice
    assert germinated > 0 and policy.fallbacks == germinated


def test_unknown_forced_head_or_choice_is_a_one_line_error() -> None:
    with pytest.raises(EsperError, match="no head 'tmepo'"):
        evaluate(TINY, [PolicySpec("wait"), parse_policy("heuristic+tmepo=FAST")], [0])
    with pytest.raises(EsperError, match="head 'tempo' has no choice 'SLOWEST'"):
        evaluate(TINY, [PolicySpec("wait"), parse_policy("heuristic+tempo=SLOWEST")], [0])


def test_policy_and_seed_parsing() -> None:
    assert parse_policy("heuristic+tempo=GLACIAL", [("lr", "CAUTIOUS")]).forced == (
        ("tempo", "GLACIAL"),
        ("lr", "CAUTIOUS"),
    )
    assert parse_policy("wait", [("lr", "CAUTIOUS")]).forced == ()
    assert parse_policy("static:5000") == PolicySpec("wait", static=True, static_params=5000)
    assert parse_seeds("0-3,7,2") == (0, 1, 2, 3, 7)
    for bad in ("heuristic+tempo", "static:x", "static+tempo=FAST", "+x"):
        with pytest.raises(EsperError):
            parse_policy(bad)
    with pytest.raises(EsperError, match="not a seed"):
        parse_seeds("a-b")


def test_static_control_widens_the_host_to_the_grown_parameter_count() -> None:
    config = EnvConfig()
    base = static_width(config, 10, 1)
    wide = static_width(config, 10, 5000)
    assert wide > base
    doc = evaluate(TINY, [PolicySpec("wait"), parse_policy("static:5000")], [0])
    static = doc["policies"][1]
    assert static["per_seed"][0]["params"] >= 5000
    assert static["per_seed"][0]["params"] == static["per_seed"][0]["mean_params"]  # it never grows


def test_static_width_is_the_smallest_width_that_reaches_the_count() -> None:
    config = EnvConfig()
    shape = HostShape(10)
    for params in (1, 600, 5000, 123_456):
        width = static_width(config, 10, params)
        assert host_params(config, shape, width) >= params
        assert width == 1 or host_params(config, shape, width - 1) < params


@pytest.mark.parametrize(
    ("policy", "says"),
    [("static:50000000", "at its widest (width 1024)"), ("static:3000000", "GiB to train")],
)
def test_a_static_host_too_big_to_train_is_refused_before_any_episode(tmp_path: Path, policy: str, says: str) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "esper_kernel.cli", "eval", "--policies", f"wait,{policy}", "--seeds", "0",
         "--epochs", "1", "--workers", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"esper: error: --policies '{policy}'") and says in line, line
    assert not out.exists()


def test_eval_document_schema_and_files(tmp_path: Path) -> None:
    doc = evaluate(TINY, [PolicySpec("wait"), PolicySpec("random")], [0, 1], reference="wait")
    assert doc["schema"] == EVAL_SCHEMA and doc["seeds"] == [0, 1] and doc["reference"] == "wait"
    row = doc["policies"][1]
    assert set(row) >= {"name", "policy", "forced", "per_seed", "mean", "se", "vs_reference", "fallbacks", "legal"}
    assert set(row["per_seed"][0]) >= {"seed", "final_val_accuracy", "params", "mean_params", "return", "fallbacks"}
    diff = row["vs_reference"]["final_val_accuracy"]
    accs = [r["final_val_accuracy"] for r in row["per_seed"]]
    ref = [r["final_val_accuracy"] for r in doc["policies"][0]["per_seed"]]
    assert diff["mean"] == pytest.approx(sum(a - b for a, b in zip(accs, ref, strict=True)) / 2)
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1] and diff["n"] == 2
    json_path, md_path = write_outputs(doc, tmp_path / "ev")[:2]
    assert json.loads(json_path.read_text())["policies"][1]["name"] == "random"
    assert "| random |" in md_path.read_text() and md_path.read_text() == render_markdown(doc)


def test_esper_eval_command_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "--policies", "wait,heuristic+lr=CAUTIOUS", "--seeds", "0", "--epochs", "3", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)], env={"ESPER_LEVERS": "lr"})
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "eval.json").read_text())
    assert [p["name"] for p in doc["policies"]] == ["wait", "heuristic+lr=CAUTIOUS"]
    assert "heuristic+lr=CAUTIOUS" in result.output


def test_esper_eval_effects_adds_each_levers_extremes_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "--effects", "--policies", "wait", "--seeds", "0", "--epochs", "3", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)], env={"ESPER_LEVERS": "lr"})
    assert result.exit_code == 0, result.output
    names = [p["name"] for p in json.loads((out / "eval.json").read_text())["policies"]]
    assert names == ["wait", "heuristic", "heuristic+lr=CAUTIOUS", "heuristic+lr=AGGRESSIVE"]
    assert "| lr (AGGRESSIVE vs CAUTIOUS) |" in (out / "effects.md").read_text()


def test_lever_effect_table_pairs_extremes_and_reports_legality() -> None:
    from esper_kernel.commands.evaldoc import lever_effects, render_effects

    specs = [parse_policy(p) for p in ("heuristic", "heuristic+lr=CAUTIOUS", "heuristic+lr=AGGRESSIVE")]
    doc = evaluate(TINY, specs, [0, 1], reference="heuristic")
    (row,) = lever_effects(doc)
    accs = {p["name"]: [r["final_val_accuracy"] for r in p["per_seed"]] for p in doc["policies"]}
    expected = sum(a - b for a, b in zip(accs["heuristic+lr=AGGRESSIVE"], accs["heuristic+lr=CAUTIOUS"], strict=True))
    assert row["head"] == "lr" and row["last_vs_first"]["mean"] == pytest.approx(expected / 2)
    assert set(row["choice_legal_share"]) == {"CAUTIOUS", "STANDARD", "AGGRESSIVE"}
    assert "| lr (AGGRESSIVE vs CAUTIOUS) |" in render_effects(doc)
    with pytest.raises(EsperError, match="unforced 'heuristic'"):
        lever_effects({**doc, "policies": doc["policies"][1:]})


def test_an_interrupted_eval_keeps_its_episodes_and_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import esper_kernel.commands.evaluate as ev

    journal = tmp_path / "episodes.jsonl"
    specs = [PolicySpec("wait"), PolicySpec("random")]
    full = evaluate(TINY, specs, [0, 1], journal=journal)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 4
    # A kill after three episodes, mid-write of the fourth.
    journal.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    played: list[tuple[str, int]] = []
    real = ev.play_episode

    def counting(job: EvalJob) -> ev.EpisodeResult:
        played.append((job.policy.name, job.seed))
        return real(job)

    monkeypatch.setattr(ev, "play_episode", counting)
    again = evaluate(TINY, specs, [0, 1], journal=journal)
    assert played == [("random", 1)]

    def outcomes(doc: dict[str, object]) -> list[list[float]]:
        rows = doc["policies"]
        assert isinstance(rows, list)
        return [[r[m] for r in p["per_seed"] for m in ("final_val_accuracy", "params", "return")] for p in rows]

    assert outcomes(again) == outcomes(full)
    with pytest.raises(EsperError, match="another configuration"):
        evaluate(attrs.evolve(TINY, epochs=3), specs, [0], journal=journal)


def test_greedy_prefix_names_its_own_row_and_is_refused_where_it_means_nothing() -> None:
    spec = parse_policy("greedy:runs/p.pt+tempo=FAST")
    assert spec.greedy and spec.policy == "runs/p.pt" and spec.name == "greedy:runs/p.pt+tempo=FAST"
    assert parse_policy("runs/p.pt").name == "runs/p.pt"
    with pytest.raises(EsperError, match="greedy: applies to a policy file"):
        parse_policy("greedy:heuristic")


def test_a_greedy_policy_file_repeats_itself_in_its_own_row(tmp_path: Path) -> None:
    from esper_kernel.episode.env import build_registry, observation_names
    from esper_kernel.tamiyo.ppo import PPOPolicy, save_policy

    reg = build_registry(TINY)
    policy = PPOPolicy.for_registry(reg, observation_names(reg, TINY.slots), seed=1)
    path = str(save_policy(policy, tmp_path / "p.pt"))
    specs = [parse_policy(f"greedy:{path}"), parse_policy(path)]
    first = evaluate(TINY, specs, [0, 1], reference=f"greedy:{path}")
    again = evaluate(TINY, specs, [0, 1], reference=f"greedy:{path}")

    def outcomes(doc: dict[str, Any]) -> list[list[tuple[float, float, int]]]:
        return [[(r["final_val_accuracy"], r["return"], r["params"]) for r in p["per_seed"]] for p in doc["policies"]]

    assert outcomes(first) == outcomes(again)
    assert [p["name"] for p in first["policies"]] == [f"greedy:{path}", path]


def test_esper_eval_attribution_holds_each_lever_at_its_default_and_writes_the_table(tmp_path: Path) -> None:
    from esper_kernel.episode.env import build_registry, observation_names
    from esper_kernel.tamiyo.ppo import PPOPolicy, save_policy

    env = {"ESPER_LEVERS": "lr,tempo"}
    reg = build_registry(TINY, Selection.from_env(levers=("lr", "tempo")))
    path = str(save_policy(PPOPolicy.for_registry(reg, observation_names(reg, 3), seed=2), tmp_path / "p.pt"))
    out = tmp_path / "ev"
    args = ["eval", "--attribution", f"greedy:{path}", "--policies", "wait", "--seeds", "0,1", "--epochs", "3"]
    result = CliRunner().invoke(main, [*args, "--workers", "1", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "eval.json").read_text())
    names = [p["name"] for p in doc["policies"]]
    assert names == ["wait", f"greedy:{path}", f"greedy:{path}+lr=STANDARD", f"greedy:{path}+tempo=STANDARD"]
    table = (out / "attribution.md").read_text()
    assert "| lr (STANDARD) |" in table and "| tempo (STANDARD) |" in table
    rows = {p["name"]: p for p in doc["policies"]}
    free = [r["return"] for r in rows[f"greedy:{path}"]["per_seed"]]
    held = [r["return"] for r in rows[f"greedy:{path}+lr=STANDARD"]["per_seed"]]
    from esper_kernel.commands.evaldoc import lever_attribution

    lr = next(a for a in lever_attribution(doc, f"greedy:{path}") if a["head"] == "lr")
    assert lr["return"]["mean"] == pytest.approx(sum(a - b for a, b in zip(free, held, strict=True)) / 2)


def test_the_journal_keeps_every_germinate_decision_with_what_was_legal(tmp_path: Path) -> None:
    journal = tmp_path / "episodes.jsonl"
    evaluate(TINY, [PolicySpec("random")], [0, 1, 2], reference="random", journal=journal)
    results = [json.loads(line)["result"] for line in journal.read_text().splitlines()[1:]]
    assert sum(r["germinate_decisions"] for r in results) > 0
    for r in results:
        assert len(r["germinate"]) == r["germinate_decisions"]
        for rec in r["germinate"]:
            assert all(rec["choices"][head] in legal for head, legal in rec["legal"].items())
