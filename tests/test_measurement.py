"""The cheaper measurements give exactly what the expensive ones gave."""

from __future__ import annotations

import pytest
import torch

import esper_kernel.grow.optim as optim
import esper_kernel.grow.training as training
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.stages import Stage
from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.infra.telemetry import null_log


def _blending(config: EnvConfig, slot: int, blueprint: str) -> MorphoEnv:
    """An env whose seed in ``slot`` is blending at alpha 0.5, with random weights."""
    env = MorphoEnv(config, build_registry(config, Selection()), load_task(config, 0), null_log())
    env.reset(0)
    space = env.registry.space
    env.step(space.encode([{"op": "germinate", "slot": f"s{slot}", "blueprint": blueprint}])[0])
    seed = env.lifecycle.seeds[slot]
    assert seed is not None
    for stage in (Stage.TRAINING, Stage.BLENDING):
        if seed.stage is not stage:
            env.lifecycle._move(seed, stage, env.epoch, "test")
    env.lifecycle.slots[slot].set_alpha(0.5)
    # Seeds start with a zero output; random weights make this one change the predictions.
    gen = torch.Generator().manual_seed(slot)
    with torch.no_grad():
        for p in env.lifecycle.slots[slot].seed_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    env.host.eval()
    return env


@pytest.mark.parametrize(
    ("task", "blueprint"), [("pairs", "conv_small"), ("pairs", "depthwise"), ("sequences", "mlp_small")]
)
def test_a_counterfactual_from_the_slot_equals_a_whole_pass(task: str, blueprint: str) -> None:
    config = EnvConfig(task=task, epochs=6, train_size=64, val_size=48, batch_size=16)
    for slot in range(config.slots):
        env = _blending(config, slot, blueprint)
        runner, host, bs = env.runner, env.host, config.batch_size
        _, acc = runner._validate([slot])
        kept = runner._slot_inputs
        assert kept is not None and len(kept[slot]) == 3  # one input per validation batch
        cheap = runner._contribution(slot, Stage.BLENDING, acc)
        runner._slot_inputs = None
        assert cheap == runner._contribution(slot, Stage.BLENDING, acc), (task, slot)
        # Logits too, bit for bit: from the slot on over the kept inputs, the seed not run, as a whole pass.
        val = list(env.task.val_batches(bs))
        slot_module = env.lifecycle.slots[slot]
        with torch.no_grad():
            with_seed = torch.cat([host(x) for x, _ in val])
            with slot_module.alpha_forced(0.0):
                whole = torch.cat([host(x) for x, _ in val])
                with slot_module.seed_skipped():
                    from_slot = torch.cat([host.forward_from(slot, h) for h in kept[slot]])
        assert torch.equal(from_slot, whole), (task, slot)
        assert not torch.equal(with_seed, whole)  # the seed matters: the equality is not trivial


def test_slot_inputs_over_the_budget_fall_back_to_whole_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EnvConfig(epochs=6, train_size=64, val_size=48, batch_size=16)
    env = _blending(config, 0, "conv_small")
    monkeypatch.setattr(training, "CACHE_BYTES", 0)
    env.runner._validate([0])
    assert env.runner._slot_inputs is None


def test_one_norm_pass_gives_the_norms_and_the_clipping_of_separate_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EnvConfig(epochs=4, train_size=64, val_size=32, batch_size=16)
    env = _blending(config, 1, "conv_small")
    runner, host = env.runner, env.host
    host.train()
    x, y = env.task.train_x[:16], env.task.train_y[:16]
    training.task_loss(host(x) * 50.0, y).backward()  # type: ignore[no-untyped-call]
    trained = runner.optimizer.parameters()
    host_params = host.host_parameters()
    seed_params = {1: env.lifecycle.slots[1].seed_parameters()}
    raw = [None if p.grad is None else p.grad.clone() for p in trained]

    # The separate passes the runner made before: host, seed, then clip_grad_norm_ over everything.
    host_norm, seed_norm = optim._grad_norm(host_params), optim._grad_norm(seed_params[1])
    old_total = torch.nn.utils.clip_grad_norm_(trained, training.MAX_STEP_NORM)
    old_clipped = [None if p.grad is None else p.grad.clone() for p in trained]
    assert float(old_total) > training.MAX_STEP_NORM  # the step is clipped: the scaling path runs

    for p, g in zip(trained, raw, strict=True):
        p.grad = None if g is None else g.clone()
    norms = training.StepNorms(trained, host_params, seed_params, torch.device("cpu"))
    total = norms.measure()
    assert torch.equal(total, old_total)
    assert torch.equal(norms.sums[None], host_norm) and torch.equal(norms.sums[1], seed_norm)
    monkeypatch.setattr(runner.optimizer, "step", lambda: None)  # keep the clipped gradients to compare
    runner._guarded_step(trained, total)
    for p, g in zip(trained, old_clipped, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
