"""The epoch runner never lets one bad optimizer step ruin the host."""

from __future__ import annotations

import pytest
import torch

import esper_kernel.grow.training as training
from esper_kernel.compose.discovery import Selection
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.infra.telemetry import null_log

CONFIG = EnvConfig(epochs=3, train_size=64, val_size=32, batch_size=16)


def _env() -> MorphoEnv:
    reg = build_registry(CONFIG, Selection(only=()))
    env = MorphoEnv(CONFIG, reg, load_task(CONFIG, 0), null_log())
    EnvBatch([env]).reset([0])
    return env


def _wait(env: MorphoEnv) -> torch.Tensor:
    return env.registry.space.encode([{"op": "wait"}])[0]


def test_a_non_finite_step_is_skipped_and_the_host_stays_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env()
    real = training.task_loss
    calls = {"n": 0}

    def poisoned(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real(logits, y)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(training, "task_loss", poisoned)
    env.step(_wait(env))
    assert all(bool(torch.isfinite(p).all()) for p in env.host.parameters())
    assert env.acc_history[-1] > 0


def test_a_huge_step_is_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env()
    before = [p.detach().clone() for p in env.host.parameters()]
    real = training.task_loss
    monkeypatch.setattr(training, "task_loss", lambda logits, y: real(logits, y) * 1e6)
    env.runner.max_batches = 1
    env.step(_wait(env))
    # SGD with momentum from rest: the first step moves the weights by lr * grad, and the
    # clipped grad's norm is MAX_STEP_NORM at most.
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(env.host.parameters(), before, strict=True)))
    assert float(moved) <= CONFIG.host_lr * training.MAX_STEP_NORM * 1.01
