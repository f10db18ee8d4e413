"""The heuristic a practitioner would write: blueprints by evidence, growth that pays off in time, quick levers."""

from __future__ import annotations

import pytest
import torch

from esper_kernel.compose.actions import Decision
from esper_kernel.compose.registry import Selection
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.data.tasks import TaskData
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.infra.telemetry import null_log
from esper_kernel.tamiyo.catalogue import BuildContext, build_policy, parse_policy
from esper_kernel.tamiyo.heuristic import EvidenceHeuristic, probe_order

CONFIG = EnvConfig(epochs=20, slots=3, train_size=32, val_size=16, batch_size=16)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task(CONFIG, 0)


def make_env(task: TaskData) -> MorphoEnv:
    env = MorphoEnv(CONFIG, build_registry(CONFIG, Selection()), task, null_log())
    env.reset(0)
    return env


def decide(env: MorphoEnv, policy: EvidenceHeuristic | None = None) -> Decision:
    envs = EnvBatch([env])
    masks = envs.masks()
    sampled = (policy or EvidenceHeuristic()).act(envs.observe(), masks, envs)
    op = sampled.actions[0, 0]
    taken = masks[0, op].gather(-1, sampled.actions[0][:, None]).squeeze(-1)
    assert bool((taken | ~sampled.relevance[0]).all()), "an illegal action"
    return env.registry.space.decode(sampled.actions)[0]


def plant(env: MorphoEnv, slot: int, blueprint: str, stage: Stage, contributions: list[float | None]) -> SeedState:
    space = env.registry.space
    row = {"op": "germinate", "slot": f"s{slot}", "blueprint": blueprint, "blend": "linear"}
    seed = env.lifecycle.germinate(slot, space.decode(space.encode([row]))[0], env.epoch)
    seed.stage = stage
    env.lifecycle.stages[slot] = stage
    seed.metrics.contribution = list(contributions)
    seed.metrics.exploded = [False] * len(contributions)
    return seed


def retire(env: MorphoEnv, slot: int, fossilized: bool) -> None:
    """Take the seed out of ``slot`` into the history, as a cull or a fossilization would."""
    seed = env.lifecycle.cull(slot, env.epoch, "test")
    if fossilized:
        seed.stage = Stage.FOSSILIZED
    env.lifecycle.stages[slot] = Stage.DORMANT


def test_heuristic_is_the_catalogue_name_and_the_old_rule_stays_as_v1(task: TaskData) -> None:
    env = make_env(task)
    ctx = BuildContext(env.registry, env.obs_dim, 0, CONFIG)
    assert isinstance(build_policy(parse_policy("heuristic"), ctx), EvidenceHeuristic)
    assert type(build_policy(parse_policy("heuristic-v1"), ctx)).__name__ == "HeuristicPolicy"


def test_the_first_decision_probes_the_largest_blueprint_with_the_quickest_levers(task: TaskData) -> None:
    env = make_env(task)
    decision = decide(env)
    assert decision.op is Op.GERMINATE and decision.choices["slot"] == "s0"
    order = probe_order(CONFIG.topology, env.blueprints)
    assert decision.choices["blueprint"] == order[0] != env.blueprints[0]  # not catalogue order
    # Timing heads at the choice that fossilizes soonest; heads that do not change timing at their default.
    assert decision.choices["dwell"] == "MINIMAL" and decision.choices["tempo"] == "FAST"
    assert decision.choices["lr"] == env.registry.space.head("lr").spec.default


def test_one_seed_grows_at_a_time_unless_asked_for_more(task: TaskData) -> None:
    env = make_env(task)
    order = probe_order(CONFIG.topology, env.blueprints)
    plant(env, 0, order[0], Stage.TRAINING, [])
    assert decide(env).op is Op.WAIT
    decision = decide(env, EvidenceHeuristic(max_live=3))  # probes in parallel across the free slots
    assert (decision.choices["slot"], decision.choices["blueprint"]) == ("s1", order[1])


def test_a_blueprint_that_helped_is_grown_again(task: TaskData) -> None:
    env = make_env(task)
    order = probe_order(CONFIG.topology, env.blueprints)
    plant(env, 0, order[2], Stage.PROBATIONARY, [0.01, 0.04])
    retire(env, 0, fossilized=True)
    env.epoch = 6
    assert decide(env).op is Op.WAIT  # the network is still improving with it
    env.plateau = 2
    decision = decide(env)
    assert decision.op is Op.GERMINATE and decision.choices["blueprint"] == order[2]


def test_never_the_blueprint_just_culled_in_that_slot(task: TaskData) -> None:
    env = make_env(task)
    order = probe_order(CONFIG.topology, env.blueprints)
    plant(env, 0, order[0], Stage.BLENDING, [0.02, 0.03])  # it helped ...
    retire(env, 0, fossilized=False)  # ... but was culled in slot 0
    env.lifecycle.stages[1] = env.lifecycle.stages[2] = Stage.EMBARGOED
    env.epoch = 4
    decision = decide(env)
    assert decision.choices["slot"] == "s0" and decision.choices["blueprint"] != order[0]


def test_nothing_is_grown_once_every_blueprint_was_tried_and_none_helped(task: TaskData) -> None:
    env = make_env(task)
    for bp in env.blueprints:
        plant(env, 0, bp, Stage.BLENDING, [-0.02])
        retire(env, 0, fossilized=False)
    env.epoch = 5
    assert decide(env).op is Op.WAIT


def test_no_growth_too_late_to_pay_off(task: TaskData) -> None:
    env = make_env(task)
    ready = env.registry.space.timeline(CONFIG.epochs, {}).at(Stage.FOSSILIZED)
    env.epoch = CONFIG.epochs - ready - max(3, CONFIG.epochs // 5)
    assert decide(env).op is Op.GERMINATE
    env.epoch += 1
    assert decide(env).op is Op.WAIT


def test_fossilizes_a_helpful_seed_and_culls_one_on_probation_that_does_not_help(task: TaskData) -> None:
    env = make_env(task)
    env.epoch = 10
    plant(env, 1, "dilated", Stage.PROBATIONARY, [0.01, 0.02])
    decision = decide(env)
    assert (decision.op, decision.choices["slot"]) == (Op.FOSSILIZE, "s1")
    env2 = make_env(task)
    env2.epoch = 10
    plant(env2, 2, "norm", Stage.PROBATIONARY, [0.01, 0.0])
    decision = decide(env2)
    assert (decision.op, decision.choices["slot"]) == (Op.CULL, "s2")


def test_probe_order_leaves_the_global_random_state_alone() -> None:
    probe_order.cache_clear()
    state = torch.get_rng_state()
    probe_order("cnn", ("norm", "dilated"))
    assert torch.equal(state, torch.get_rng_state())
