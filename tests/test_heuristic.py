"""HeuristicPolicy on constructed lifecycle states: germinate, fossilize, cull, wait; never illegal."""

from __future__ import annotations

import pytest
import torch
from conftest import LeverDists

from esper_kernel.compose.actions import Decision
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.data.tasks import TaskData
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.episode.sampling import Sampled
from esper_kernel.infra.telemetry import Telemetry
from esper_kernel.tamiyo.policies import HeuristicPolicy

CONFIG = EnvConfig(epochs=20, slots=3, train_size=32, val_size=16, batch_size=16)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task(CONFIG, 0)


def make_env(task: TaskData, registry: Registry | None = None) -> MorphoEnv:
    reg = registry if registry is not None else build_registry(CONFIG, Selection())
    env = MorphoEnv(CONFIG, reg, task, Telemetry(None, "test", console=False).log)
    env.reset(0)
    return env


def decide(env: MorphoEnv, policy: HeuristicPolicy | None = None) -> tuple[Decision, Sampled]:
    envs = EnvBatch([env])
    masks = envs.masks()
    sampled = (policy or HeuristicPolicy()).act(envs.observe(), masks, envs)
    assert_legal(sampled, masks)
    return env.registry.space.decode(sampled.actions)[0], sampled


def assert_legal(sampled: Sampled, masks: torch.Tensor) -> None:
    """Every relevant head's choice is allowed by the composed masks for the chosen op."""
    op = sampled.actions[0, 0]
    sel = masks[0, op]
    taken = sel.gather(-1, sampled.actions[0][:, None]).squeeze(-1)
    assert bool((taken | ~sampled.relevance[0]).all()), f"masked action {sampled.actions.tolist()}"
    assert torch.isfinite(sampled.log_prob).all()


def plant(env: MorphoEnv, slot: int, stage: Stage, contributions: list[float | None]) -> SeedState:
    """A real seed germinated in ``slot``, then put in ``stage`` with a contribution history."""
    space = env.registry.space
    decision = space.decode(
        space.encode([{"op": "germinate", "slot": f"s{slot}", "blueprint": env.blueprints[0], "blend": "linear"}])
    )[0]
    seed = env.lifecycle.germinate(slot, decision, env.epoch)
    seed.stage = stage
    env.lifecycle.stages[slot] = stage
    seed.metrics.contribution = list(contributions)
    seed.metrics.exploded = [False] * len(contributions)
    return seed


def at(env: MorphoEnv, epoch: int, plateau: int) -> MorphoEnv:
    env.epoch, env.plateau = epoch, plateau
    return env


# -- germinate ------------------------------------------------------------------------


def test_germinates_on_a_plateau_after_warmup(task: TaskData) -> None:
    env = at(make_env(task), epoch=3, plateau=2)
    env.lifecycle.stages[0] = Stage.EMBARGOED  # the first dormant slot is s1
    decision, _ = decide(env)
    assert decision.op is Op.GERMINATE
    assert decision.choices["slot"] == "s1"
    assert decision.choices["blueprint"] == env.blueprints[0]
    assert decision.choices["blend"] == "sigmoid"
    # Applying it grows a seed there.
    env.lifecycle.apply(decision, env.epoch)
    assert env.lifecycle.stages[1] is Stage.GERMINATED


def test_cycles_through_blueprints(task: TaskData) -> None:
    policy = HeuristicPolicy()
    env = at(make_env(task), epoch=3, plateau=2)
    chosen = []
    for _ in range(2):
        decision, _ = decide(env, policy)
        chosen.append(decision.choices["blueprint"])
    assert chosen == list(env.blueprints[:2])


@pytest.mark.parametrize(
    ("epoch", "plateau", "why"),
    [(1, 5, "still warming up"), (3, 0, "no plateau yet"), (15, 5, "too few epochs left to finish a seed")],
)
def test_waits_when_germination_is_not_due(task: TaskData, epoch: int, plateau: int, why: str) -> None:
    decision, _ = decide(at(make_env(task), epoch=epoch, plateau=plateau))
    assert decision.op is Op.WAIT, why


def test_waits_on_a_plateau_without_a_dormant_slot(task: TaskData) -> None:
    env = at(make_env(task), epoch=3, plateau=4)
    env.lifecycle.stages[:] = [Stage.EMBARGOED] * CONFIG.slots
    decision, _ = decide(env)
    assert decision.op is Op.WAIT


# -- fossilize and cull -------------------------------------------------------------------------


def test_fossilizes_a_helpful_probationary_seed(task: TaskData) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    plant(env, 2, Stage.PROBATIONARY, [None, 0.01, 0.03])
    decision, _ = decide(env)
    assert (decision.op, decision.choices["slot"]) == (Op.FOSSILIZE, "s2")
    env.lifecycle.apply(decision, env.epoch)
    assert env.lifecycle.history[-1].stage is Stage.FOSSILIZED


def test_does_not_fossilize_when_g5_fails(task: TaskData) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    seed = plant(env, 0, Stage.PROBATIONARY, [0.02, 0.03])
    seed.metrics.exploded[-1] = True  # unhealthy gradients: G5 fails, the mask forbids FOSSILIZE
    assert not env.lifecycle.fossilize_ok()[0]
    decision, _ = decide(env)
    assert decision.op is Op.WAIT


def test_does_not_fossilize_a_seed_that_does_not_help(task: TaskData) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    plant(env, 0, Stage.PROBATIONARY, [0.02, -0.01])
    decision, _ = decide(env)
    assert decision.op is Op.WAIT


@pytest.mark.parametrize("stage", [Stage.BLENDING, Stage.PROBATIONARY])
def test_culls_a_seed_that_hurts_for_patience_epochs(task: TaskData, stage: Stage) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    plant(env, 0, Stage.TRAINING, [0.01])
    plant(env, 1, stage, [0.05, -0.02, -0.01])
    decision, _ = decide(env, HeuristicPolicy(patience=2))
    assert (decision.op, decision.choices["slot"]) == (Op.CULL, "s1")
    env.lifecycle.apply(decision, env.epoch)
    assert env.lifecycle.history[-1].cull_reason == "tamiyo"


@pytest.mark.parametrize("history", [[-0.02], [-0.02, 0.01], [None, -0.01]])
def test_does_not_cull_before_patience_runs_out(task: TaskData, history: list[float | None]) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    plant(env, 0, Stage.BLENDING, history)
    decision, _ = decide(env, HeuristicPolicy(patience=2))
    assert decision.op is Op.WAIT


def test_patience_is_a_parameter(task: TaskData) -> None:
    env = at(make_env(task), epoch=10, plateau=0)
    plant(env, 0, Stage.BLENDING, [-0.03, -0.02, -0.01])
    assert decide(env, HeuristicPolicy(patience=4))[0].op is Op.WAIT
    assert decide(env, HeuristicPolicy(patience=3))[0].op is Op.CULL


# -- masks ---------------------------------------------------------------------------------------

PICKY = """
from esper_kernel import CompileSafety, HeadSpec, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name="picky", choices=("a", "b", "c"), values=(1, 2, 3), default="a", ops={"germinate"})

@hookimpl
def mask(view):
    m = view.ones("picky")
    m[..., 0] = False          # never the default
    blend = view.ones("blend")
    blend[..., view.space.head("blend").spec.choices.index("sigmoid")] = False
    return {"picky": m, "blend": blend}

@hookimpl
def compile_safety():
    return CompileSafety("none")
"""


def test_picks_a_legal_choice_where_a_lever_masks_the_default(lever_dist: LeverDists, task: TaskData) -> None:
    lever_dist("picky", PICKY)
    reg = build_registry(CONFIG, Selection(only=("picky",)))
    env = at(make_env(task, reg), epoch=3, plateau=2)
    decision, sampled = decide(env)
    assert decision.op is Op.GERMINATE
    assert decision.choices["picky"] == "b"  # first legal choice, not the masked default
    assert decision.choices["blend"] != "sigmoid"
    # The env accepts it and the seed records the legal choice.
    env.step(sampled.actions[0])
    seed = env.lifecycle.seeds[0] or env.lifecycle.history[-1]
    assert seed.choices["picky"] == "b"


def test_every_decision_of_an_episode_is_legal(lever_dist: LeverDists, task: TaskData) -> None:
    lever_dist("picky", PICKY)
    reg = build_registry(CONFIG, Selection(only=("picky",)))
    env = make_env(task, reg)
    envs = EnvBatch([env])
    policy = HeuristicPolicy(plateau=0, warmup=0, min_left=0)  # germinate whenever a slot is free
    ops = []
    for _ in range(6):
        masks = envs.masks()
        sampled = policy.act(envs.observe(), masks, envs)
        assert_legal(sampled, masks)
        ops.append(reg.space.decode(sampled.actions)[0].op)
        env.step(sampled.actions[0])
    assert Op.GERMINATE in ops
