"""A sampled policy draws its noise from the episode seed: two seeds differ, one seed twice is the same."""

from __future__ import annotations

from pathlib import Path

import torch

from esper_kernel.commands.evaluate import EvalJob, parse_policy, play_episode
from esper_kernel.episode.env import EnvConfig, build_registry, observation_names
from esper_kernel.settings.config import converter
from esper_kernel.tamiyo.catalogue import BuildContext, build_policy
from esper_kernel.tamiyo.ppo import PPOPolicy, save_policy

TINY = EnvConfig(epochs=4, train_size=48, val_size=24, batch_size=16)


def _file(tmp_path: Path) -> str:
    reg = build_registry(TINY)
    return str(save_policy(PPOPolicy.for_registry(reg, observation_names(reg, TINY.slots), seed=1), tmp_path / "p.pt"))


def _noise(path: str, seed: int) -> torch.Tensor:
    reg = build_registry(TINY)
    policy = build_policy(parse_policy(path), BuildContext(reg, len(observation_names(reg, TINY.slots)), seed, TINY))
    assert isinstance(policy, PPOPolicy)
    noise = policy.draw_noise(TINY.epochs, 1)
    assert noise is not None
    return noise


def test_two_seeds_draw_different_noise_and_one_seed_twice_the_same(tmp_path: Path) -> None:
    path = _file(tmp_path)
    assert torch.equal(_noise(path, 7), _noise(path, 7))
    assert not torch.equal(_noise(path, 7), _noise(path, 8))


def test_a_sampled_episode_reruns_identically(tmp_path: Path) -> None:
    job = EvalJob(converter.unstructure(TINY), parse_policy(_file(tmp_path)), seed=5, levers=None)
    first, again = play_episode(job), play_episode(job)
    assert (first.ret, first.germinate, first.curve) == (again.ret, again.germinate, again.curve)
