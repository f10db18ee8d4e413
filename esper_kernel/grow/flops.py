"""Training FLOPs, estimated from the modules a forward pass runs (for the accuracy-for-compute frontier).

One forward pass over one example is traced with hooks: a convolution costs
``2 * out.numel() * in_channels / groups * kernel`` FLOPs, a linear layer
``2 * out.numel() * in_features``, causal self-attention ``2 * 2 * T * T * D``
(scores and weighted sum; ``T * window`` for a windowed host, none with
window 1). Norms, activations and pooling are not counted (they are a few
per cent of these). A training step costs about three forward passes
(forward, and the backward's two products), so an epoch costs
``3 * forward * n_train + forward * n_val``. Every live seed is in the forward
pass (a dormant slot runs nothing), so a growing host's cost rises as it grows.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["epoch_flops", "forward_flops"]


def _is_attention(module: nn.Module) -> bool:
    return type(module).__name__ in ("_CausalSelfAttention", "_CausalSelfAttentionDelta")


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of ``model`` on one example (``example`` has a batch axis of 1)."""
    total = 0

    def conv(module: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv1d | nn.Conv2d)
        k = 1
        for s in module.kernel_size:
            k *= s
        total += 2 * out.numel() * (module.in_channels // module.groups) * k

    def linear(module: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += 2 * out.numel() * module.in_features

    def attention(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        b, t, d = inp[0].shape
        # A windowed host attends to at most `window` positions (a host with window 1 to none but itself).
        window = getattr(m, "window", None)
        seen = t if window is None else min(t, int(window))
        total += 0 if seen == 1 else 4 * b * t * seen * d

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            handles.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
        elif _is_attention(module):
            handles.append(module.register_forward_hook(attention))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def epoch_flops(model: nn.Module, example: torch.Tensor, n_train: int, n_val: int) -> int:
    """Estimated FLOPs of one epoch: ``n_train`` training steps' worth (3 passes) and ``n_val`` evaluations."""
    f = forward_flops(model, example)
    return 3 * f * n_train + f * n_val
