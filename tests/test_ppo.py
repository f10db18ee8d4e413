"""PPO Tamiyo: heads from the composed space, masked sampling, exact mask replay, GAE,
a learning step on a bandit, policy files, and ``esper train`` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner as ClickRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_kernel import HeadSpec, Op, hookimpl
from esper_kernel.cli import default_core, main
from esper_kernel.compose.actions import N_OPS, ActionSpace
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import LeverInfo, Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, load_task, observation_names
from esper_kernel.episode.sampling import select_masks
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.infra.errors import EsperError, MaskError
from esper_kernel.infra.telemetry import Telemetry, read_events
from esper_kernel.tamiyo.algorithm import Batch, compute_gae, group_sizes, ppo_update, relative_rewards
from esper_kernel.tamiyo.policies import RandomPolicy
from esper_kernel.tamiyo.ppo import PolicyLoadError, PolicyMismatchError, PPOPolicy, load_policy, save_policy
from esper_kernel.tamiyo.train import PPOConfig, collect_rollout, evaluate_policy

TINY = EnvConfig(epochs=3, train_size=64, val_size=32, batch_size=32)


class WideLever:
    """A lever whose head has more choices than any core head, so it widens the padded logits."""

    @hookimpl
    def action_head(self) -> HeadSpec:
        return HeadSpec(
            name="width_mult",
            choices=tuple(f"w{i}" for i in range(10)),
            values=tuple(range(10)),
            default="w0",
            ops={Op.GERMINATE},
        )


class FlagLever:
    @hookimpl
    def action_head(self) -> HeadSpec:
        return HeadSpec(name="flag", choices=("off", "on"), values=(False, True), default="off", ops={Op.CULL})


def make_registry(*levers: tuple[str, object]) -> Registry:
    infos = [LeverInfo(name, f"esper-test-{name}", "1.0", f"tests:{name}", obj) for name, obj in levers]
    return Registry(CoreHeads(3, blueprint_names("cnn")), infos)


def random_masks(space: ActionSpace, b: int, seed: int, density: float) -> torch.Tensor:
    """Random ``[B, n_ops, H, C]`` masks, padding excluded, with at least one legal choice in every row."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, N_OPS, space.n_heads, space.max_choices)
    masks = (torch.rand(shape, generator=g) < density) & space.valid_choices
    # rand * valid is positive only on real choices, so the argmax is always a real choice.
    pick = (torch.rand(shape, generator=g) * space.valid_choices).argmax(-1, keepdim=True)
    masks = masks.scatter(-1, pick, True)
    # As MaskComposer guarantees, the op head's row does not depend on the op it chooses.
    op = space.op_index
    masks[:, :, op] = masks[:, :1, op]
    return masks


def op_probs(policy: PPOPolicy, obs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = policy(obs)
    return torch.softmax(logits[:, policy.space.op_index, :N_OPS], -1)


# -- heads come from the composed space ------------------------------------------


def test_logits_follow_the_installed_levers() -> None:
    obs = torch.zeros(2, 7)
    shapes = {}
    for label, levers in {
        "core": [],
        "flag": [("flag", FlagLever())],
        "wide": [("flag", FlagLever()), ("wide", WideLever())],
    }.items():
        reg = make_registry(*levers)
        policy = PPOPolicy(reg.space, 7)
        logits, value = policy(obs)
        shapes[label] = tuple(logits.shape)
        assert value.shape == (2,)
    n_blueprints = len(blueprint_names("cnn"))
    assert shapes["core"] == (2, 4, n_blueprints)
    assert shapes["flag"] == (2, 5, n_blueprints)  # one more head, no wider than before
    assert shapes["wide"] == (2, 6, 10)  # the wide head sets the padded width


# -- sampling ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    density=st.floats(0.0, 1.0),
    greedy=st.booleans(),
)
def test_sampling_never_picks_a_masked_choice(seed: int, b: int, density: float, greedy: bool) -> None:
    reg = make_registry(("flag", FlagLever()), ("wide", WideLever()))
    space = reg.space
    policy = PPOPolicy(space, 5, seed=seed % 1000)
    with torch.no_grad():
        # Peaked logits: an unmasked sampler would often land on a forbidden choice.
        policy.logits_layer.weight.mul_(500.0)
        policy.logits_layer.bias.normal_(0.0, 10.0, generator=torch.Generator().manual_seed(seed))
    policy.greedy = greedy
    masks = random_masks(space, b, seed, density)
    obs = torch.randn(b, 5, generator=torch.Generator().manual_seed(seed + 1))
    s = policy.act(obs, masks, None)
    op = s.actions[:, space.op_index]
    assert bool(masks[torch.arange(b), 0, space.op_index, op].all()), "illegal op"
    assert torch.equal(s.masks, select_masks(space, masks, op))
    legal = s.masks.gather(-1, s.actions[..., None]).squeeze(-1)
    assert bool((legal | ~s.relevance).all()), "a relevant head chose a masked choice"
    assert torch.equal(torch.where(s.relevance, space.defaults.expand(b, -1), s.actions), space.defaults.expand(b, -1))
    assert bool(torch.isfinite(s.log_prob).all())
    assert policy.last_value is not None and policy.last_value.shape == (b,)


def test_irrelevant_heads_add_no_log_prob_or_entropy() -> None:
    reg = make_registry(("flag", FlagLever()), ("wide", WideLever()))
    space = reg.space
    policy = PPOPolicy(space, 5)
    actions = space.encode([{"op": "wait"}, {"op": "germinate", "width_mult": "w3"}, {"op": "cull", "flag": "on"}])
    rel = space.relevance(actions)
    masks = select_masks(space, space.valid_choices.expand(3, N_OPS, -1, -1), actions[:, space.op_index])
    obs = torch.randn(3, 5)
    with torch.no_grad():
        lp, ent, _ = policy.evaluate(obs, actions, masks, rel)
        assert bool((ent[~rel] == 0).all())
        assert bool((ent[rel] > 0).all())
        # Moving every non-op head's logits changes nothing for WAIT, which only the op head concerns.
        policy.logits_layer.bias.view(space.n_heads, -1)[1:] += torch.randn(space.n_heads - 1, space.max_choices)
        lp2, ent2, _ = policy.evaluate(obs, actions, masks, rel)
    assert lp2[0] == lp[0] and torch.equal(ent2[0], ent[0])
    assert lp2[1] != lp[1] and lp2[2] != lp[2]
    flag = space.head("flag").index
    assert rel[:, flag].tolist() == [False, False, True]
    assert rel[:, space.head("width_mult").index].tolist() == [False, True, False]


# -- rollouts replay their masks ---------------------------------------------------------


@pytest.fixture(scope="module")
def rollout() -> tuple[PPOPolicy, Batch]:
    reg = make_registry(("wide", WideLever()))
    log = Telemetry(None, "test", console=False).log
    task = load_task(TINY, 0)
    envs = EnvBatch([MorphoEnv(TINY, reg, task, log, i) for i in range(2)])
    names = observation_names(reg, TINY.slots)
    policy = PPOPolicy.for_registry(reg, names, hidden=16, seed=3)
    policy.norm.update(torch.randn(50, len(names)))
    buf, returns = collect_rollout(policy, envs, [11, 12], [0, 1])
    assert len(returns) == 2 and buf.dones[-1].all() and not buf.dones[:-1].any()
    assert torch.allclose(buf.rewards.sum(0), torch.tensor(returns, dtype=torch.float32))
    return policy, buf.batch(torch.zeros(2), 0.99, 0.95)


def test_update_replays_stored_masks_exactly(rollout: tuple[PPOPolicy, Batch]) -> None:
    policy, batch = rollout
    n_envs = 2
    with torch.no_grad():
        # Scored in the rollout's own row groups (one per step), the replay is bit-exact.
        for start in range(0, len(batch), n_envs):
            step = batch.rows(torch.arange(start, start + n_envs))
            lp, ent, value = policy.evaluate(step.obs, step.actions, step.masks, step.relevance)
            assert torch.equal(lp, step.log_probs)
            assert torch.equal((lp - step.log_probs).exp(), torch.ones_like(lp))
            assert torch.equal(value, step.values)
            assert bool((ent[~step.relevance] == 0).all())
        # As one batch, a matmul of another shape may round the last bit differently.
        lp, _, value = policy.evaluate(batch.obs, batch.actions, batch.masks, batch.relevance)
    torch.testing.assert_close(lp, batch.log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(value, batch.values, rtol=0, atol=1e-6)


def test_a_mask_changed_after_the_rollout_raises(rollout: tuple[PPOPolicy, Batch]) -> None:
    policy, batch = rollout
    space = policy.space
    masks = batch.masks.clone()
    op = space.op_index
    taken = int(batch.actions[0, op])
    masks[0, op, taken] = False
    masks[0, op, (taken + 1) % N_OPS] = True  # the row stays satisfiable; only the taken action is gone
    changed = attrs.evolve(batch, masks=masks)
    with pytest.raises(MaskError, match="masks changed between rollout and update"):
        policy.evaluate(changed.obs, changed.actions, changed.masks, changed.relevance)
    opt = torch.optim.Adam(policy.parameters(), lr=0.0)
    with pytest.raises(MaskError):
        ppo_update(policy, opt, changed, PPOConfig(update_epochs=1))


# -- GAE ---------------------------------------------------------------------------------


def test_gae_matches_a_hand_computation() -> None:
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    values = torch.tensor([[0.5, 0.5], [1.0, 1.0], [1.5, 1.5]])
    # Env 0 ends at the last step; env 1 ends at step 1 and a new episode runs into a bootstrap.
    dones = torch.tensor([[False, False], [False, True], [True, False]])
    last = torch.tensor([9.0, 2.0])
    adv, ret = compute_gae(rewards, values, dones, last, gamma, lam)
    # env 0: d2 = 3-1.5; d1 = 2+.9*1.5-1; d0 = 1+.9*1-.5; A_t = d_t + .72*A_{t+1}
    a2 = 1.5
    a1 = 2.35 + 0.72 * a2
    a0 = 1.4 + 0.72 * a1
    # env 1: d2 = 3+.9*2-1.5 bootstraps; step 1 is terminal, so A1 = d1 = 1 and nothing crosses it
    b2 = 3.0 + 0.9 * 2.0 - 1.5
    b1 = 1.0
    b0 = 1.4 + 0.72 * b1
    expected = torch.tensor([[a0, b0], [a1, b1], [a2, b2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


# -- learning ------------------------------------------------------------------------------


def test_groups_never_leave_an_env_alone() -> None:
    assert group_sizes(8, 4) == [4, 4]
    assert group_sizes(5, 4) == [5]
    assert group_sizes(3, 4) == [3]
    assert group_sizes(1, 4) == [1]
    assert group_sizes(4, 1) == [1, 1, 1, 1]


def test_relative_rewards_subtract_the_mean_of_the_other_envs_of_the_group() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 5.0, 7.0], [0.5, 0.5, 0.5, 1.0, 1.0]])
    rel = relative_rewards(rewards, [3, 2])
    expected = torch.tensor([[1.0 - 2.5, 2.0 - 2.0, 3.0 - 1.5, 5.0 - 7.0, 7.0 - 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rel, expected)
    # A group of one has nothing to compare with and keeps its rewards.
    torch.testing.assert_close(relative_rewards(rewards, [1, 1, 1, 1, 1]), rewards)


def test_paired_envs_share_a_host_trajectory_until_decisions_differ() -> None:
    # The same episode seed on two envs, both waiting: identical rewards, so relative rewards are exactly zero.
    reg = make_registry()
    log = Telemetry(None, "test", console=False).log
    task = load_task(TINY, 0)
    envs = EnvBatch([MorphoEnv(TINY, reg, task, log, i) for i in range(2)])
    envs.reset([5, 5])
    space = reg.space
    wait = space.encode([{"op": "wait"}, {"op": "wait"}])
    rewards = torch.tensor([[r.reward for r in envs.step(wait)] for _ in range(TINY.epochs)])
    assert torch.equal(rewards[:, 0], rewards[:, 1])
    assert bool((relative_rewards(rewards, [2]) == 0).all())


def test_ppo_update_learns_a_bandit() -> None:
    """Reward GERMINATE, nothing else: a few updates must make it the likeliest op."""
    reg = make_registry(("flag", FlagLever()))
    space = reg.space
    policy = PPOPolicy(space, 4, hidden=32, seed=1)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    config = PPOConfig(update_epochs=4, minibatch_size=32, entropy_coef=0.0)
    n = 64
    obs = torch.zeros(n, 4)
    masks = space.valid_choices.expand(n, N_OPS, -1, -1).clone()
    shuffle = torch.Generator().manual_seed(0)
    before = op_probs(policy, obs[:1])[0, Op.GERMINATE].item()
    for _ in range(8):
        s, value = policy.act_with_value(obs, masks)
        reward = (s.actions[:, space.op_index] == int(Op.GERMINATE)).float()
        adv, ret = compute_gae(
            reward[None], value[None], torch.ones(1, n, dtype=torch.bool), torch.zeros(n), 0.99, 0.95
        )
        batch = Batch(obs, s.actions, s.masks, s.relevance, s.log_prob, value, adv[0], ret[0])
        stats = ppo_update(policy, opt, batch, config, shuffle)
        assert stats.approx_kl >= -1e-6
    after = op_probs(policy, obs[:1])[0, Op.GERMINATE].item()
    assert before == pytest.approx(0.25, abs=0.02)
    assert after > 0.6, (before, after)
    assert set(stats.head_entropy) == set(space.names)
    assert stats.head_entropy["flag"] is None  # never relevant: only CULL uses it


# -- policy files -----------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    reg = make_registry(("wide", WideLever()))
    names = observation_names(reg, 3)
    policy = PPOPolicy.for_registry(reg, names, hidden=24, hyperparameters={"lr": 1e-3}, seed=5)
    policy.norm.update(torch.randn(40, len(names)) * 3 + 1)  # so the normaliser's buffers matter
    path = save_policy(policy, tmp_path / "policy.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt"]  # no temp file left behind
    assert path.stat().st_mode & 0o044, "a policy file must be as readable as any file the user writes"
    loaded = load_policy(path, reg, len(names), names)
    obs = torch.randn(5, len(names))
    with torch.no_grad():
        a, va = policy(obs)
        b, vb = loaded(obs)
    assert torch.equal(a, b) and torch.equal(va, vb)
    assert loaded.hidden == 24 and loaded.hyperparameters == {"lr": 1e-3}
    assert [lv.name for lv in loaded.levers] == ["wide"]


def test_loading_under_other_levers_names_the_difference(tmp_path: Path) -> None:
    trained = make_registry(("wide", WideLever()))
    policy = PPOPolicy.for_registry(trained, observation_names(trained, 3))
    path = save_policy(policy, tmp_path / "policy.pt")
    active = make_registry(("flag", FlagLever()))
    with pytest.raises(PolicyMismatchError) as err:
        load_policy(path, active, policy.obs_dim)
    msg = str(err.value)
    assert "'width_mult' is not in the active action space" in msg
    assert "'flag' is new" in msg
    assert "trained with levers [wide (esper-test-wide 1.0)]" in msg
    assert "active levers are [flag (esper-test-flag 1.0)]" in msg
    assert isinstance(err.value, EsperError)
    with pytest.raises(PolicyMismatchError, match="observation size was"):
        load_policy(path, trained, policy.obs_dim + 1)
    with pytest.raises(PolicyLoadError, match="does not exist"):
        load_policy(tmp_path / "missing.pt", trained, policy.obs_dim)
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(PolicyLoadError, match="could not be read"):
        load_policy(tmp_path / "junk.pt", trained, policy.obs_dim)


# -- end to end ------------------------------------------------------------------------------


def test_evaluate_policy_is_reproducible() -> None:
    reg = make_registry()
    log = Telemetry(None, "test", console=False).log
    first = evaluate_policy(RandomPolicy(4), TINY, reg, [1, 2], log)
    again = evaluate_policy(RandomPolicy(4), TINY, reg, [1, 2], log)
    assert len(first) == 2 and first == again


def test_cli_train_writes_policy_events_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--episodes", "3", "--envs", "2", "--epochs", "2", "--train-size", "64", "--val-size", "32"]
    result = ClickRunner().invoke(main, [*args, "--out", str(out), "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "policy.pt",
        "best_policy.pt",
        "train_state.pt",
        "events.jsonl",
        "train_summary.json",
    }

    events = read_events(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    started = events[0]
    reg = Registry.open(default_core(), Selection())
    assert [lv["name"] for lv in started["levers"]] == list(reg.names)
    assert all({"distribution", "version"} <= set(lv) for lv in started["levers"])
    assert [f["name"] for f in started["failed_levers"]] == [f.name for f in reg.failures]
    assert started["env_config"]["epochs"] == 2 and started["ppo_config"]["seed"] == 7
    updates = [e for e in events if e["event"] == "ppo.update"]
    assert [u["episodes_done"] for u in updates] == [2, 3]  # 3 episodes on 2 envs: a short last rollout
    for u in updates:
        assert {"policy_loss", "value_loss", "approx_kl", "clip_fraction", "mean_return"} <= set(u)
        assert set(u["head_entropy"]) == set(reg.space.names)
        assert u["env_steps_per_s"] > 0 and u["rollout_seconds"] > 0
    assert updates[0]["env_steps"] == 4 and updates[1]["env_steps"] == 2  # envs x epochs of each rollout
    assert 0 < updates[0]["wall_seconds"] < updates[1]["wall_seconds"]
    # The last update is evaluated on the held-out seeds, and the best policy kept.
    (evaluation,) = [e for e in events if e["event"] == "ppo.eval"]
    assert evaluation["update"] == 1 and evaluation["seeds"] == [0, 1] and len(evaluation["returns"]) == 2
    assert evaluation["best"] is True

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["episodes"] == 3 and len(summary["episode_returns"]) == 3
    names = observation_names(reg, 3)
    policy = load_policy(out / "policy.pt", reg, len(names), names)
    assert policy.hyperparameters["episodes"] == 3


def test_cli_train_errors_are_one_line(tmp_path: Path) -> None:
    result = ClickRunner().invoke(main, ["train", "--levers", "no_such_lever", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: unknown lever(s) 'no_such_lever'")
    assert not (tmp_path / "x").exists()


# -- the fixed-levers control and the training stamp ------------------------------------------


def test_a_fixed_levers_policy_never_samples_or_learns_its_lever_heads(tmp_path: Path) -> None:
    from esper_kernel.tamiyo.ppo import trained_on
    from esper_kernel.tamiyo.train import lever_defaults

    reg = make_registry(("wide", WideLever()))
    names = observation_names(reg, 3)
    pins = lever_defaults(reg)
    assert pins == {"width_mult": "w0"}
    policy = PPOPolicy.for_registry(reg, names, pinned=pins, trained_on=trained_on(TINY), seed=3)
    space = reg.space
    sizes = torch.tensor([len(hd.spec.choices) for hd in space.heads])
    masks = (torch.arange(space.max_choices) < sizes[:, None]).expand(64, N_OPS, -1, -1).clone()
    masks[:, :, space.names.index("width_mult"), 0] = False  # the default is illegal: nearest legal is w1
    masks[:32, :, space.names.index("width_mult"), :] = True
    out = policy.act(torch.randn(64, len(names)), masks)
    h = space.names.index("width_mult")
    rel = out.relevance[:, h]
    assert bool(rel.any())
    assert set(out.actions[:32, h][rel[:32]].tolist()) == {0}
    assert set(out.actions[32:, h][rel[32:]].tolist()) <= {1}
    assert float(out.entropy[:, h].abs().max()) == 0.0
    free = PPOPolicy.for_registry(reg, names, seed=3).act(torch.randn(64, len(names)), masks)
    assert len(set(free.actions[:, h][free.relevance[:, h]].tolist())) > 1
    path = save_policy(policy, tmp_path / "fixed.pt")
    loaded = load_policy(path, reg, len(names), trained_on=trained_on(TINY))
    assert loaded.pinned == pins and loaded.trained_on == {"task": "pairs", "epochs": 3, "slots": 3}


def test_a_policy_run_on_another_task_names_what_differs(tmp_path: Path) -> None:
    from esper_kernel.tamiyo.ppo import trained_on

    reg = make_registry()
    names = observation_names(reg, 3)
    path = save_policy(PPOPolicy.for_registry(reg, names, trained_on=trained_on(TINY)), tmp_path / "p.pt")
    other = attrs.evolve(TINY, task="shapes", epochs=5)
    said = r"trained on another setting: task 'pairs' \(this run: 'shapes'\); transfer:"
    with pytest.raises(PolicyMismatchError, match=said):
        load_policy(path, reg, len(names), trained_on=trained_on(other))
    # Another episode length is no mismatch: the observation carries the epoch as a fraction of it.
    assert (
        load_policy(path, reg, len(names), trained_on=trained_on(attrs.evolve(TINY, epochs=9))).trained_on["epochs"]
        == 3
    )
