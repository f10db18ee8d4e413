"""One Tamiyo over several tasks: ``[[tasks]]`` in a train config.

Every rollout holds each task's envs; the ``blueprint`` head is the union of the tasks' catalogues and
each task germinates only its own; the policy reads the scaled loss and accuracy features, not the ones
on a task's own scale; it runs on each of its tasks and is refused elsewhere unless asked to transfer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import CliRunner as SubprocessEsper

from esper_kernel.cli import main
from esper_kernel.compose.discovery import Selection
from esper_kernel.episode.env import (
    EnvConfig,
    MorphoEnv,
    build_registry,
    load_task,
    observation_names,
    union_catalogue,
)
from esper_kernel.episode.observation import ABSOLUTE
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.infra.telemetry import null_log, read_events
from esper_kernel.settings.config import TrainConfig, structure_as
from esper_kernel.tamiyo.train import PPOConfig, TrainOptions, train_ppo

TOML = """
out = "{out}"
workers = {workers}
eval_every = 0
[env]
epochs = 3
train_size = 96
val_size = 48
batch_size = 32
[ppo]
episodes = {episodes}
n_envs = 4
group_size = 2
hidden = 16
update_epochs = 2
seed = 5
[[tasks]]
task = "pairs"
[[tasks]]
task = "sequences"
"""


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _config(tmp_path: Path, name: str, workers: int = 1, episodes: int = 8) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TOML.format(out=tmp_path / name, workers=workers, episodes=episodes), encoding="utf-8")
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["state_dict"]
    return state


def test_each_task_germinates_its_own_blueprints_and_the_policy_reads_scaled_features(tmp_path: Path) -> None:
    result = esper("train", "--config", str(_config(tmp_path, "mt", episodes=12)))
    assert result.exit_code == 0, result.output
    out = tmp_path / "mt"
    # The report's state tables (training's last third: the last rollout, both tasks) compare the tasks.
    assert esper("report", str(out)).exit_code == 0
    tables = (out / "emergence.md").read_text(encoding="utf-8")
    assert "episodes on `pairs`, `sequences`." in tables and "**op by task**" in tables
    assert "| pairs | 6 |" in tables and "| sequences | 6 |" in tables  # 2 episodes x 3 decisions each
    rec = torch.load(out / "policy.pt", weights_only=True)
    assert rec["trained_on"]["tasks"] == ["pairs", "sequences"]
    (blueprint,) = [h["choices"] for h in rec["heads"] if h["name"] == "blueprint"]
    assert set(blueprint) == set(blueprint_names("cnn")) | set(blueprint_names("transformer"))
    assert not set(rec["obs_names"]) & set(ABSOLUTE) and "val_accuracy_scaled" in rec["obs_names"]
    # Envs 0-1 are pairs, 2-3 sequences: each germinates from its own topology's catalogue only.
    germinated: dict[str, set[str]] = {"cnn": set(), "transformer": set()}
    for e in read_events(out / "events.jsonl"):
        if e["event"] == "seed.stage_changed" and e["new"] == "GERMINATED":
            germinated["cnn" if e["env"] < 2 else "transformer"].add(e["blueprint"])
    for topology, seen in germinated.items():
        assert seen, f"no {topology} env germinated in 8 episodes of a fresh policy"
        assert seen <= set(blueprint_names(topology)), (topology, seen)
    # It runs on each of its tasks (the transformer one's blueprints matched by name), and not elsewhere.
    for task in ("pairs", "sequences"):
        run = esper("run", "--task", task, "--epochs", "3", "--policy", f"greedy:{out / 'policy.pt'}",
                    "--out", str(tmp_path / f"run-{task}"), "--quiet")  # fmt: skip
        assert run.exit_code == 0, run.output
    refused = esper("run", "--task", "shapes", "--epochs", "2", "--policy", str(out / "policy.pt"),
                    "--out", str(tmp_path / "run-shapes"), "--quiet")  # fmt: skip
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 2 and "trained on tasks 'pairs', 'sequences', not 'shapes'" in said
    assert "transfer:POLICY" in said


def test_workers_and_a_resume_give_the_in_process_uninterrupted_weights(tmp_path: Path) -> None:
    envs = structure_as(
        {"env": {"epochs": 2, "train_size": 64, "val_size": 32, "batch_size": 32},
         "tasks": [{"task": "pairs"}, {"task": "sequences"}], "eval_every": 0,
         "ppo": {"episodes": 8, "n_envs": 4, "group_size": 2}},
        TrainConfig,
    ).task_envs()  # fmt: skip
    reg = build_registry(envs[0], Selection(), union_catalogue(envs))
    cfg = PPOConfig(episodes=8, n_envs=4, hidden=16, update_epochs=2, group_size=2, seed=3)
    weights, returns = {}, {}
    for workers in (1, 2):
        path = tmp_path / f"w{workers}" / "policy.pt"
        summary = train_ppo(envs[0], reg, cfg, null_log(), path, options=TrainOptions(workers=workers), tasks=envs)
        weights[workers], returns[workers] = _weights(path), summary.episode_returns
    assert returns[1] == returns[2] and len(set(returns[1])) > 1
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    # Half the run, then on from its state: the same weights.
    half = tmp_path / "half" / "policy.pt"
    train_ppo(envs[0], reg, attrs.evolve(cfg, episodes=4), null_log(), half, tasks=envs)
    resumed = train_ppo(envs[0], reg, cfg, null_log(), half, tasks=envs,
                        options=TrainOptions(resume=half.with_name("train_state.pt")))  # fmt: skip
    assert resumed.episode_returns == returns[1]
    assert all(torch.equal(weights[1][k], _weights(half)[k]) for k in weights[1])


def test_the_same_command_twice_trains_the_same_policy_whatever_the_hash_seed(
    tmp_path: Path, run_esper: SubprocessEsper
) -> None:
    # What a user checks by rerunning a config: two fresh processes (worker processes too), each with its
    # own string-hash seed, so nothing may lean on set or dict order of names or on when a worker answers.
    runs = {}
    for hash_seed in ("1", "2"):
        name = f"h{hash_seed}"
        done = run_esper(
            "train", "--config", str(_config(tmp_path, name, workers=2)), env={"PYTHONHASHSEED": hash_seed}
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / name / "train_summary.json").read_text(encoding="utf-8"))
        runs[hash_seed] = summary["episode_returns"], _weights(tmp_path / name / "policy.pt")
    (returns_1, weights_1), (returns_2, weights_2) = runs["1"], runs["2"]
    assert returns_1 == returns_2 and len(set(returns_1)) > 1
    assert weights_1.keys() == weights_2.keys()
    assert all(torch.equal(weights_1[k], weights_2[k]) for k in weights_1)


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('[[tasks]]\ntask = "pairs"\nepochs = 4\n', "tasks[2].epochs: set it in [env]"),
        ('[[tasks]]\ntask = "pairs"\nwidht = 4\n', "tasks[2].widht: unknown key"),
        ('[[tasks]]\ntask = "pairs"\n', "tasks: each task once"),
        ('[[tasks]]\ntask = "shapez"\n', "tasks[2].task: unknown task 'shapez'"),
    ],
)
def test_a_bad_task_table_is_one_line_naming_it(tmp_path: Path, table: str, said: str) -> None:
    path = _config(tmp_path, "bad")
    path.write_text(path.read_text().replace("n_envs = 4", "n_envs = 6") + table, encoding="utf-8")
    result = esper("train", "--config", str(path))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert not (tmp_path / "bad").exists()


def test_envs_that_do_not_split_into_task_groups_are_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, "odd")
    path.write_text(path.read_text().replace("n_envs = 4", "n_envs = 6"), encoding="utf-8")
    result = esper("train", "--config", str(path))
    assert result.exit_code == 2 and "need n_envs a multiple of 4, got 6" in " ".join(result.stderr.split())


@pytest.mark.parametrize("task", ["pairs", "sequences"])
def test_scaled_features_mean_the_same_on_every_task(task: str) -> None:
    env_cfg = EnvConfig(task=task, epochs=3, train_size=96, val_size=48, batch_size=32)
    reg = build_registry(env_cfg)
    env = MorphoEnv(env_cfg, reg, load_task(env_cfg, 0), null_log())
    env.reset(0)
    obs = env.step(torch.zeros(reg.space.n_heads, dtype=torch.long)).obs
    named = dict(zip(observation_names(reg, 3), obs.tolist(), strict=True))
    k = env.n_classes
    assert named["val_loss_scaled"] == pytest.approx(named["val_loss"] / math.log(k), rel=1e-5)
    assert named["val_accuracy_scaled"] == pytest.approx((named["val_accuracy"] - 1 / k) / (1 - 1 / k), abs=1e-6)


def test_a_one_task_run_reads_what_policies_before_the_scaled_twins_read(tmp_path: Path) -> None:
    from esper_kernel.episode.observation import scaled_names
    from esper_kernel.tamiyo.ppo import pretrained_path

    # The shipped policy predates the twins: a one-task run still starts from it, weights and all.
    env = EnvConfig(epochs=2, train_size=64, val_size=32, batch_size=32)
    cfg = PPOConfig(episodes=2, n_envs=2, group_size=2, update_epochs=1, init_policy=str(pretrained_path("pairs")))
    out = tmp_path / "p" / "policy.pt"
    train_ppo(env, build_registry(env), cfg, null_log(), out)
    rec = torch.load(out, weights_only=True)
    shipped = torch.load(pretrained_path("pairs"), weights_only=True)
    assert rec["obs_names"] == shipped["obs_names"] and not set(rec["obs_names"]) & set(scaled_names())
