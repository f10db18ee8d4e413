"""The state-conditioned choice tables and their episodes-permutation test, on streams whose answer is known."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from esper_kernel.report.reacts import (
    Episode,
    chi2,
    episode,
    events_episodes,
    journal_episodes,
    markdown,
    reaction_tables,
)

EPOCHS = 12


def _states(rng: random.Random) -> list[dict[str, Any]]:
    """A random plateau counter per epoch (its own episode's), no seed ended."""
    return [{"plateau": rng.choice([0, 0, 1, 2, 3]), "fates": [None, None, None]} for _ in range(EPOCHS)]


def reacting(n: int, seed: int) -> list[Episode]:
    """Germinates exactly when on a plateau (2+ epochs without a new best): a controller that reacts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        states = _states(rng)
        decisions = [
            {"epoch": t, "op": "germinate", "slot": 0, "blueprint": "conv"}
            for t, s in enumerate(states)
            if s["plateau"] >= 2
        ]
        out.append(episode(i, decisions, states))
    return out


def recipe(n: int, seed: int, noise: float = 0.0) -> list[Episode]:
    """The same epochs every episode (a recipe), whatever the plateau; ``noise``: each step skipped at random."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        states = _states(rng)
        decisions = [
            {"epoch": t, "op": "germinate", "slot": 0, "blueprint": "conv"}
            for t in (0, 1, 4, 7, 10)
            if rng.random() >= noise
        ]
        out.append(episode(i, decisions, states))
    return out


def by_title(eps: list[Episode], perms: int = 999) -> dict[str, Any]:
    return {t.title: t for t in reaction_tables(eps, perms=perms)}


def test_the_table_counts_each_decision_under_its_own_state() -> None:
    # Two episodes, written out: the counts are known by hand.
    fates = [None, None, None]
    a = episode(
        0,
        [{"epoch": 0, "op": "germinate", "slot": 1, "blueprint": "conv"}, {"epoch": 3, "op": "cull", "slot": 1}],
        [{"plateau": 0, "fates": fates}, {"plateau": 1, "fates": fates}, {"plateau": 2, "fates": fates},
         {"plateau": 3, "fates": fates}],
    )  # fmt: skip
    culled = [None, "culled", None]
    b = episode(
        1,
        [{"epoch": 2, "op": "germinate", "slot": 1, "blueprint": "attention"}],
        [{"plateau": 0, "fates": fates}, {"plateau": 0, "fates": culled}, {"plateau": 2, "fates": culled},
         {"plateau": 0, "fates": culled}],
    )  # fmt: skip
    tables = by_title([a, b])
    op = tables["op by plateau"]
    assert op.choices == ("wait", "germinate", "cull")
    # improving: a@0 germinate, a@1 wait, b@0 wait, b@1 wait, b@3 wait; plateau: a@2 wait, a@3 cull, b@2 germinate
    assert dict(op.rows) == {"improving": (4, 1, 0), "plateau (2+ epochs, no new best)": (1, 1, 1)}
    bp = tables["blueprint germinated by the last fate in its slot"]
    assert bp.choices == ("attention", "conv")
    assert dict(bp.rows) == {"slot never used": (0, 1), "slot's last seed culled": (1, 0)}
    thirds = tables["op by epoch third"]
    assert thirds.p_value is None and "not testable" in thirds.note
    # 4 epochs: thirds at 3t//4, so epochs 0-1 early, 2 middle, 3 late
    assert dict(thirds.rows) == {"early": (3, 1, 0), "middle": (1, 1, 0), "late": (1, 0, 1)}
    text = markdown("P", list(tables.values()))
    assert "| improving | 5 | 4 (80%) | 1 (20%) | 0 (0%) |" in text


def test_the_permutation_rejects_a_reacting_stream() -> None:
    op = by_title(reacting(20, seed=1))["op by plateau"]
    assert op.p_value is not None and op.p_value < 0.01


def test_the_permutation_does_not_reject_a_recipe() -> None:
    # Deterministic recipe: every pairing gives the same table's choices; noisy recipe: choices vary, not by state.
    assert by_title(recipe(20, seed=2))["op by plateau"].p_value > 0.05
    ps = [by_title(recipe(20, seed=s, noise=0.3), perms=199)["op by plateau"].p_value for s in range(30)]
    # Under the null the p-value is (about) uniform: about 5% of streams below 0.05, never most of them.
    assert sum(p < 0.05 for p in ps) <= 4, ps


def test_a_recipe_confounded_with_the_epoch_is_not_taken_for_a_reaction() -> None:
    # Plateaus come late in every episode, and the recipe culls late: op and plateau are associated across
    # decisions (a chi-square over decisions rejects), but every pairing of episodes shows the same association.
    rng = random.Random(4)
    eps = []
    for i in range(20):
        states = [{"plateau": int(rng.random() < t / EPOCHS) * 3, "fates": [None] * 3} for t in range(EPOCHS)]
        steps = [{"epoch": 0, "op": "germinate", "slot": 0, "blueprint": "conv"}]
        steps += [{"epoch": t, "op": "cull", "slot": 0} for t in (9, 10, 11)]
        eps.append(episode(i, steps, states))
    op = by_title(eps)["op by plateau"]
    table = np.array([counts for _, counts in op.rows], dtype=float)
    assert float(chi2(table)) > 9.21  # the 1% point of chi-square with 2 degrees of freedom
    assert op.p_value is not None and op.p_value > 0.05


def test_tables_come_from_an_eval_journal(tmp_path: Path) -> None:
    journal = tmp_path / "episodes.jsonl"
    lines = [{"schema": "esper.eval/1", "env": {"task": "pairs"}, "levers": None}]
    for ep in reacting(4, seed=5):
        result = {"seed": ep.seed, "decisions": [{**d, "epoch": t} for t, d in enumerate(ep.decisions)
                                                  if d["op"] != "wait"], "states": list(ep.states)}  # fmt: skip
        lines.append({"policy": "greedy:p.pt", "seed": ep.seed, "width": None, "result": result})
    lines.append({"policy": "wait", "seed": 0, "width": None, "result": {"seed": 0, "states": list(ep.states)}})
    journal.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    found = journal_episodes(journal)
    assert list(found) == ["greedy:p.pt"]  # wait decides nothing: no table
    assert found["greedy:p.pt"][0].task == "pairs"
    assert [e.decisions for e in found["greedy:p.pt"]] == [e.decisions for e in reacting(4, seed=5)]


def test_esper_report_on_an_eval_shows_the_tables(tmp_path: Path) -> None:
    from esper_kernel.commands import evaldoc
    from esper_kernel.commands.evaluate import evaluate, parse_policy
    from esper_kernel.episode.env import EnvConfig
    from esper_kernel.report.html import write_report

    env = EnvConfig(epochs=5, train_size=64, val_size=32, batch_size=32)
    out = tmp_path / "eval"
    specs = [parse_policy("random"), parse_policy("wait")]
    doc = evaluate(env, specs, (0, 1, 2), journal=out / "episodes.jsonl")
    evaldoc.write_outputs(doc, out)
    report = write_report(out)
    assert "reacts" in report.sections
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "What drives its choices" in page and "op by plateau" in page
    text = (out / "emergence.md").read_text(encoding="utf-8")
    assert "# Choices conditioned on state" in text and "## random" in text and "## wait" not in text
    # Every epoch of every episode is counted once in the op tables.
    (op,) = [
        t for t in reaction_tables(journal_episodes(out / "episodes.jsonl")["random"]) if t.title == "op by plateau"
    ]
    assert sum(sum(c) for _, c in op.rows) == 3 * 5


@pytest.mark.parametrize("policy", ["random", "heuristic"])
def test_states_read_back_from_a_run_are_the_ones_eval_records(tmp_path: Path, policy: str) -> None:
    # esper run and esper eval play the same episode for one policy and seed; the states rebuilt from the
    # run's events stream (what a training report reads) must be the ones eval recorded as it played.
    from esper_kernel.cli import main
    from esper_kernel.commands.evaluate import evaluate, parse_policy
    from esper_kernel.episode.env import EnvConfig
    from esper_kernel.infra.telemetry import read_events

    toml = tmp_path / "tiny.toml"
    toml.write_text("[env]\nepochs = 10\ntrain_size = 128\nval_size = 64\n", encoding="utf-8")
    main(["run", "--config", str(toml), "--policy", policy, "--seed", "3", "--out", str(tmp_path / "run"),
          "--quiet"], standalone_mode=False)  # fmt: skip
    (ran,) = events_episodes(read_events(tmp_path / "run" / "events.jsonl"), slots=3, epochs=10)
    env = EnvConfig(epochs=10, train_size=128, val_size=64)
    evaluate(env, [parse_policy(policy)], (3,), reference=policy, journal=tmp_path / "episodes.jsonl")
    (played,) = journal_episodes(tmp_path / "episodes.jsonl")[policy]
    assert ran.decisions == played.decisions and ran.states == played.states
    assert ran.task == "pairs"
    # The stream held what the test is for: a plateau and a slot whose seed ended.
    assert max(s["plateau"] for s in ran.states) >= 2 and any(f for s in ran.states for f in s["fates"])


def test_an_episode_replayed_after_a_resume_starts_over_and_one_cut_short_is_left_out() -> None:
    def epoch(ep: int, t: int, acc: float, op: str = "WAIT") -> list[dict[str, Any]]:
        choices = {"op": op.lower(), "slot": "s1", "blueprint": "conv"}
        relevant = {"op": True, "slot": op != "WAIT", "blueprint": op == "GERMINATE"}
        return [{"event": "decision", "episode": ep, "epoch": t, "op": op, "choices": choices, "relevant": relevant},
                {"event": "epoch.completed", "episode": ep, "epoch": t, "val_accuracy": acc}]  # fmt: skip

    cull = {"event": "seed.stage_changed", "episode": 0, "epoch": 1, "slot": 1, "old": "TRAINING", "new": "CULLED"}
    events = [
        {"event": "run.started", "config": {"env": {"task": "shapes"}}},
        *epoch(0, 0, 0.9),  # killed here: the resumed run plays episode 0 again from epoch 0
        *epoch(0, 0, 0.5, "GERMINATE"), *epoch(0, 1, 0.5, "CULL"), cull, *epoch(0, 2, 0.5),
        *epoch(1, 0, 0.2), *epoch(1, 1, 0.3),  # cut short: two of three epochs
    ]  # fmt: skip
    (ep,) = events_episodes(events, slots=3, epochs=3)
    assert ep.seed == 0 and ep.task == "shapes"
    assert [d["op"] for d in ep.decisions] == ["germinate", "cull", "wait"]
    assert ep.decisions[0] == {"epoch": 0, "op": "germinate", "slot": 1, "blueprint": "conv"}
    assert [s["plateau"] for s in ep.states] == [0, 0, 1]
    assert [s["fates"] for s in ep.states] == [[None, None, None], [None, None, None], [None, "culled", None]]


def test_esper_report_on_a_training_run_shows_the_tables_of_its_last_third(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from esper_kernel.cli import main

    out = tmp_path / "train"
    args = ["train", "--episodes", "6", "--envs", "2", "--group-size", "2", "--epochs", "5", "--train-size", "64",
            "--val-size", "32", "--out", str(out)]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "reacts" in result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "What drives its choices" in page and "last third of training" in page
    text = (out / "emergence.md").read_text(encoding="utf-8")
    assert "# Choices conditioned on state" in text and "## training, last third\n\n2 episodes on `pairs`" in text
    # Training's episodes 4 and 5, every epoch of each counted once in the op tables.
    from esper_kernel.report.outcomes import TrainData, load

    data = load(out)
    assert isinstance(data, TrainData)
    assert [e.seed for e in data.episodes] == [4, 5] and all(len(e.states) == 5 for e in data.episodes)
    (op,) = [t for t in reaction_tables(data.episodes) if t.title == "op by plateau"]
    assert sum(sum(c) for _, c in op.rows) == 2 * 5
