"""Blueprints: shape, exact zero at init, trainability, width scaling, lookup errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_kernel.grow.blueprints import (
    Blueprint,
    UnknownBlueprintError,
    blueprint_names,
    build_seed,
    get_blueprint,
    param_count,
)

CNN_NAMES = (
    "norm",
    "attention",
    "depthwise",
    "bottleneck",
    "conv_small",
    "conv_light",
    "conv_heavy",
    "dilated",
)
TF_NAMES = ("norm", "lora8", "lora32", "attention", "mlp_small", "mlp_large", "conv1d", "gated_mlp")
C1_NAMES = ("norm", "attention", "conv_small", "bottleneck", "wide", "dilated", "dilated4")
ALL = [("cnn", n) for n in CNN_NAMES] + [("cnn1d", n) for n in C1_NAMES] + [("transformer", n) for n in TF_NAMES]

CNN_DIM, TF_DIM = 16, 32


def _input(topology: str, batch: int = 2) -> torch.Tensor:
    if topology == "cnn":
        return torch.randn(batch, CNN_DIM, 6, 6)
    if topology == "cnn1d":
        return torch.randn(batch, CNN_DIM, 40)
    return torch.randn(batch, 5, TF_DIM)


def _dim(topology: str) -> int:
    return CNN_DIM if topology in ("cnn", "cnn1d") else TF_DIM


def test_names_are_the_documented_stable_order() -> None:
    assert blueprint_names("cnn") == CNN_NAMES
    assert blueprint_names("cnn1d") == C1_NAMES
    assert blueprint_names("transformer") == TF_NAMES


@pytest.mark.parametrize(("topology", "name"), ALL)
def test_fresh_seed_preserves_shape_and_outputs_exact_zero(topology: str, name: str) -> None:
    torch.manual_seed(0)
    seed = build_seed(topology, name, _dim(topology))
    x = _input(topology)
    out = seed(x)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize(("topology", "name"), ALL)
def test_seed_is_trainable_through_a_host_loss(topology: str, name: str) -> None:
    """A loss on ``x + seed(x)`` gives the zero-init seed a non-zero gradient, and
    one SGD step makes its output non-zero."""
    torch.manual_seed(0)
    seed = build_seed(topology, name, _dim(topology))
    x = _input(topology)
    target = torch.randn_like(x)
    loss = ((x + seed(x)) - target).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in seed.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for p in seed.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    assert seed(x).abs().sum() > 0


@pytest.mark.parametrize(("topology", "name"), ALL)
def test_width_scale_orders_parameter_counts(topology: str, name: str) -> None:
    counts = [param_count(build_seed(topology, name, _dim(topology), ws)) for ws in (0.5, 1.0, 2.0)]
    if get_blueprint(topology, name).scalable:
        assert counts[0] < counts[1] < counts[2]
    else:
        assert counts[0] == counts[1] == counts[2]


@pytest.mark.parametrize("name", TF_NAMES)
def test_transformer_seeds_are_causal(name: str) -> None:
    """Changing a future token must not change the seed's output at earlier positions."""
    torch.manual_seed(0)
    seed = build_seed("transformer", name, TF_DIM)
    with torch.no_grad():  # un-zero the last layer so the seed computes something
        for p in seed.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _input("transformer")
    y = x.clone()
    y[:, -1] += 1.0
    out_x, out_y = seed(x), seed(y)
    assert torch.equal(out_x[:, :-1], out_y[:, :-1])
    assert not torch.equal(out_x[:, -1], out_y[:, -1])


def test_tiny_width_scale_keeps_at_least_one_hidden_unit() -> None:
    seed = build_seed("cnn", "conv_light", 4, 0.01)
    x = torch.randn(1, 4, 3, 3)
    assert seed(x).shape == x.shape


def test_unknown_name_error_names_topology_bad_name_and_known_names() -> None:
    with pytest.raises(UnknownBlueprintError) as info:
        get_blueprint("transformer", "lora9")
    msg = str(info.value)
    assert "transformer" in msg and "'lora9'" in msg
    assert all(n in msg for n in TF_NAMES)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_unknown_topology_is_rejected() -> None:
    with pytest.raises(ValueError, match="rnn"):
        build_seed("rnn", "norm", 8)


@pytest.mark.parametrize(("dim", "ws"), [(0, 1.0), (8, 0.0), (8, -1.0), (8, float("nan"))])
def test_bad_dim_or_width_scale_is_rejected(dim: int, ws: float) -> None:
    with pytest.raises(ValueError):
        build_seed("cnn", "conv_small", dim, ws)


def test_blueprint_is_frozen_and_factory_is_used() -> None:
    bp = get_blueprint("cnn", "norm")
    with pytest.raises(AttributeError):
        bp.name = "x"  # type: ignore[misc]
    custom = Blueprint("id", "cnn", "identity-shaped test seed", lambda d, ws: nn.Conv2d(d, d, 1))
    assert isinstance(custom.build(3), nn.Conv2d)


def test_param_count_counts_scalars() -> None:
    assert param_count(nn.Linear(3, 2)) == 8
