"""A policy plays a task it was not trained on with ``transfer:``: heads' choices matched by name.

A task of another host topology has another blueprint catalogue. The policy keeps its logits for the
blueprints both catalogues hold, never draws one it never saw, and reads 0 for the one-hot entry of a
blueprint this catalogue lacks (no seed of it can exist here). Without ``transfer:`` another task is
refused, and the error says how to ask.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import seeded

from esper_kernel.cli import main
from esper_kernel.compose.actions import N_OPS
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Op
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.infra.telemetry import read_events
from esper_kernel.tamiyo.ppo import PolicyMismatchError, PPOPolicy, load_policy, save_policy, trained_on

TINY = "[env]\ntrain_size = 128\nval_size = 64\n"


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def registry(topology: str) -> Registry:
    return Registry(CoreHeads(3, blueprint_names(topology), topology), [])


def all_masks(reg: Registry, b: int) -> torch.Tensor:
    return reg.space.valid_choices.expand(b, N_OPS, *reg.space.valid_choices.shape).clone()


@pytest.fixture
def cnn_policy(tmp_path: Path) -> tuple[PPOPolicy, Path]:
    reg = registry("cnn")
    names = observation_names(reg, 3)
    policy = PPOPolicy.for_registry(reg, names, seed=3, trained_on=trained_on(EnvConfig(task="pairs")))
    policy.norm.update(torch.randn(50, len(names), generator=seeded(0)) * 2 + 1)
    # Large logits, so a mapping mistake shows in every draw; the blueprints' all far below the 0 a
    # choice new to the policy gets, so drawing one is what an unmasked new choice would do.
    b = reg.space.names.index("blueprint")
    with torch.no_grad():
        policy.logits_layer.weight.mul_(300.0)
        policy.logits_layer.bias[b * policy.max_choices : (b + 1) * policy.max_choices] -= 1e4
    return policy, save_policy(policy, tmp_path / "cnn.pt")


def test_another_topology_keeps_shared_blueprints_and_never_draws_new_ones(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    policy, path = cnn_policy
    cnn, cnn1d = registry("cnn"), registry("cnn1d")
    names, here = observation_names(cnn, 3), observation_names(cnn1d, 3)
    env = EnvConfig(task="mnist1d")
    loaded = load_policy(path, cnn1d, len(here), here, trained_on=trained_on(env), transfer=True)
    shared = [b for b in cnn1d.space.head("blueprint").spec.choices if b in cnn.space.head("blueprint").spec.choices]
    new = [b for b in cnn1d.space.head("blueprint").spec.choices if b not in shared]
    assert new == ["wide", "dilated4"] and loaded.unseen == {"blueprint": ("wide", "dilated4")}
    # The same state seen from both catalogues: cnn-only blueprints' one-hots are 0 here, as the policy reads them.
    obs_here = torch.rand(256, len(here), generator=seeded(1))
    for i, n in enumerate(here):
        if any(n.endswith(f".blueprint_{b}") for b in new):
            obs_here[:, i] = 0.0
    obs_own = torch.zeros(256, len(names))
    for i, n in enumerate(names):
        if n in here:
            obs_own[:, i] = obs_here[:, here.index(n)]
    own_logits, own_value = policy(obs_own)
    logits, value = loaded(obs_here)
    assert torch.allclose(value, own_value)
    b_own, b_here = cnn.space.names.index("blueprint"), cnn1d.space.names.index("blueprint")
    for bp in shared:
        i = cnn.space.head("blueprint").spec.choices.index(bp)
        j = cnn1d.space.head("blueprint").spec.choices.index(bp)
        assert torch.allclose(logits[:, b_here, j], own_logits[:, b_own, i]), bp
    for greedy in (True, False):
        loaded.greedy = greedy
        loaded.reseed(5)
        acts = loaded.act(obs_here, all_masks(cnn1d, 256)).actions
        germ = acts[:, cnn1d.space.op_index] == int(Op.GERMINATE)
        assert bool(germ.any())
        drawn = {cnn1d.space.head("blueprint").spec.choices[k] for k in acts[germ, b_here].tolist()}
        assert drawn and drawn <= set(shared), drawn


def test_only_new_blueprints_legal_draws_among_them_as_equals(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    _policy, path = cnn_policy
    cnn1d = registry("cnn1d")
    here = observation_names(cnn1d, 3)
    loaded = load_policy(path, cnn1d, len(here), here, trained_on=trained_on(EnvConfig(task="mnist1d")), transfer=True)
    masks = all_masks(cnn1d, 8)
    op, b = cnn1d.space.op_index, cnn1d.space.names.index("blueprint")
    masks[:, :, op, :] = False
    masks[:, :, op, int(Op.GERMINATE)] = True
    masks[:, :, b, :] = False
    new = [cnn1d.space.head("blueprint").spec.choices.index(bp) for bp in ("wide", "dilated4")]
    masks[:, :, b, new] = True
    loaded.reseed(0)
    acts = loaded.act(torch.rand(8, len(here), generator=seeded(1)), masks).actions
    assert set(acts[:, b].tolist()) <= set(new)
    # Sampled, it draws among them as among equals (not always the first); greedy takes the first.
    many = loaded.act(torch.rand(400, len(here), generator=seeded(1)), masks[:1].expand(400, *masks.shape[1:])).actions
    share = float((many[:, b] == new[0]).float().mean())
    assert 0.4 < share < 0.6, share
    loaded.greedy = True
    assert set(loaded.act(torch.rand(8, len(here), generator=seeded(1)), masks).actions[:, b].tolist()) == {new[0]}


def test_another_task_without_transfer_is_one_line_saying_how(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    _policy, path = cnn_policy
    cnn1d = registry("cnn1d")
    here = observation_names(cnn1d, 3)
    with pytest.raises(PolicyMismatchError) as err:
        load_policy(path, cnn1d, len(here), here, trained_on=trained_on(EnvConfig(task="mnist1d")))
    msg = str(err.value)
    assert "\n" not in msg and "task 'pairs' (this run: 'mnist1d')" in msg and "transfer:POLICY" in msg


def test_a_head_with_no_choice_in_common_is_refused(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    _policy, path = cnn_policy
    other = Registry(CoreHeads(3, ("wide", "dilated4"), "cnn1d"), [])
    here = observation_names(other, 3)
    with pytest.raises(PolicyMismatchError, match=r"head 'blueprint' had choices"):
        load_policy(path, other, len(here), here, trained_on=trained_on(EnvConfig(task="mnist1d")), transfer=True)


def test_cli_plays_the_pairs_policy_on_a_transformer_task(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"
    args = ["run", "--task", "sequences", "--epochs", "6", "--config", str(config), "--out", str(out)]
    refused = esper(*args, "--policy", "greedy:pretrained")
    assert refused.exit_code == 2 and "transfer:pairs plays that one on 'sequences'" in refused.stderr
    result = esper(*args, "--policy", "greedy:transfer:pairs")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert said.count("never drawn") == 1 and "never drawn: blueprint=lora8, lora32" in said
    transformer_only = set(blueprint_names("transformer")) - set(blueprint_names("cnn"))
    events = read_events(out / "events.jsonl")
    germinated = [e["blueprint"] for e in events if e["event"] == "seed.stage_changed" and e["new"] == "GERMINATED"]
    assert germinated, "the pairs policy germinates early on its own task; it should here too"
    assert not set(germinated) & transformer_only
    assert json.loads((out / "summary.json").read_text())["config"]["env"]["task"] == "sequences"
