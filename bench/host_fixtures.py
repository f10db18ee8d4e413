"""The default CNN host and a batch of its task, for the forward+backward figures."""

from __future__ import annotations

import torch
from torch import nn

from esper_kernel.episode.env import EnvConfig, cnn_host_config, load_task
from esper_kernel.grow.hosts import CNNHost
from esper_kernel.grow.training import task_loss


def default_host(seed: int = 0) -> CNNHost:
    cfg = EnvConfig()
    torch.manual_seed(seed)
    return CNNHost(cnn_host_config(cfg, 10))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = EnvConfig()
    task = load_task(cfg, seed)
    x, y = next(iter(task.batches(cfg.batch_size, torch.Generator().manual_seed(seed))))
    return x, y


def fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step's forward and backward (no optimizer step: it is the same on both sides)."""
    model.zero_grad(set_to_none=True)
    task_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
