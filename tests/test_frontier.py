"""esper frontier: the esper.frontier/1 document, its static family, and the from-scratch control."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from esper_kernel.commands.frontier import FRONTIER_SCHEMA, frontier, write_outputs
from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.grow.blueprints import build_seed, param_count
from esper_kernel.grow.flops import forward_flops
from esper_kernel.grow.hosts import CNN1DHost, CNN1DHostConfig
from esper_kernel.infra.numerics import numerics
from esper_kernel.infra.telemetry import null_log

SMALL = EnvConfig(task="pairs", epochs=2, train_size=64, val_size=32)


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("frontier")
    d = frontier(SMALL, ["heuristic"], [0, 1], widths=(4, 8, 12, 16), out=out)
    write_outputs(d, out)
    d["_out"] = str(out)
    return d


def test_the_document_follows_the_documented_schema(doc: dict) -> None:
    assert doc["schema"] == FRONTIER_SCHEMA
    keys = {"task", "metric", "metric_key", "higher_is_better", "epochs", "seeds", "env", "points", "comparisons"}
    assert keys <= set(doc)
    assert doc["numerics"] == numerics()
    assert (doc["metric"], doc["metric_key"], doc["higher_is_better"]) == ("accuracy", "final_val_accuracy", True)
    kinds = [(p["kind"], p["name"], p["width"]) for p in doc["points"]]
    assert kinds == [
        ("static", "static-w4", 4),
        ("static", "static-w8", 8),
        ("static", "static-w12", 12),
        ("static", "static-w16", 16),
        ("growing", "heuristic", None),
        ("scratch", "scratch:heuristic", None),
    ]
    for p in doc["points"]:
        assert set(p["mean"]) == {"final_val_accuracy", "final_val_loss", "params", "mean_params", "flops"}
        assert [r["seed"] for r in p["per_seed"]] == [0, 1]
    statics = [p for p in doc["points"] if p["kind"] == "static"]
    # Wider static hosts have more parameters and cost more compute.
    assert [p["mean"]["params"] for p in statics] == sorted(p["mean"]["params"] for p in statics)
    assert [p["mean"]["flops"] for p in statics] == sorted(p["mean"]["flops"] for p in statics)
    (c,) = doc["comparisons"]
    assert c["policy"] == "heuristic" and "vs_scratch" in c
    assert c["vs_scratch"]["final_val_accuracy_difference"]["n"] == 2
    out = Path(doc["_out"])
    assert json.loads((out / "frontier.json").read_text())["schema"] == FRONTIER_SCHEMA
    assert "| static-w16 | static |" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").stat().st_size > 1000


def test_a_rerun_plays_nothing_again(doc: dict) -> None:
    out = Path(doc["_out"])
    lines = (out / "episodes.jsonl").read_text().splitlines()
    again = frontier(SMALL, ["heuristic"], [0, 1], widths=(4, 8, 12, 16), out=out)
    assert (out / "episodes.jsonl").read_text().splitlines() == lines
    assert again["points"] == doc["points"]


def test_scratch_fossils_are_in_the_host_and_trained_from_epoch_0() -> None:
    cfg = EnvConfig(task="pairs", epochs=1, train_size=64, val_size=32)
    reg = build_registry(cfg)
    task = load_task(cfg, 0)
    plain = MorphoEnv(cfg, reg, task, null_log())
    plain.reset(0)
    env = MorphoEnv(cfg, reg, task, null_log())
    env.scratch_fossils = ((0, "conv_small", 1.0), (2, "dilated", 0.5))
    env.reset(0)
    slots = env.host.seed_slots()
    assert len(slots[0].fossils) == 1 and len(slots[2].fossils) == 1 and not slots[1].fossils
    grown = param_count(build_seed("cnn", "conv_small", 8)) + param_count(build_seed("cnn", "dilated", 8, 0.5))
    assert env.param_count() == plain.param_count() + grown
    before = [p.detach().clone() for p in slots[0].fossils.parameters()]
    env.step(torch.zeros(len(reg.space.names), dtype=torch.long))  # op 0 is WAIT
    assert any(not torch.equal(b, p) for b, p in zip(before, slots[0].fossils.parameters(), strict=True))


def test_flops_count_convolutions_at_their_resolution() -> None:
    host = CNN1DHost(CNN1DHostConfig(width=4, blocks=1, stem_kernel=3, block_kernel=1, num_classes=10))
    # stem 1->4, k3, L40: 2*160*3; block 4->4, k1: 2*160*4; head 4->10: 2*10*4
    assert forward_flops(host, torch.randn(1, 1, 40)) == 2 * 160 * 3 + 2 * 160 * 4 + 2 * 10 * 4
