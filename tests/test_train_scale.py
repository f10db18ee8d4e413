"""esper train at scale: env workers give the in-process result, resume after kill -9, TOML config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from click.testing import CliRunner as ClickRunner

from esper_kernel.cli import main
from esper_kernel.compose.discovery import Selection
from esper_kernel.episode.env import EnvConfig, build_registry, observation_names
from esper_kernel.infra.telemetry import null_log, read_events
from esper_kernel.tamiyo.envpool import EnvPool, EnvShard
from esper_kernel.tamiyo.ppo import PPOPolicy
from esper_kernel.tamiyo.train import PPOConfig, TrainOptions, collect_rollout, load_train_state, train_ppo

TINY = EnvConfig(epochs=2, train_size=64, val_size=32, batch_size=32)
TINY_ARGS = ["--epochs", "2", "--train-size", "64", "--val-size", "32", "--batch-size", "32", "--hidden", "16"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    rec = torch.load(path, weights_only=True)
    state: dict[str, torch.Tensor] = rec["state_dict"]
    return state


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_env_workers_give_the_in_process_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers run one intra-op thread each, as the in-process envs do (conftest's autouse
    # fixture): with two, conv sums differ in the last bits and so do the normalisers.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _workers_match_in_process(tmp_path)


def _workers_match_in_process(tmp_path: Path) -> None:
    reg = build_registry(TINY, Selection())
    cfg = PPOConfig(episodes=6, n_envs=4, hidden=16, update_epochs=2, group_size=2, seed=3)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}" / "policy.pt"
        opts = TrainOptions(workers=workers, eval_every=1, eval_seeds=(0, 1, 2))
        runs[workers] = (train_ppo(TINY, reg, cfg, null_log(), out, options=opts), _weights(out))
    (one, w_one), (two, w_two) = runs[1], runs[2]
    assert one.episode_returns == two.episode_returns  # exactly, not approximately
    assert len(set(one.episode_returns)) > 1  # the envs did not all do the same thing
    assert one.best_eval_return == two.best_eval_return and one.best_eval_update == two.best_eval_update
    assert _equal(w_one, w_two)


def _train_cmd(out: Path, *extra: str) -> list[str]:
    args = ["train", "--episodes", "10", "--envs", "2", *TINY_ARGS, "--workers", "1", "--eval-every", "2"]
    return [sys.executable, "-m", "esper_kernel.cli", *args, "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}, "OMP_NUM_THREADS": "1"}


def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole), env=_env(), check=True, capture_output=True, timeout=300)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "train_state.pt"
    deadline = time.monotonic() + 240
    try:
        # Kill once a state exists that is not the last: the run is really cut short.
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and load_train_state(state)["updates_done"] >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = load_train_state(state)["updates_done"]
    assert 2 <= done < 5
    assert not (cut / "train_summary.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "esper_kernel.cli", "train", "--resume", str(cut), "--workers", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _equal(_weights(cut / "policy.pt"), _weights(whole / "policy.pt"))
    assert _equal(_weights(cut / "best_policy.pt"), _weights(whole / "best_policy.pt"))
    a = json.loads((whole / "train_summary.json").read_text())
    b = json.loads((cut / "train_summary.json").read_text())
    assert a["episode_returns"] == b["episode_returns"] and b["resumed_from_update"] == done
    events = read_events(cut / "events.jsonl")
    assert [e["update"] for e in events if e["event"] == "ppo.update"][-1] == 4
    assert any(e["event"] == "train.resumed" for e in events)

    # The killed rollout's partial events are dropped on resume: every epoch of every episode appears once,
    # as in the uninterrupted run, and the resumed run.started says how many were dropped.
    def epochs(stream: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((e["episode"], e["env"], e["epoch"]) for e in stream if e["event"] == "epoch.completed")

    assert epochs(events) == epochs(read_events(whole / "events.jsonl"))
    assert [e["superseded_events"] for e in events if e["event"] == "run.started"][-1] >= 0


def test_a_state_saved_before_a_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    """train_state.pt from before ppo.contribution (which has no such key) still trains further, as at "value"."""
    from esper_kernel.infra import checkpoint
    from esper_kernel.tamiyo.train import load_train_state

    args = ["--envs", "2", *TINY_ARGS, "--workers", "1", "--eval-every", "0"]
    runner = ClickRunner()
    old, whole = tmp_path / "old", tmp_path / "whole"
    assert runner.invoke(main, ["train", "--episodes", "2", *args, "--out", str(old)]).exit_code == 0
    state = load_train_state(old / "train_state.pt")
    del state["ppo_config"]["contribution"], state["meta"]["config"]["ppo"]["contribution"]
    checkpoint.save_atomic(state, old / "train_state.pt")
    further = runner.invoke(main, ["train", "--resume", str(old), "--episodes", "4"])
    assert further.exit_code == 0, further.output
    assert runner.invoke(main, ["train", "--episodes", "4", *args, "--out", str(whole)]).exit_code == 0
    assert _equal(_weights(old / "policy.pt"), _weights(whole / "policy.pt"))


def test_training_a_finished_run_further_gives_the_longer_run(tmp_path: Path) -> None:
    args = ["--envs", "2", *TINY_ARGS, "--workers", "1", "--eval-every", "0"]
    runner = ClickRunner()
    short, long = tmp_path / "short", tmp_path / "long"
    assert runner.invoke(main, ["train", "--episodes", "4", *args, "--out", str(short)]).exit_code == 0
    fewer = runner.invoke(main, ["train", "--resume", str(short), "--episodes", "2"])
    assert fewer.exit_code == 2 and "--episodes" in fewer.output and "already done 4" in fewer.output
    other = runner.invoke(main, ["train", "--resume", str(short), "--episodes", "7", "--lr", "0.1"])
    assert other.exit_code == 2 and "drop --lr" in other.output
    # 7 is not a whole number of 2-env rollouts: the longer run ends on a short one too.
    further = runner.invoke(main, ["train", "--resume", str(short), "--episodes", "7"])
    assert further.exit_code == 0, further.output
    assert runner.invoke(main, ["train", "--episodes", "7", *args, "--out", str(long)]).exit_code == 0
    assert _equal(_weights(short / "policy.pt"), _weights(long / "policy.pt"))
    a = json.loads((short / "train_summary.json").read_text())
    b = json.loads((long / "train_summary.json").read_text())
    assert a["episode_returns"] == b["episode_returns"] and len(a["episode_returns"]) == 7
    assert a["ppo_config"]["episodes"] == 7 and a["resumed_from_update"] == 2
    # After a short rollout, a longer run would not match: refused, saying why.
    again = runner.invoke(main, ["train", "--resume", str(short), "--episodes", "9"])
    assert again.exit_code == 2 and "short one" in again.output and len(again.output.strip().splitlines()) == 1

    # The report shows the config the run was trained further with, and the rollouts' own speed.
    from esper_kernel.report.outcomes import TrainData, load

    data = load(short)
    assert isinstance(data, TrainData) and data.ppo_config["episodes"] == 7
    speeds = [e["env_steps_per_s"] for e in read_events(short / "events.jsonl") if e["event"] == "ppo.update"]
    assert [u.steps_per_second for u in data.updates] == speeds


def test_a_run_with_fewer_episodes_than_envs_cannot_be_trained_further(tmp_path: Path) -> None:
    out = tmp_path / "one"
    args = ["--episodes", "1", "--envs", "2", *TINY_ARGS, "--workers", "1", "--eval-every", "0", "--out", str(out)]
    assert ClickRunner().invoke(main, ["train", *args]).exit_code == 0
    result = ClickRunner().invoke(main, ["train", "--resume", str(out), "--episodes", "4"])
    assert result.exit_code == 2 and "fewer than its 2 envs" in result.output


def test_resume_refuses_settings_of_its_own(tmp_path: Path) -> None:
    result = ClickRunner().invoke(main, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no training state at" in result.output and len(result.output.strip().splitlines()) == 1


def test_config_file_with_flag_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        "workers = 1\neval_every = 0\n[env]\nepochs = 3\ntrain_size = 64\nval_size = 32\nbatch_size = 32\n"
        "[ppo]\nepisodes = 2\nn_envs = 2\nhidden = 8\nupdate_epochs = 1\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    result = ClickRunner().invoke(main, ["train", "--config", str(cfg), "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    started = read_events(out / "events.jsonl")[0]
    assert started["config"]["env"]["epochs"] == 2  # the flag wins
    assert started["config"]["env"]["train_size"] == 64 and started["config"]["ppo"]["hidden"] == 8
    assert started["workers"] == 1
    assert not any(e["event"] == "ppo.eval" for e in read_events(out / "events.jsonl"))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[ppo]\nepisods = 3\n", "ppo.episods: unknown key"),
        ('[env]\nepochs = "ten"\n', "env.epochs: expected int, got str 'ten'"),
        ("workers = -1\n", "workers must be 0 or more"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml, encoding="utf-8")
    result = ClickRunner().invoke(main, ["train", "--config", str(cfg), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "x").exists()


class _Timed:
    """A shard in this process whose every call takes ``cost`` ticks of a clock it shares with the others."""

    clock: ClassVar[list[int]] = [0]

    def __init__(self, shard: EnvShard, cost: int, name: str, arrivals: list[str]) -> None:
        self.shard, self.cost, self.name, self.arrivals = shard, cost, name, arrivals
        self.done_at = 0
        self._result: object = None

    def send(self, method: str, *args: object) -> None:
        self._result = getattr(self.shard, method)(*args)
        self.done_at = self.clock[0] + self.cost

    def recv(self) -> object:
        self.arrivals.append(self.name)
        return self._result

    def close(self) -> None:
        pass

    @staticmethod
    def ready(handles: Sequence[_Timed]) -> list[int]:
        first = min(h.done_at for h in handles)
        _Timed.clock[0] = first
        return [i for i, h in enumerate(handles) if h.done_at == first]


def test_a_rollout_never_waits_for_a_slower_shard_and_draws_the_lock_step_actions() -> None:
    reg = build_registry(TINY, Selection())
    names = observation_names(reg, TINY.slots)
    seeds, episodes = [5, 6, 7, 8], [0, 1, 2, 3]

    def policy() -> PPOPolicy:
        return PPOPolicy.for_registry(reg, names, hidden=16, seed=3)

    lock_step, lock_returns = collect_rollout(policy(), EnvPool.local(TINY, reg, 0, 4, null_log()), seeds, episodes)
    arrivals: list[str] = []
    _Timed.clock[0] = 0
    shards = [EnvShard.build(TINY, reg, 0, idx, null_log()) for idx in ((0, 1), (2, 3))]
    slow, fast = _Timed(shards[0], 4, "slow", arrivals), _Timed(shards[1], 1, "fast", arrivals)
    pool = EnvPool([slow, fast], [2, 2], TINY.epochs, null_log())
    buf, returns = collect_rollout(policy(), pool, seeds, episodes)
    # The fast shard played its reset and both epochs before the slow one answered its reset.
    assert arrivals[:4] == ["fast", "fast", "fast", "slow"]
    assert returns == lock_returns
    for name in ("obs", "actions", "masks", "log_probs", "values", "rewards", "dones"):
        assert torch.equal(getattr(buf, name), getattr(lock_step, name)), name


def test_a_rollout_left_early_leaves_no_stale_answer_in_the_workers() -> None:
    reg = build_registry(TINY, Selection())
    with EnvPool.processes(TINY, reg, Selection(), 0, 2, 2, null_log()) as pool:
        arrivals = pool.start([5, 6], [0, 1])
        first = next(arrivals)
        pool.send_step(first, torch.zeros(1, reg.space.n_heads, dtype=torch.long))
        arrivals.close()  # the caller stops with one step and one reset still owed
        again = pool.reset([7, 8], [2, 3])
    fresh = EnvPool.local(TINY, reg, 0, 2, null_log()).reset([7, 8], [2, 3])
    assert torch.equal(again.obs, fresh.obs)


def test_a_run_started_from_a_policy_file_starts_from_its_weights(tmp_path: Path) -> None:
    # A curriculum: a policy trained at one episode length, trained on at another.
    def train(out: Path, *extra: str) -> dict[str, torch.Tensor]:
        args = ["--episodes", "2", "--envs", "2", *TINY_ARGS, "--workers", "1", "--eval-every", "0", *extra]
        result = ClickRunner().invoke(main, ["train", *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        weights = _weights(out / "policy.pt")
        # The observation statistics move with every rollout; the network's weights are what was learned.
        return {k: v for k, v in weights.items() if not k.startswith("norm.")}

    first = train(tmp_path / "first", "--seed", "5")
    fresh = train(tmp_path / "fresh", "--lr", "1e-12")
    started = train(
        tmp_path / "started", "--lr", "1e-12", "--epochs", "3", "--init-policy", str(tmp_path / "first" / "policy.pt")
    )
    assert all(torch.allclose(started[k], first[k], atol=1e-8) for k in first)
    assert not all(torch.allclose(fresh[k], first[k], atol=1e-3) for k in first)

    fixed = ["--episodes", "1", "--envs", "1", *TINY_ARGS, "--workers", "1", "--eval-every", "0"]
    cfg = tmp_path / "fixed.toml"
    cfg.write_text(f'[ppo]\nfix_levers = true\ninit_policy = "{tmp_path / "first" / "policy.pt"}"\n', encoding="utf-8")
    result = ClickRunner().invoke(main, ["train", *fixed, "--config", str(cfg), "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "ppo.init_policy:" in result.output and "fix_levers must match" in result.output
    missing = ["--init-policy", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "m")]
    result = ClickRunner().invoke(main, ["train", *fixed, *missing])
    assert result.exit_code == 2 and "ppo.init_policy:" in result.output and "nothing.pt" in result.output
    result = ClickRunner().invoke(main, ["train", "--resume", str(tmp_path / "first"), "--init-policy", "x.pt"])
    assert result.exit_code == 2 and "--init-policy" in result.output
