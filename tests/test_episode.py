"""The one episode loop: observers hear every step, one can stop the episode, every command plays the same."""

from __future__ import annotations

import ast
from pathlib import Path

from esper_kernel.commands.evaluate import EvalJob, PolicySpec, play_episode
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.episode.loop import Observer, Step, play_batch
from esper_kernel.infra.telemetry import null_log
from esper_kernel.settings.config import converter
from esper_kernel.tamiyo.policies import RandomPolicy
from esper_kernel.tamiyo.train import evaluate_policy

TINY = EnvConfig(epochs=4, train_size=48, val_size=24, batch_size=16)
KERNEL = Path(__file__).resolve().parents[1] / "esper_kernel"


class Recorder(Observer):
    def __init__(self, stop_at: int | None = None) -> None:
        self.before: list[int] = []
        self.steps: list[Step] = []
        self.stop_at = stop_at

    def before_decision(self, t: int) -> None:
        self.before.append(t)

    def on_step(self, step: Step) -> bool:
        self.steps.append(step)
        return self.stop_at is None or step.t + 1 < self.stop_at


def _batch(seed: int) -> EnvBatch:
    reg = build_registry(TINY)
    return EnvBatch([MorphoEnv(TINY, reg, load_task(TINY, seed), null_log())])


def test_observers_hear_every_step_and_returns_add_up() -> None:
    batch = _batch(0)
    a, b = Recorder(), Recorder()
    (total,) = play_batch(batch, RandomPolicy(0), batch.reset([0]), [a, b])
    assert a.before == b.before == [0, 1, 2, 3]
    assert [s.t for s in a.steps] == [0, 1, 2, 3]
    assert a.steps[-1].returns == (total,)
    assert total == sum(s.transition.rewards[0] for s in a.steps)


def test_an_observer_stops_the_episode_and_the_others_still_hear_that_step() -> None:
    batch = _batch(0)
    stopper, other = Recorder(stop_at=2), Recorder()
    play_batch(batch, RandomPolicy(0), batch.reset([0]), [stopper, other])
    assert len(stopper.steps) == len(other.steps) == 2
    assert batch.envs[0].epoch == 2 and not batch.envs[0].done


def test_eval_and_ppo_evaluation_play_the_same_episode() -> None:
    # Both go through the one loop: the same policy on the same seed gives the same return.
    from_eval = play_episode(EvalJob(converter.unstructure(TINY), PolicySpec("random"), 3, None))
    (from_ppo_eval,) = evaluate_policy(RandomPolicy(3), TINY, build_registry(TINY), [3], null_log())
    assert from_ppo_eval == from_eval.ret


def test_outside_the_worker_rollout_no_module_steps_envs_in_a_loop_of_its_own() -> None:
    # An act -> step loop: a while/for loop whose body both decides (act) and steps envs (.step(); the
    # worker rollout answers each shard with send_step, on purpose not a lock-step loop.
    loops = []
    for path in sorted(KERNEL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.While | ast.For):
                body = ast.unparse(node)
                if ("act(" in body or "act_with_value(" in body) and ".step(" in body:
                    loops.append(f"{path.relative_to(KERNEL)}:{node.lineno}")
    assert [p.split(":")[0] for p in loops] == ["episode/loop.py"]
