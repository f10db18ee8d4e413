"""Schedule policies: a TOML file of growth steps played open-loop in run, eval and sweep."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner, Result

from esper_kernel.cli import main
from esper_kernel.commands.evaluate import PolicySpec, evaluate, parse_policy
from esper_kernel.commands.outdir import SUMMARY
from esper_kernel.commands.run import run
from esper_kernel.commands.sweep import build_grid
from esper_kernel.compose.stages import Stage
from esper_kernel.episode.env import EnvConfig
from esper_kernel.settings.config import RunConfig
from esper_kernel.tamiyo.schedule import ScheduleError, parse_schedule

TINY = EnvConfig(epochs=10, train_size=128, val_size=64, batch_size=16)

GROW = """
name = "grow"

[[step]]
epoch = 0
op = "germinate"
slot = 0
blueprint = "dilated"
dwell = "MINIMAL"
tempo = "FAST"

[[step]]
epoch = 1
op = "germinate"
slot = 0            # slot 0 is busy: illegal, skipped and counted
blueprint = "conv_light"

[[step]]
epoch = 2
op = "fossilize"
slot = 0
window = 7          # waits until the seed may be fossilized
"""


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_schedule_plays_its_steps_and_counts_the_illegal_one(tmp_path: Path) -> None:
    plan = _write(tmp_path, GROW)
    out = tmp_path / "run"
    summary = run(RunConfig(env=TINY, policy=f"schedule:{plan}", out=str(out), seed=3))
    (seed,) = summary["seeds"]
    assert (seed["slot"], seed["blueprint"], seed["germinated_epoch"]) == (0, "dilated", 0)
    assert seed["choices"]["dwell"] == "MINIMAL" and seed["choices"]["tempo"] == "FAST"
    assert seed["final_stage"] == Stage.FOSSILIZED.name
    assert summary["policy_fallbacks"] == 1  # the second germination, into a busy slot
    assert json.loads((out / SUMMARY).read_text())["policy_fallbacks"] == 1


def test_eval_counts_skipped_steps_as_fallbacks_and_plays_a_schedule_like_run(tmp_path: Path) -> None:
    plan = _write(tmp_path, GROW)
    doc = evaluate(TINY, [PolicySpec("wait"), parse_policy(f"schedule:{plan}")], [3])
    row = doc["policies"][1]
    assert row["fallbacks"] == 1 and row["per_seed"][0]["fossilized"] == 1
    ran = run(RunConfig(env=TINY, policy=f"schedule:{plan}", out=str(tmp_path / "r"), seed=3))
    assert row["per_seed"][0]["final_val_accuracy"] == ran["final_val_accuracy"]


def test_a_step_out_of_its_window_is_skipped(tmp_path: Path) -> None:
    plan = _write(tmp_path, GROW.replace("window = 7", "window = 0"))
    summary = run(RunConfig(env=TINY, policy=f"schedule:{plan}", out=str(tmp_path / "r"), seed=3))
    # Fossilizing at epoch 2 is too early (the seed is not yet on probation): skipped too.
    assert summary["policy_fallbacks"] == 2
    assert summary["seeds"][0]["final_stage"] != Stage.FOSSILIZED.name


def test_a_resumed_schedule_continues_where_it_stopped(tmp_path: Path) -> None:
    plan = _write(tmp_path, GROW)
    config = RunConfig(env=TINY, policy=f"schedule:{plan}", out=str(tmp_path / "a"), seed=3)
    whole = run(config)
    half = attrs.evolve(config, out=str(tmp_path / "b"))
    assert run(half, stop_after=4) == {"interrupted_at": 4}
    resumed = run(half, resume=tmp_path / "b")
    assert resumed["final_val_accuracy"] == whole["final_val_accuracy"]
    assert resumed["policy_fallbacks"] == whole["policy_fallbacks"] == 1


BAD = [
    ("[[step]]\nop = 'wait'\n", "step 1: key 'epoch' is missing"),
    ("[[step]]\nepoch = 0\nop = 'wait'\n[[step]]\nepoch = -1\nop = 'wait'\n", "step 2: key 'epoch'"),
    ("[[step]]\nepoch = 0\nop = 'grow'\n", "step 1: key 'op': 'grow' is not one of"),
    ("[[step]]\nepoch = 0\nop = 'germinate'\nblueprint = 'dilated'\n", "step 1 (germinate at epoch 0): key 'slot'"),
    ("[[step]]\nepoch = 0\nop = 'germinate'\nslot = 0\n", "step 1 (germinate at epoch 0): key 'blueprint'"),
    ("[[step]]\nepoch = 3\nop = 'cull'\nslot = 0\nwindow = 'long'\n", "step 1 (cull at epoch 3): key 'window'"),
    ("[[step]]\nepoch = 0\nop = 'germinate'\nslot = 0\nblueprint = 'dilated'\ntmepo = 'FAST'\n", "key 'tmepo'"),
    ("[[step]]\nepoch = 0\nop = 'germinate'\nslot = 0\nblueprint = 'dilated'\ntempo = 'FASTEST'\n", "no choice"),
    ("[[step]]\nepoch = 0\nop = 'germinate'\nslot = 0\nblueprint = 'dilatd'\n", "key 'blueprint'"),
    ("[[step]]\nepoch = 2\nop = 'fossilize'\nslot = 0\ntempo = 'FAST'\n", "key 'tempo': head 'tempo' has no say in"),
    ("[[step]]\nepoch = 2\nop = 'cull'\nslot = 9\n", "step 1 (cull at epoch 2): key 'slot': slot 9 does not exist"),
    ("steps = 1\n", "key 'steps' is not a schedule key"),
    ("name = 'x'\n", "key 'step': expected one or more"),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_a_schedule_error_is_one_line_naming_the_step_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    plan = _write(tmp_path, text)
    out = tmp_path / "eval"
    result = esper("eval", "--policies", f"schedule:{plan},wait", "--seeds", "0", "--epochs", "3", "--out", str(out))
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("esper: error:")]
    assert result.stderr.strip().endswith(line)  # the last line, after esper eval's banner
    assert line.startswith("esper: error: --policies ") and says in line, line
    assert not out.exists()  # refused before any episode


def test_run_refuses_a_bad_schedule_in_one_line_before_writing(tmp_path: Path) -> None:
    plan = _write(tmp_path, BAD[0][0])
    out = tmp_path / "run"
    result = esper("run", "--policy", f"schedule:{plan}", "--out", str(out))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "step 1: key 'epoch' is missing" in line and not out.exists()


def test_a_schedule_writes_back_to_the_same_steps() -> None:
    schedule = parse_schedule(GROW, "grow.toml")
    again = parse_schedule(schedule.to_toml("replayed"), "grow.toml")
    assert again.steps == schedule.steps and again.name == "grow"
    with pytest.raises(ScheduleError, match="not valid TOML"):
        parse_schedule("[[step]\n", "x.toml")


def test_sweep_expands_a_glob_of_schedules_into_one_trial_each(tmp_path: Path) -> None:
    for name in ("b.toml", "a.toml"):
        _write(tmp_path, GROW, name)
    cells = build_grid([None], [f"schedule:{tmp_path}/*.toml"], [])
    assert [c.spec.name for c in cells] == ["wait", f"schedule:{tmp_path}/a.toml", f"schedule:{tmp_path}/b.toml"]
