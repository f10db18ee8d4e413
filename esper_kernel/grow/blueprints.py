"""Blueprints: recipes for seed modules that a host can grow.

A seed is a small residual *delta* module: it maps a host feature tensor to a
tensor of the same shape, which a :class:`~esper_kernel.grow.slots.SeedSlot` blends
into the host as ``x + alpha * seed(x)``. CNN seeds take ``[B, C, H, W]``;
transformer seeds take ``[B, T, D]``.

Every blueprint zero-initialises its final layer, so a fresh seed outputs
exactly zero and germination never changes what the host computes. The layers
before it are randomly initialised, so the final layer's gradient is non-zero
from the first step and the rest of the seed starts learning one step later.

Transformer seeds are all causal (per-token, causally masked, or left-padded),
because they sit inside a causal language model and must not leak future
tokens into past predictions.

All modules are ``torch.compile(fullgraph=True)``-clean: their forward passes
contain no data-dependent Python control flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_kernel.compose import names

__all__ = [
    "TOPOLOGIES",
    "Blueprint",
    "UnknownBlueprintError",
    "blueprint_names",
    "build_seed",
    "get_blueprint",
    "param_count",
]

TOPOLOGIES: tuple[str, ...] = names.TOPOLOGIES


class UnknownBlueprintError(KeyError, ValueError):
    """A blueprint name or topology that is not registered.

    Subclasses both :class:`KeyError` (it is a failed lookup) and
    :class:`ValueError` (it is usually a bad user-supplied argument), so either
    ``except`` clause catches it.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, wrapping it in quotes.
        return str(self.args[0]) if self.args else ""


@attrs.frozen
class Blueprint:
    """A named recipe for building one kind of seed module.

    Attributes:
        name: Short identifier, unique within its topology.
        topology: ``"cnn"`` or ``"transformer"``: the host family whose features
            the seed consumes.
        description: One line for humans (CLI listings, reports).
        factory: ``factory(dim, width_scale)`` builds a fresh seed for features
            with ``dim`` channels (CNN) or model width ``dim`` (transformer).
            ``width_scale`` multiplies internal hidden widths (never below one
            unit), so callers can ask for small/medium/large variants
            (e.g. 0.5 / 1.0 / 2.0).
        scalable: Whether ``width_scale`` changes the parameter count. False for
            blueprints with no hidden width (the ``norm`` blueprints).
    """

    name: str
    topology: str
    description: str
    factory: Callable[[int, float], nn.Module]
    scalable: bool = True

    def build(self, dim: int, width_scale: float = 1.0) -> nn.Module:
        """Build a fresh seed; see :func:`build_seed`."""
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not (width_scale > 0 and math.isfinite(width_scale)):
            raise ValueError(f"width_scale must be a positive finite number, got {width_scale}")
        return self.factory(dim, width_scale)


def param_count(module: nn.Module) -> int:
    """Number of scalar parameters in ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def _hidden(base: float, width_scale: float) -> int:
    """Hidden width ``round(base * width_scale)``, never below one unit."""
    return max(1, round(base * width_scale))


def _groups(channels: int, cap: int = 8) -> int:
    """Largest GroupNorm group count <= ``cap`` that divides ``channels``."""
    return max(g for g in range(1, min(cap, channels) + 1) if channels % g == 0)


def _zero_(layer: nn.Conv2d | nn.Conv1d | nn.Linear) -> None:
    """Zero a layer's weight and bias so the seed starts as an exact no-op."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv(cin: int, cout: int, k: int, *, dilation: int = 1, groups: int = 1, zero: bool = False) -> nn.Conv2d:
    """Same-padding 2-D convolution, optionally zero-initialised."""
    conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    if zero:
        _zero_(conv)
    return conv


def _linear(din: int, dout: int, *, bias: bool = True, zero: bool = False) -> nn.Linear:
    layer = nn.Linear(din, dout, bias=bias)
    if zero:
        _zero_(layer)
    return layer


# --------------------------------------------------------------------- CNN seeds


class _SqueezeExciteDelta(nn.Module):
    """Channel attention as a delta: ``x * tanh(fc2(relu(fc1(avgpool(x)))))``.

    ``tanh`` rather than the classic sigmoid because tanh(0) = 0, so the
    zero-initialised ``fc2`` makes the delta exactly zero while tanh'(0) = 1
    keeps the gradient to ``fc2`` at full strength.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = _linear(channels, hidden)
        self.fc2 = _linear(hidden, channels, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        scale = torch.tanh(self.fc2(F.relu(self.fc1(pooled))))
        return x * scale[:, :, None, None]


def _cnn_norm(c: int, ws: float) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(_groups(c), c), _conv(c, c, 1, zero=True))


def _cnn_attention(c: int, ws: float) -> nn.Module:
    return _SqueezeExciteDelta(c, _hidden(c / 4, ws))


def _cnn_depthwise(c: int, ws: float) -> nn.Module:
    h = _hidden(c, ws)
    return nn.Sequential(
        _conv(c, c, 3, groups=c),
        _conv(c, h, 1),
        nn.ReLU(),
        _conv(h, c, 1, zero=True),
    )


def _cnn_bottleneck(c: int, ws: float) -> nn.Module:
    h = _hidden(c / 4, ws)
    return nn.Sequential(
        _conv(c, h, 1),
        nn.ReLU(),
        _conv(h, h, 3),
        nn.ReLU(),
        _conv(h, c, 1, zero=True),
    )


def _cnn_conv_small(c: int, ws: float) -> nn.Module:
    h = _hidden(c / 2, ws)
    return nn.Sequential(_conv(c, h, 3), nn.ReLU(), _conv(h, c, 1, zero=True))


def _cnn_conv_light(c: int, ws: float) -> nn.Module:
    h = _hidden(c / 8, ws)
    return nn.Sequential(_conv(c, h, 1), nn.ReLU(), _conv(h, c, 3, zero=True))


def _cnn_conv_heavy(c: int, ws: float) -> nn.Module:
    h = _hidden(2 * c, ws)
    return nn.Sequential(
        _conv(c, h, 3),
        nn.GroupNorm(_groups(h), h),
        nn.ReLU(),
        _conv(h, h, 3),
        nn.GroupNorm(_groups(h), h),
        nn.ReLU(),
        _conv(h, c, 3, zero=True),
    )


def _cnn_dilated(c: int, ws: float) -> nn.Module:
    h = _hidden(c / 2, ws)
    return nn.Sequential(
        _conv(c, h, 3, dilation=2),
        nn.ReLU(),
        _conv(h, c, 3, dilation=2, zero=True),
    )


# ------------------------------------------------------------------ 1-D CNN seeds
# Signals ``[B, C, L]`` (MNIST-1D): the same recipes as the image seeds, one axis fewer.
# The spatial ones (dilated, wide, conv_small) widen the host's receptive field, which is
# what an under-capacity 1-D host lacks; norm and attention only rescale what it sees.


def _conv1(cin: int, cout: int, k: int, *, dilation: int = 1, groups: int = 1, zero: bool = False) -> nn.Conv1d:
    """Same-padding 1-D convolution, optionally zero-initialised."""
    conv = nn.Conv1d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    if zero:
        _zero_(conv)
    return conv


class _SqueezeExcite1dDelta(nn.Module):
    """Channel attention over a signal as a delta (see :class:`_SqueezeExciteDelta`)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = _linear(channels, hidden)
        self.fc2 = _linear(hidden, channels, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.tanh(self.fc2(F.relu(self.fc1(x.mean(dim=2)))))
        return x * scale[:, :, None]


def _c1_norm(c: int, ws: float) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(_groups(c), c), _conv1(c, c, 1, zero=True))


def _c1_attention(c: int, ws: float) -> nn.Module:
    return _SqueezeExcite1dDelta(c, _hidden(c / 4, ws))


def _c1_conv_small(c: int, ws: float) -> nn.Module:
    h = _hidden(c, ws)
    return nn.Sequential(_conv1(c, h, 3), nn.ReLU(), _conv1(h, c, 1, zero=True))


def _c1_wide(c: int, ws: float) -> nn.Module:
    h = _hidden(c, ws)
    return nn.Sequential(_conv1(c, h, 5), nn.ReLU(), _conv1(h, c, 5, zero=True))


def _c1_dilated(dilation: int) -> Callable[[int, float], nn.Module]:
    def factory(c: int, ws: float) -> nn.Module:
        h = _hidden(c, ws)
        return nn.Sequential(
            _conv1(c, h, 3, dilation=dilation),
            nn.ReLU(),
            _conv1(h, c, 3, dilation=dilation, zero=True),
        )

    return factory


def _c1_bottleneck(c: int, ws: float) -> nn.Module:
    h = _hidden(c / 2, ws)
    return nn.Sequential(_conv1(c, h, 1), nn.ReLU(), _conv1(h, h, 3), nn.ReLU(), _conv1(h, c, 1, zero=True))


# ------------------------------------------------------------- transformer seeds


class _LoRADelta(nn.Module):
    """Low-rank delta ``B(A(x))`` with ``B`` zero-initialised (as in LoRA)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = _linear(dim, rank, bias=False)
        self.up = _linear(rank, dim, bias=False, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out


class _CausalSelfAttentionDelta(nn.Module):
    """Single-head causal self-attention with a zero-initialised output projection."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = _linear(dim, 3 * inner)
        self.out = _linear(inner, dim, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        # SDPA wants a heads axis: [B, 1, T, inner].
        att = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True)
        out: torch.Tensor = self.out(att.squeeze(1))
        return out


class _CausalConv1dDelta(nn.Module):
    """Depthwise temporal convolution that only looks backwards in time.

    Left-padding by ``kernel - 1`` makes position ``t`` see ``t-kernel+1 .. t``
    and nothing later, which keeps the host a valid causal LM.
    """

    def __init__(self, dim: int, hidden: int, kernel: int = 4) -> None:
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(dim)
        self.proj_in = _linear(dim, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, groups=hidden)
        self.proj_out = _linear(hidden, dim, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x)).transpose(1, 2)  # [B, hidden, T]
        h = self.conv(F.pad(h, (self.kernel - 1, 0)))
        out: torch.Tensor = self.proj_out(F.gelu(h.transpose(1, 2)))
        return out


class _GatedMLPDelta(nn.Module):
    """SwiGLU-style MLP: ``W_out(silu(W_a x) * (W_b x))`` with ``W_out`` zeroed."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = _linear(dim, 2 * hidden)
        self.proj_out = _linear(hidden, dim, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        out: torch.Tensor = self.proj_out(F.silu(a) * b)
        return out


def _tf_norm(d: int, ws: float) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(d), _linear(d, d, zero=True))


def _tf_lora(rank: int) -> Callable[[int, float], nn.Module]:
    def factory(d: int, ws: float) -> nn.Module:
        return _LoRADelta(d, _hidden(rank, ws))

    return factory


def _tf_attention(d: int, ws: float) -> nn.Module:
    return _CausalSelfAttentionDelta(d, _hidden(d / 2, ws))


def _tf_mlp(mult: float) -> Callable[[int, float], nn.Module]:
    def factory(d: int, ws: float) -> nn.Module:
        h = _hidden(mult * d, ws)
        return nn.Sequential(nn.LayerNorm(d), _linear(d, h), nn.GELU(), _linear(h, d, zero=True))

    return factory


def _tf_conv1d(d: int, ws: float) -> nn.Module:
    return _CausalConv1dDelta(d, _hidden(d / 2, ws))


def _tf_gated_mlp(d: int, ws: float) -> nn.Module:
    return _GatedMLPDelta(d, _hidden(d, ws))


# -------------------------------------------------------------------- registry


def _registry(*blueprints: Blueprint) -> dict[str, Blueprint]:
    return {bp.name: bp for bp in blueprints}


_REGISTRY: dict[str, dict[str, Blueprint]] = {
    "cnn": _registry(
        Blueprint("norm", "cnn", "GroupNorm then zero-init 1x1 conv", _cnn_norm, scalable=False),
        Blueprint("attention", "cnn", "squeeze-excite channel attention (hidden C/4)", _cnn_attention),
        Blueprint("depthwise", "cnn", "depthwise 3x3 + pointwise MLP (hidden C)", _cnn_depthwise),
        Blueprint("bottleneck", "cnn", "1x1 -> 3x3 -> 1x1 bottleneck (hidden C/4)", _cnn_bottleneck),
        Blueprint("conv_small", "cnn", "3x3 conv -> 1x1 conv (hidden C/2)", _cnn_conv_small),
        Blueprint("conv_light", "cnn", "1x1 conv -> 3x3 conv (hidden C/8)", _cnn_conv_light),
        Blueprint("conv_heavy", "cnn", "three 3x3 convs with GroupNorm (hidden 2C)", _cnn_conv_heavy),
        Blueprint("dilated", "cnn", "two dilation-2 3x3 convs (hidden C/2)", _cnn_dilated),
    ),
    "cnn1d": _registry(
        Blueprint("norm", "cnn1d", "GroupNorm then zero-init 1-wide conv", _c1_norm, scalable=False),
        Blueprint("attention", "cnn1d", "squeeze-excite channel attention (hidden C/4)", _c1_attention),
        Blueprint("conv_small", "cnn1d", "3-wide conv -> 1-wide conv (hidden C)", _c1_conv_small),
        Blueprint("bottleneck", "cnn1d", "1 -> 3 -> 1-wide bottleneck (hidden C/2)", _c1_bottleneck),
        Blueprint("wide", "cnn1d", "two 5-wide convs (hidden C): +8 receptive field", _c1_wide),
        Blueprint("dilated", "cnn1d", "two dilation-2 3-wide convs (hidden C): +8 receptive field", _c1_dilated(2)),
        Blueprint("dilated4", "cnn1d", "two dilation-4 3-wide convs (hidden C): +16 receptive field", _c1_dilated(4)),
    ),
    "transformer": _registry(
        Blueprint("norm", "transformer", "LayerNorm then zero-init linear", _tf_norm, scalable=False),
        Blueprint("lora8", "transformer", "low-rank A.B delta, rank 8", _tf_lora(8)),
        Blueprint("lora32", "transformer", "low-rank A.B delta, rank 32", _tf_lora(32)),
        Blueprint(
            "attention",
            "transformer",
            "single-head causal self-attention (inner D/2)",
            _tf_attention,
        ),
        Blueprint("mlp_small", "transformer", "pre-LN GELU MLP (hidden D)", _tf_mlp(1.0)),
        Blueprint("mlp_large", "transformer", "pre-LN GELU MLP (hidden 4D)", _tf_mlp(4.0)),
        Blueprint(
            "conv1d",
            "transformer",
            "causal depthwise temporal conv, kernel 4 (hidden D/2)",
            _tf_conv1d,
        ),
        Blueprint("gated_mlp", "transformer", "SwiGLU MLP (hidden D)", _tf_gated_mlp),
    ),
}


if {t: tuple(r) for t, r in _REGISTRY.items()} != names.BLUEPRINTS:
    # The listing commands compose the blueprint head from esper_kernel.compose.names, without torch.
    raise RuntimeError("esper_kernel.compose.names.BLUEPRINTS must list exactly the blueprints built here, in order")


def _topology_registry(topology: str) -> dict[str, Blueprint]:
    try:
        return _REGISTRY[topology]
    except KeyError:
        raise UnknownBlueprintError(
            f"unknown topology {topology!r}; known topologies: {', '.join(TOPOLOGIES)}"
        ) from None


def blueprint_names(topology: str) -> tuple[str, ...]:
    """Names of the blueprints for ``topology``, in a stable documented order.

    Raises:
        UnknownBlueprintError: ``topology`` is not one of :data:`TOPOLOGIES`.
    """
    return tuple(_topology_registry(topology))


def get_blueprint(topology: str, name: str) -> Blueprint:
    """Look up one blueprint.

    Raises:
        UnknownBlueprintError: the topology or name is unknown; the message names
            the topology, the bad name and every known name.
    """
    registry = _topology_registry(topology)
    try:
        return registry[name]
    except KeyError:
        raise UnknownBlueprintError(f"unknown {topology} blueprint {name!r}; known: {', '.join(registry)}") from None


def build_seed(topology: str, name: str, dim: int, width_scale: float = 1.0) -> nn.Module:
    """Build a fresh, zero-output seed module.

    Args:
        topology: ``"cnn"`` or ``"transformer"``.
        name: A name from :func:`blueprint_names`.
        dim: Channels (CNN) or model width (transformer) of the features the
            seed reads and writes.
        width_scale: Multiplier on internal hidden widths (> 0).

    Raises:
        UnknownBlueprintError: unknown topology or name.
        ValueError: ``dim < 1`` or ``width_scale`` not a positive finite number.
    """
    return get_blueprint(topology, name).build(dim, width_scale)
