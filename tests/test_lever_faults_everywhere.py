"""One runtime fault policy in ``esper run``, ``train``, ``eval`` and ``sweep``, in this process or a worker's.

A lever that fails at run time stops the command (one line naming it), or,
under ``--on-lever-error quarantine``, is quarantined for the rest of that
episode: reported as ``lever.quarantined`` in the stream and in the summary
(``train_summary.json``, ``eval.json``), with its distribution, hook and
episode, wherever the episode ran. Hook time and ``--compile``'s counts are
summarised the same way as ``esper run``'s.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CliRunner, LeverDists
from test_reliability_plugins import GIRTH_LIARS, HEAD

from esper_kernel.infra.telemetry import read_events

#: A mask that fails from the second decision of every episode on: each episode must quarantine it anew.
BRITTLE = HEAD.format(head="speed") + (
    "\n@hookimpl\ndef mask(view):\n"
    "    if int(view.epoch.max()) >= 1:\n"
    "        raise RuntimeError('brittle past epoch 0')\n"
    "    return None\n"
)
TINY = ["--epochs", "3", "--train-size", "32", "--val-size", "16", "--batch-size", "16", "--width", "4"]


def _train(run_esper: CliRunner, out: Path, workers: int, *extra: str) -> Any:
    args = ["train", "--episodes", "4", "--envs", "2", "--hidden", "8", "--eval-every", "2", "--eval-seeds", "0"]
    return run_esper(*args, *TINY, "--levers", "brittle,tempo", "--workers", str(workers), "--out", str(out), *extra)


def test_train_quarantines_per_episode_in_workers_too_and_reports_each(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path
) -> None:
    lever_dist("brittle", BRITTLE, dist="acme-brittle")
    stopped = _train(run_esper, tmp_path / "stop", 2)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "'brittle' (acme-brittle)" in stopped.stderr and "mask() raised RuntimeError" in stopped.stderr
    assert read_events(tmp_path / "stop" / "events.jsonl")[-1]["event"] == "run.failed"

    summaries = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        done = _train(run_esper, out, workers, "--on-lever-error", "quarantine")
        assert done.returncode == 0, done.stderr
        assert "quarantined lever 'brittle' (acme-brittle)" in done.stderr
        summary = json.loads((out / "train_summary.json").read_text())
        # Each of the four training episodes and the held-out one after the last update (episode -1).
        where = sorted((q["episode"], q["env"]) for q in summary["quarantined"])
        assert where == [(-1, 0), (0, 0), (1, 1), (2, 0), (3, 1)]
        assert {(q["lever"], q["distribution"], q["hook"], q["epoch"]) for q in summary["quarantined"]} == {
            ("brittle", "acme-brittle", "mask", 1)
        }
        events = read_events(out / "events.jsonl")
        quarantined = [e for e in events if e["event"] == "lever.quarantined"]
        assert len(quarantined) == 5 and all(e["distribution"] == "acme-brittle" for e in quarantined)
        finished = events[-1]
        assert finished["event"] == "run.finished" and finished["quarantined"] == summary["quarantined"]
        # Hook time as esper run records it: brittle's masks were called (epoch 0 of each episode).
        assert summary["hook_seconds"]["brittle"]["mask"] > 0 and "tempo" in summary["hook_seconds"]
        summaries[workers] = summary
    # A quarantine is its episode's: where the envs ran changes no number.
    assert summaries[1]["episode_returns"] == summaries[2]["episode_returns"]


def _eval(run_esper: CliRunner, out: Path, workers: int, *extra: str) -> Any:
    args = ["eval", "--policies", "random,wait", "--seeds", "0,1", *TINY, "--levers", "brittle,tempo"]
    return run_esper(*args, "--workers", str(workers), "--out", str(out), *extra)


def test_eval_quarantines_per_episode_in_workers_too_and_the_document_lists_each(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path
) -> None:
    lever_dist("brittle", BRITTLE, dist="acme-brittle")
    stopped = _eval(run_esper, tmp_path / "stop", 2)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "'brittle' (acme-brittle)" in stopped.stderr

    docs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        done = _eval(run_esper, out, workers, "--on-lever-error", "quarantine")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("quarantined lever 'brittle' (acme-brittle) at epoch 1: mask failed") == 4
        doc = json.loads((out / "eval.json").read_text())
        for row in doc["policies"]:
            assert [(q["seed"], q["lever"], q["distribution"], q["hook"]) for q in row["quarantined"]] == [
                (0, "brittle", "acme-brittle", "mask"),
                (1, "brittle", "acme-brittle", "mask"),
            ]
            assert row["hook_seconds"]["brittle"]["mask"] > 0
            for seed in row["per_seed"]:
                assert all(isinstance(a, float) and a == a for a in seed["val_accuracy_curve"])  # never a NaN
        assert "**4 lever quarantine(s)**" in (out / "eval.md").read_text()
        docs[workers] = [[s["val_accuracy_curve"] for s in row["per_seed"]] for row in doc["policies"]]
    assert docs[1] == docs[2]


def test_sweep_takes_the_same_fault_policy_and_lists_each_quarantine(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path
) -> None:
    lever_dist("brittle", BRITTLE, dist="acme-brittle")
    args = ["sweep", "--lever-set", "brittle,tempo", "--policies", "random", "--seeds", "0,1", *TINY, "--workers", "1"]
    stopped = run_esper(*args, "--out", str(tmp_path / "stop"))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "'brittle' (acme-brittle)" in stopped.stderr

    out = tmp_path / "q"
    done = run_esper(*args, "--out", str(out), "--on-lever-error", "quarantine")
    assert done.returncode == 0, done.stderr
    # random and the set's wait control, two seeds each.
    assert done.stderr.count("quarantined lever 'brittle' (acme-brittle) at epoch 1: mask failed") == 4
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["on_lever_error"] == "quarantine"
    for row in doc["policies"]:
        assert [(q["seed"], q["lever"]) for q in row["quarantined"]] == [(0, "brittle"), (1, "brittle")]
    trial = json.loads(next((out / "trials").glob("*random*/seed-0/trial.json")).read_text())
    assert [q["lever"] for q in trial["quarantined"]] == ["brittle"]
    assert "**4 lever quarantine(s)**" in (out / "sweep.md").read_text()


def test_a_resumed_run_keeps_the_quarantines_of_its_episode(lever_dist: LeverDists, tmp_path: Path) -> None:
    from esper_kernel.commands.run import run
    from esper_kernel.settings.config import RunConfig, with_overrides

    lever_dist("brittle", BRITTLE, dist="acme-brittle")

    def config(out: Path) -> RunConfig:
        return with_overrides(
            RunConfig(),
            out=str(out),
            levers=("brittle", "tempo"),
            policy="random",
            on_lever_error="quarantine",
            checkpoint_every=1,  # a checkpoint after the quarantine: the resume starts past it
            env__epochs=4,
            env__train_size=32,
            env__val_size=16,
            env__batch_size=16,
            env__width=4,
        )

    whole = run(config(tmp_path / "whole"))
    assert run(config(tmp_path / "cut"), stop_after=2) == {"interrupted_at": 2}
    resumed = run(config(tmp_path / "cut"), resume=tmp_path / "cut")
    # Quarantined at epoch 1, before the interruption: still out after it, not quarantined a second time.
    assert [(q["lever"], q["epoch"]) for q in resumed["quarantined"]] == [("brittle", 1)]
    assert resumed["quarantined"] == whole["quarantined"]
    assert (resumed["final_val_accuracy"], resumed["return"]) == (whole["final_val_accuracy"], whole["return"])
    events = read_events(tmp_path / "cut" / "events.jsonl")
    assert len([e for e in events if e["event"] == "lever.quarantined"]) == 1


def test_compile_statistics_and_contradictions_reach_train_and_eval(
    lever_dist: LeverDists, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attrs

    from esper_kernel.commands.evaluate import EvalJob, play_episode
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.episode.env import EnvConfig, build_registry
    from esper_kernel.infra.telemetry import null_log
    from esper_kernel.settings.config import converter
    from esper_kernel.tamiyo.catalogue import parse_policy
    from esper_kernel.tamiyo.train import PPOConfig, TrainOptions, train_ppo

    # Dynamo traces and guards as under --compile; the eager backend skips only inductor's code generation.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    lever_dist("girth", GIRTH_LIARS["declared"], dist="acme-liar")
    env = EnvConfig(epochs=1, train_size=32, val_size=16, batch_size=16, width=4, compile=True)
    plan = tmp_path / "wide.toml"
    plan.write_text('[[step]]\nepoch = 0\nop = "germinate"\nslot = 0\nblueprint = "conv_small"\ngirth = "wide"\n')
    job = EvalJob(converter.unstructure(env), parse_policy(f"schedule:{plan}"), 0, ("girth", "tempo"))
    played = play_episode(job)
    assert played.compile is not None and played.compile["graphs"] > 0
    assert played.compile["contradicted"] == ["girth"]

    reg = build_registry(env, Selection(only=("girth", "tempo")))
    cfg = PPOConfig(episodes=2, n_envs=2, hidden=8, update_epochs=1, minibatch_size=2)
    summary = train_ppo(env, reg, cfg, null_log(), tmp_path / "p.pt", options=TrainOptions(workers=1))
    assert summary.compile is not None and summary.compile["graphs"] > 0
    assert "tempo" in summary.hook_seconds and attrs.asdict(summary)["compile"] == summary.compile
