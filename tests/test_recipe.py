"""recipe:POLICY — the policy's most frequent decision sequence on the eval's seeds, replayed open-loop."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from esper_kernel.cli import main
from esper_kernel.commands.evaldoc import write_outputs
from esper_kernel.commands.evaluate import evaluate, parse_policy
from esper_kernel.episode.env import EnvConfig
from esper_kernel.tamiyo.schedule import load_schedule

TINY = EnvConfig(epochs=6, train_size=48, val_size=24, batch_size=16)


def test_a_recipe_replays_the_policys_own_decisions(tmp_path: Path) -> None:
    specs = [parse_policy(p) for p in ("wait", "random", "recipe:random")]
    doc = evaluate(TINY, specs, [0, 1])
    recipe = doc["recipes"]["recipe:random"]
    rows = {p["name"]: {r["seed"]: r for r in p["per_seed"]} for p in doc["policies"]}
    # Every seed's sequence differs, so the lowest seed's is replayed; on that seed it is the same episode.
    assert recipe["from_seed"] == 0 and recipe["seeds_with_it"] == 1 and recipe["steps"] > 0
    for key in ("final_val_accuracy", "return", "params"):
        assert rows["recipe:random"][0][key] == rows["random"][0][key], key
    assert rows["recipe:random"][1]["fallbacks"] >= 0
    paths = write_outputs(doc, tmp_path)
    (file,) = [p for p in paths if p.name.startswith("recipe-")]
    assert len(load_schedule(file).steps) == recipe["steps"]  # playable as schedule:FILE


def test_run_says_where_a_recipe_is_played(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--policy", "recipe:heuristic", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "only esper eval plays it" in line and "schedule:FILE" in line
