"""A seed's contribution read as its signs (``ppo.contribution = "sign"``): whether it helps, and for how
many measurements in a row, which mean the same on a task whose accuracies move by 0.01 as on one where they
move by 0.2. A fresh policy reads the size or the signs, never both; the default reads what it always read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from esper_kernel.cli import main
from esper_kernel.compose.seeds import SeedState
from esper_kernel.episode.env import EnvConfig, build_registry, observation_names
from esper_kernel.episode.observation import SIGNS, SLOT, fresh_reads, names
from esper_kernel.settings.config import PPOConfig


def _seed(contributions: list[float | None]) -> SeedState:
    seed = SeedState("x", 0, "norm", "linear", "cnn", 0, 20)
    seed.metrics.contribution = list(contributions)
    return seed


def _signs(contributions: list[float | None]) -> dict[str, float]:
    """The sign features of a seed with these measurements, as the observation declares them."""
    seed = _seed(contributions)
    out = {}
    for f in SLOT:
        name = f.names(("norm",))[0]
        if name in SIGNS:
            out[name] = f.values(None, 0, seed)[0]
    return out


@pytest.mark.parametrize(
    ("contributions", "sign", "helped", "harmed"),
    [
        ([], 0.0, 0, 0),
        ([0.3, None, -0.01, -0.002], -1.0, 0, 2),
        ([-0.5, 0.001, 0.002, None, 0.004, 0.01], 1.0, 3, 0),  # capped at 3
        ([0.2, 0.0], 0.0, 0, 0),  # no effect breaks a streak
        ([-0.2, 0.05], 1.0, 1, 0),
    ],
)
def test_signs_say_whether_a_seed_helps_and_for_how_many_measurements_in_a_row(
    contributions: list[float | None], sign: float, helped: int, harmed: int
) -> None:
    got = _signs(contributions)
    assert got == {"contribution_sign": sign, "helped_streak": helped / 3, "harmed_streak": harmed / 3}


def test_the_same_story_on_another_scale_reads_the_same() -> None:
    small = [0.004, -0.001, -0.002]
    assert _signs(small) == _signs([50 * c for c in small])


def test_a_fresh_policy_reads_the_size_or_the_signs_never_both() -> None:
    all_names = names(("norm", "attention"), 2, ())
    by_value = fresh_reads(all_names, several_tasks=True, contribution="value")
    by_sign = fresh_reads(all_names, several_tasks=True, contribution="sign")
    assert "s0.contribution" in by_value and not {f"s{s}.{n}" for s in (0, 1) for n in SIGNS} & set(by_value)
    assert "s1.contribution" not in by_sign and {"s0.contribution_sign", "s1.harmed_streak"} <= set(by_sign)
    assert set(by_value) - {"s0.contribution", "s1.contribution"} == set(by_sign) - {
        f"s{s}.{n}" for s in (0, 1) for n in SIGNS
    }
    with pytest.raises(ValueError, match="value, sign"):
        fresh_reads(all_names, several_tasks=True, contribution="size")


def test_the_default_reads_what_the_shipped_policies_were_trained_on() -> None:
    # The signs came after these files: at the default a fresh policy must read exactly what they read.
    from esper_kernel.tamiyo.stamp import pretrained_path

    env = EnvConfig()
    full = observation_names(build_registry(env), env.slots)
    rec = torch.load(pretrained_path("pairs"), weights_only=True)
    assert tuple(rec["obs_names"]) == tuple(
        fresh_reads(full, several_tasks=False, contribution=PPOConfig().contribution)
    )


@pytest.mark.parametrize("how", ["toml", "flag"])
def test_a_bad_contribution_setting_is_one_line_naming_the_key(tmp_path: Path, how: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[ppo]\ncontribution = "size"\n' if how == "toml" else "", encoding="utf-8")
    args = ["train", "--config", str(path)] + (["--contribution", "size"] if how == "flag" else [])
    result = CliRunner().invoke(main, args, terminal_width=400)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "ppo.contribution" in lines[0] and "--contribution" in lines[0] and "sign" in lines[0], lines[0]


def test_a_policy_trained_on_signs_reads_them_and_runs(tmp_path: Path) -> None:
    from esper_kernel.infra.telemetry import null_log
    from esper_kernel.tamiyo.ppo import load_policy
    from esper_kernel.tamiyo.train import TrainStateError, train_ppo

    env = EnvConfig(epochs=3, train_size=64, val_size=32, batch_size=32)
    registry = build_registry(env)
    cfg = PPOConfig(episodes=2, n_envs=2, group_size=2, update_epochs=1, hidden=8, contribution="sign")
    out = tmp_path / "p" / "policy.pt"
    train_ppo(env, registry, cfg, null_log(), out)
    rec = torch.load(out, weights_only=True)
    assert "s0.contribution_sign" in rec["obs_names"] and "s0.contribution" not in rec["obs_names"]
    assert rec["hyperparameters"]["contribution"] == "sign"
    # Played, it reads each entry by its name: give every entry of the observation its own index as its value.
    full = observation_names(registry, env.slots)
    policy = load_policy(out, registry, len(full), full)
    read = policy.own_obs(torch.arange(len(full), dtype=torch.float32)).tolist()
    assert [full[int(i)] for i in read] == list(rec["obs_names"])
    run = CliRunner().invoke(
        main, ["run", "--epochs", "3", "--policy", f"greedy:{out}", "--out", str(tmp_path / "r"), "--quiet"]
    )
    assert run.exit_code == 0, run.output
    # Starting a run that reads sizes from it is refused for that reason, not for its observation size.
    start = PPOConfig(episodes=2, n_envs=2, group_size=2, update_epochs=1, hidden=8, init_policy=str(out))
    with pytest.raises(TrainStateError, match=r"ppo.init_policy: .* reads contributions as sign, this run as value"):
        train_ppo(env, registry, start, null_log(), tmp_path / "q" / "policy.pt")
