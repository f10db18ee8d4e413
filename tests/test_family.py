"""``family:`` plays a policy on another task and draws a blueprint new to it as its family.

With ``transfer:`` a blueprint the policy never saw is never drawn, so a policy trained on convolutional hosts
never grows ``conv1d`` on a transformer. With ``family:`` that blueprint takes the probability the policy gave
its family's blueprints missing there (the convolutions, for ``conv1d``), shared among the family's new ones;
the blueprints both catalogues hold keep their own logits, and a family with nothing missing to stand in for
stays never drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import seeded

from esper_kernel.cli import main
from esper_kernel.compose.actions import N_OPS
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.names import BLUEPRINTS, FAMILIES
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Op
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.tamiyo.ppo import PPOPolicy, load_policy, save_policy, trained_on


def registry(topology: str) -> Registry:
    return Registry(CoreHeads(3, blueprint_names(topology), topology), [])


def germinate_only(reg: Registry, b: int, blueprints: list[str]) -> torch.Tensor:
    """Masks where the only legal op is GERMINATE and only ``blueprints`` may be grown."""
    masks = reg.space.valid_choices.expand(b, N_OPS, *reg.space.valid_choices.shape).clone()
    op, head = reg.space.op_index, reg.space.names.index("blueprint")
    choices = reg.space.head("blueprint").spec.choices
    masks[:, :, op, :] = False
    masks[:, :, op, int(Op.GERMINATE)] = True
    masks[:, :, head, :] = False
    masks[:, :, head, [choices.index(c) for c in blueprints]] = True
    return masks


@pytest.fixture
def cnn_policy(tmp_path: Path) -> tuple[PPOPolicy, Path]:
    reg = registry("cnn")
    names = observation_names(reg, 3)
    policy = PPOPolicy.for_registry(reg, names, seed=11, trained_on=trained_on(EnvConfig(task="pairs")))
    policy.norm.update(torch.randn(50, len(names), generator=seeded(0)) * 2 + 1)
    with torch.no_grad():
        policy.logits_layer.weight.mul_(100.0)  # logits of a few units: the pooled mass is far from uniform
    return policy, save_policy(policy, tmp_path / "cnn.pt")


def load(path: Path, topology: str, task: str, families: bool) -> PPOPolicy:
    reg = registry(topology)
    here = observation_names(reg, 3)
    env = EnvConfig(task=task)
    return load_policy(path, reg, len(here), here, trained_on=trained_on(env), transfer=True, families=families)


def own_view(policy: PPOPolicy, own: Registry, here: Registry, obs_here: torch.Tensor) -> torch.Tensor:
    """The same states as the policy reads them in its own catalogue (entries this one lacks read 0)."""
    names, there = observation_names(own, 3), observation_names(here, 3)
    out = torch.zeros(obs_here.shape[0], len(names))
    for i, n in enumerate(names):
        if n in there:
            out[:, i] = obs_here[:, there.index(n)]
    return policy(out)[0].detach()


def test_every_blueprint_has_a_family() -> None:
    every = {b for catalogue in BLUEPRINTS.values() for b in catalogue}
    assert set(FAMILIES) == every
    assert set(FAMILIES.values()) == {"norm", "channel", "context"}


def test_conv1d_takes_the_mass_of_the_convolutions_a_transformer_lacks(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    policy, path = cnn_policy
    cnn, tf = registry("cnn"), registry("transformer")
    loaded = load(path, "transformer", "sequences", families=True)
    missing = [b for b in blueprint_names("cnn") if b not in blueprint_names("transformer")]
    assert [k.name for k in loaded.kin] == ["conv1d"] and list(loaded.kin[0].pooled) == missing
    # The channel blueprints have no kin the policy knew: still never drawn.
    assert loaded.unseen == {"blueprint": ("lora8", "lora32", "mlp_small", "mlp_large", "gated_mlp")}
    obs = torch.rand(1, len(observation_names(tf, 3)), generator=seeded(1)).expand(4000, -1).contiguous()
    own = own_view(policy, cnn, tf, obs)[0, cnn.space.names.index("blueprint")]
    cnn_bp = cnn.space.head("blueprint").spec.choices
    pool = torch.logsumexp(own[[cnn_bp.index(b) for b in missing]], 0)
    logits = loaded(obs)[0].detach()[0, tf.space.names.index("blueprint")]
    tf_bp = tf.space.head("blueprint").spec.choices
    assert torch.allclose(logits[tf_bp.index("conv1d")], pool)
    assert torch.allclose(logits[tf_bp.index("attention")], own[cnn_bp.index("attention")])
    # Drawn: conv1d as often as the policy would have grown one of those convolutions, against attention.
    want = float(torch.sigmoid(pool - own[cnn_bp.index("attention")]))
    loaded.reseed(7)
    acts = loaded.act(obs, germinate_only(tf, 4000, ["attention", "conv1d"])).actions
    drawn = float((acts[:, tf.space.names.index("blueprint")] == tf_bp.index("conv1d")).float().mean())
    assert abs(drawn - want) < 4 * math.sqrt(want * (1 - want) / 4000) + 1e-3, (drawn, want)
    assert 0.02 < want < 0.98, "the check needs a share that a wrong mapping would miss"
    # With transfer: it is never grown while anything else is legal.
    plain = load(path, "transformer", "sequences", families=False)
    plain.reseed(7)
    acts = plain.act(obs, germinate_only(tf, 4000, ["attention", "conv1d"])).actions
    assert not bool((acts[:, tf.space.names.index("blueprint")] == tf_bp.index("conv1d")).any())


def test_two_new_kin_share_the_pool(cnn_policy: tuple[PPOPolicy, Path]) -> None:
    policy, path = cnn_policy
    cnn, c1 = registry("cnn"), registry("cnn1d")
    loaded = load(path, "cnn1d", "mnist1d", families=True)
    assert [(k.name, k.share) for k in loaded.kin] == [("wide", 2), ("dilated4", 2)] and loaded.unseen == {}
    obs = torch.rand(16, len(observation_names(c1, 3)), generator=seeded(1))
    own = own_view(policy, cnn, c1, obs)[:, cnn.space.names.index("blueprint")]
    cnn_bp = cnn.space.head("blueprint").spec.choices
    pool = torch.logsumexp(own[:, [cnn_bp.index(b) for b in ("depthwise", "conv_light", "conv_heavy")]], -1)
    logits = loaded(obs)[0].detach()[:, c1.space.names.index("blueprint")]
    for name in ("wide", "dilated4"):
        assert torch.allclose(logits[:, c1.space.head("blueprint").spec.choices.index(name)], pool - math.log(2))


def test_cli_says_it_once_and_grows_only_what_it_may(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text("[env]\ntrain_size = 128\nval_size = 64\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["eval", "--task", "sequences", "--epochs", "4", "--seeds", "1", "--config", str(config)]
    result = CliRunner().invoke(main, [*args, "--policies", "greedy:family:pairs,wait", "--out", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert said.count("drawn as their family's missing ones: conv1d as context (") == 1, said
    assert "greedy:family:pairs" in said and "\N{FAMILY}" not in result.output  # no emoji code read in it
    journal = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    grown = {
        d["blueprint"]
        for e in journal
        if e.get("policy", "").startswith("greedy:family")
        for d in e["result"]["decisions"]
        if d["op"] == "germinate"
    }
    assert grown and grown <= set(blueprint_names("cnn")) | {"conv1d"}, grown
