"""MorphoEnv: the observation is composed from the levers, and the reward follows its definition."""

from __future__ import annotations

import pytest
import torch
from conftest import LeverDists

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Stage
from esper_kernel.data.tasks import TaskData
from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task, observation_names
from esper_kernel.infra.telemetry import Telemetry

CONFIG = EnvConfig(epochs=6, slots=3, train_size=32, val_size=16, batch_size=16)

OBS_LEVER = """
from esper_kernel import CompileSafety, TelemetryField, hookimpl

@hookimpl
def telemetry_fields():
    return [
        TelemetryField("alpha_f", "observed: 10 + slot", lambda ctx: 10.0 + ctx.slot, observed=True),
        TelemetryField("hidden_f", "not observed", lambda ctx: 99.0),
        TelemetryField("gamma_f", "observed, absent in slot 1", lambda ctx: None if ctx.slot == 1 else -1.0 - ctx.slot,
                       observed=True),
    ]

@hookimpl
def compile_safety():
    return CompileSafety("none")
"""


@pytest.fixture(scope="module")
def task() -> TaskData:
    return load_task(CONFIG, 0)


def make_env(registry: Registry, task: TaskData, config: EnvConfig = CONFIG) -> MorphoEnv:
    return MorphoEnv(config, registry, task, Telemetry(None, "test", console=False).log)


def wait(registry: Registry) -> torch.Tensor:
    return registry.space.encode([{"op": "wait"}])[0]


def test_observation_grows_by_slots_per_observed_field(lever_dist: LeverDists, task: TaskData) -> None:
    lever_dist("obsy", OBS_LEVER)
    without = build_registry(CONFIG, Selection(only=()))
    with_lever = build_registry(CONFIG, Selection(only=("obsy",)))
    names_without = observation_names(without, CONFIG.slots)
    names_with = observation_names(with_lever, CONFIG.slots)

    env_without, env_with = make_env(without, task), make_env(with_lever, task)
    assert env_without.obs_dim == len(names_without)
    assert env_with.obs_dim == len(names_with)
    # Two observed fields, per slot; the unobserved one adds nothing.
    assert env_with.obs_dim - env_without.obs_dim == 2 * CONFIG.slots
    added = [n for n in names_with if n not in names_without]
    assert added == [f"s{s}.obsy.{f}" for s in range(CONFIG.slots) for f in ("alpha_f", "gamma_f")]
    assert not any("hidden_f" in n for n in names_with)
    # Removing the lever takes exactly its entries away, the rest in the same order.
    assert [n for n in names_with if n not in added] == list(names_without)

    assert env_with.reset(0).shape == (env_with.obs_dim,)
    assert env_without.reset(0).shape == (env_without.obs_dim,)


def test_observed_field_values_land_in_their_positions(lever_dist: LeverDists, task: TaskData) -> None:
    lever_dist("obsy", OBS_LEVER)
    reg = build_registry(CONFIG, Selection(only=("obsy",)))
    env = make_env(reg, task)
    names = observation_names(reg, CONFIG.slots)
    obs = env.reset(0)
    # Before any epoch no field has been computed: they read as 0.
    assert all(obs[names.index(f"s{s}.obsy.alpha_f")] == 0.0 for s in range(CONFIG.slots))

    result = env.step(wait(reg))
    assert result.obs.shape == (env.obs_dim,)
    for s in range(CONFIG.slots):
        assert result.obs[names.index(f"s{s}.obsy.alpha_f")] == 10.0 + s
    assert result.obs[names.index("s0.obsy.gamma_f")] == -1.0
    assert result.obs[names.index("s1.obsy.gamma_f")] == 0.0  # None reads as 0
    assert result.obs[names.index("s2.obsy.gamma_f")] == -3.0
    assert 99.0 not in result.obs.tolist()
    # And the base entries mean what their names say.
    assert result.obs[names.index("epoch_frac")] == pytest.approx(1 / CONFIG.epochs)
    assert result.obs[names.index("val_accuracy")] == pytest.approx(result.epoch.val_accuracy)
    assert result.obs[names.index("s0.stage_dormant")] == 1.0


def test_builtin_levers_observation_matches_its_schema(task: TaskData) -> None:
    reg = build_registry(CONFIG, Selection())
    env = make_env(reg, task)
    names = observation_names(reg, CONFIG.slots)
    assert env.obs_dim == len(names) == len(set(names))
    assert env.reset(0).shape == (len(names),)
    for f in reg.observed_fields():
        assert f"s0.{f.key}" in names


def test_seed_shows_in_its_slot_entries(task: TaskData) -> None:
    reg = build_registry(CONFIG, Selection(only=()))
    env = make_env(reg, task)
    names = observation_names(reg, CONFIG.slots)
    env.reset(0)
    germ = reg.space.encode([{"op": "germinate", "slot": "s1", "blueprint": env.blueprints[0], "blend": "linear"}])
    obs = env.step(germ[0]).obs
    assert obs[names.index("s1.active")] == 1.0 and obs[names.index("s0.active")] == 0.0
    stage = env.lifecycle.stages[1]
    assert stage in (Stage.TRAINING, Stage.EMBARGOED)
    assert obs[names.index(f"s1.stage_{stage.name.lower()}")] == 1.0
    assert obs[names.index(f"s1.blueprint_{env.blueprints[0]}")] == float(stage is Stage.TRAINING)


# -- reward -----------------------------------------------------------------------------------


def test_reward_follows_its_definition(task: TaskData) -> None:
    config = EnvConfig(epochs=6, slots=3, train_size=32, val_size=16, param_rent=0.5)
    env = make_env(build_registry(config, Selection(only=())), task, config)
    env.reset(0)
    # No growth: the change in validation accuracy.
    assert env.reward(0.40, 0.55) == pytest.approx(0.15)
    # First epoch: measured against chance (10 classes).
    assert task.num_classes == 10
    assert env.reward(None, 0.55) == pytest.approx(0.45)
    # The host has grown by half its base size: rent 0.5 * 0.5.
    params = env.param_count()
    env.base_params = round(params / 1.5)
    growth = (params - env.base_params) / env.base_params
    assert growth == pytest.approx(0.5, abs=5e-3)  # the default host is small: rounding
    assert env.reward(0.40, 0.55) == pytest.approx(0.15 - 0.5 * growth)
    # The last step adds the final accuracy.
    env.epoch = config.epochs
    assert env.reward(0.40, 0.55) == pytest.approx(0.15 - 0.5 * growth + 0.55)


def test_episode_rewards_are_accuracy_deltas_plus_final(task: TaskData) -> None:
    reg = build_registry(CONFIG, Selection(only=()))
    env = make_env(reg, task)
    env.reset(0)
    rewards, accs = [], []
    while not env.done:
        r = env.step(wait(reg))
        rewards.append(r.reward)
        accs.append(r.epoch.val_accuracy)
    assert r.done and len(rewards) == CONFIG.epochs
    # No growth while waiting, so the return telescopes: final - chance, plus final again.
    assert sum(rewards) == pytest.approx(accs[-1] - 0.1 + accs[-1])
    with pytest.raises(RuntimeError, match="is over"):
        env.step(wait(reg))


def test_base_observation_reports_losses_accuracies_and_their_deltas(task: TaskData) -> None:
    registry = build_registry(CONFIG, Selection(only=()))
    names = observation_names(registry, CONFIG.slots)
    env = make_env(registry, task)
    env.reset(seed=0)
    results = [env.step(wait(registry)).epoch for _ in range(3)]
    obs = dict(zip(names, env.observe().tolist(), strict=True))
    last, prev = results[-1], results[-2]
    assert obs["val_loss"] == pytest.approx(last.val_loss)
    assert obs["val_accuracy"] == pytest.approx(last.val_accuracy)
    assert obs["delta_val_loss"] == pytest.approx(last.val_loss - prev.val_loss)
    assert obs["delta_val_accuracy"] == pytest.approx(last.val_accuracy - prev.val_accuracy)
    assert obs["delta_val_loss"] != 0.0  # a host that trains moves its loss
    assert obs["epoch_frac"] == pytest.approx(3 / CONFIG.epochs)
