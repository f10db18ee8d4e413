"""Seed slots: the points in a host where seeds are grown, blended and fossilized.

A :class:`SeedSlot` sits where features of a fixed shape flow through the host.
It holds at most one *live* seed (still being trained and blended in) plus any
number of *fossils* (former seeds that became a permanent part of the host).

The blend state lives in 0-d tensor buffers rather than Python floats, so that
a schedule can change it every step (``buffer.fill_``) without a compiled host
recompiling: compiled graphs read buffers as inputs, but would specialise on,
and guard against changes to, Python numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from esper_kernel.compose import names

__all__ = [
    "BLENDS",
    "SeedSlot",
    "alpha_at",
    "alpha_linear",
    "alpha_sigmoid",
]

BLENDS: tuple[str, ...] = names.BLENDS
_TOPOLOGIES: tuple[str, ...] = names.TOPOLOGIES


def alpha_linear(step: int, total: int) -> float:
    """Linear ramp ``step / total`` clipped to ``[0, 1]``.

    ``total <= 0`` means "no ramp": the result is 1.0 for every step.
    """
    if total <= 0:
        return 1.0
    return min(1.0, max(0.0, step / total))


def _sigmoid(z: float) -> float:
    # Split by sign so math.exp never overflows for large |z|.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def alpha_sigmoid(step: int, total: int, steepness: float) -> float:
    """Sigmoid ramp from exactly 0 at ``step <= 0`` to exactly 1 at ``step >= total``.

    With ``k = 12 / total`` (so that ``steepness = 1`` spans +-6 logits over
    the ramp) and ``raw(s) = 1 / (1 + exp(-steepness * k * (s - total / 2)))``,
    the result for ``0 < step < total`` is::

        (raw(step) - raw(0)) / (raw(total) - raw(0))

    The renormalisation pins the endpoints exactly; the curve is symmetric
    about ``total / 2``, where it equals 0.5. Larger ``steepness`` gives a
    steeper middle and flatter ends; as ``steepness -> 0`` the curve tends to
    the linear ramp, which is returned when the renormaliser underflows.
    ``total <= 0`` means "no ramp" (always 1.0).

    Raises:
        ValueError: ``steepness`` is not a positive finite number.
    """
    if not (steepness > 0 and math.isfinite(steepness)):
        raise ValueError(f"steepness must be a positive finite number, got {steepness}")
    if total <= 0 or step >= total:
        return 1.0
    if step <= 0:
        return 0.0
    k = 12.0 / total
    mid = total / 2

    def raw(s: float) -> float:
        return _sigmoid(steepness * k * (s - mid))

    lo, hi = raw(0), raw(total)
    if hi - lo < 1e-12:
        return alpha_linear(step, total)
    return min(1.0, max(0.0, (raw(step) - lo) / (hi - lo)))


def alpha_at(blend: str, step: int, total: int, steepness: float) -> float:
    """Base alpha for ``blend`` at ``step`` of a ``total``-step ramp.

    ``"linear"`` -> :func:`alpha_linear`; ``"sigmoid"`` -> :func:`alpha_sigmoid`;
    ``"gated"`` -> :func:`alpha_linear` (its learned gate multiplies this base
    alpha per sample inside the slot). ``steepness`` is only used by
    ``"sigmoid"``.

    Raises:
        ValueError: unknown ``blend``.
    """
    if blend == "sigmoid":
        return alpha_sigmoid(step, total, steepness)
    if blend in ("linear", "gated"):
        return alpha_linear(step, total)
    raise ValueError(f"unknown blend {blend!r}; known: {', '.join(BLENDS)}")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a 0-d tensor.

    ``_ScaleGrad(x, 1 - isolate)`` equals the contract's
    ``x.detach() + (1 - isolate) * (x - x.detach())`` in value and gradient:
    exactly zero host gradient when isolated.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class _Blend(torch.autograd.Function):
    """``alpha * s`` forward; backward scales by ``alpha + incubate``.

    Equals the contract's ``alpha * s + incubate * (s - s.detach())`` in value
    and in the gradient to ``s``. Alpha and incubate are schedule buffers that
    receive no gradient.
    """

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, alpha: torch.Tensor, incubate: torch.Tensor) -> torch.Tensor:
        scale = alpha + incubate
        ctx.save_for_backward(scale)
        return s * alpha

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None


#: How large, relative to the features it is added to (RMS over the batch), an incubating seed's output
#: grows: the size of the step the seed has learned when blending starts to show it.
INCUBATION_REACH = 0.5


class _IncubationPull(torch.autograd.Function):
    """Identity forward; backward adds ``incubate * mu * s``, with ``mu = rms(grad) / (REACH * rms(x))``.

    While a seed incubates (alpha 0) its output changes nothing, so the task
    gradient it learns from is the linearised loss ``<g, s>``: it has no
    minimum, and the seed's output grows without bound (on MNIST-1D a
    dilated seed reached 1,000x the host's features in two epochs, and
    blending it in sent accuracy to chance). The pull is the gradient of a
    proximity term ``mu/2 * |s|^2`` that turns it into a trust region: its
    minimum is ``s = -g / mu``, the direction of steepest descent for the
    host's features at ``INCUBATION_REACH`` of their size, so the seed learns
    the step the features should take and how large it may be. ``mu`` is
    taken from the batch's own gradient and features, so it needs no tuning
    per task or loss scale. Blending (``incubate = 0``) trains on the real
    loss, whose curvature bounds the seed, and is untouched.
    """

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, x_rms: torch.Tensor, incubate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(s, x_rms, incubate)
        return s.view_as(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        s, x_rms, incubate = ctx.saved_tensors
        mu = torch.linalg.vector_norm(grad) / (INCUBATION_REACH * x_rms * math.sqrt(max(grad.numel(), 1)) + 1e-12)
        return grad + (incubate * mu) * s, None, None


def _structure(module: nn.Module) -> tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]:
    return tuple(
        (type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False))) for m in module.modules()
    )


class _SampleGate(nn.Module):
    """Learned alpha multiplier in ``(0, 1)``, broadcastable against the features.

    CNN features ``[B, C, H, W]`` are average-pooled to ``[B, C]``, giving one
    gate per sample (shape ``[B, 1, 1, 1]``). Transformer features
    ``[B, T, D]`` get one gate per token (shape ``[B, T, 1]``): pooling over
    time would let future tokens steer the gate at earlier positions and break
    the host's causality.

    The weight starts at zero and the bias at 0, so the initial gate is 0.5
    for every input.
    """

    def __init__(self, dim: int, topology: str) -> None:
        super().__init__()
        # Image and signal features pool over their spatial axes; token features keep time.
        self.pool_dims: tuple[int, ...] | None = {"cnn": (2, 3), "cnn1d": (2,)}.get(topology)
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_dims is not None:
            gate = torch.sigmoid(self.proj(x.mean(dim=self.pool_dims)))
            return gate.view(*gate.shape, *([1] * len(self.pool_dims)))
        return torch.sigmoid(self.proj(x))


class _GatedFossil(nn.Module):
    """A fossilized gated seed: ``gate(x) * seed(x)``, the seed at full alpha."""

    def __init__(self, seed: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.seed = seed
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.gate(x) * self.seed(x)
        return out


class SeedSlot(nn.Module):
    """A point in the host where one seed at a time can grow.

    Forward (this formula is the contract)::

        for f in fossils: x = x + f(x)
        if seed is None: return x                               # dormant: identity
        s_in = x.detach() + (1 - isolate) * (x - x.detach())    # isolate=1: no host grad
        s = seed(s_in)
        a = alpha            (* gate(s_in), broadcast, when blend == "gated")
        return x + a * s + incubate * (s - s.detach())

    ``s - s.detach()`` is zero in value but carries the seed's gradient, so
    with ``incubate = 1`` and ``alpha = 0`` the seed learns from the task loss
    while the host output stays bit-for-bit unchanged. While incubating, the
    seed's gradient also carries the incubation pull (:class:`_IncubationPull`,
    backward only: the forward values above are exact), which keeps its hidden
    output at about ``INCUBATION_REACH`` of the features' size.

    Attributes:
        dim: Channels (CNN) or model width (transformer) of the features.
        topology: ``"cnn"`` or ``"transformer"``.
        alpha: 0-d float buffer, the blend weight in ``[0, 1]``.
        isolate: 0-d float buffer; 1.0 blocks all host gradient through the seed
            path, 0.0 lets host and seed co-adapt.
        incubate: 0-d float buffer; 1.0 while the seed trains invisibly.
        seed: The live seed, or None when dormant.
        gate: The per-sample gate for the ``"gated"`` blend, else None.
        blend: The live seed's blend mode (meaningful only while a seed is live).
        fossils: Former seeds, applied in order with full weight.
        probe: When True (eager diagnostic batches only, never under
            ``torch.compile``), forward records ``probe_grad_norm`` (norm of the
            gradient the host receives through the seed path, filled in during
            backward) and, for the gated blend, ``probe_alpha_var`` (variance
            of the effective per-sample alpha).
    """

    alpha: torch.Tensor
    isolate: torch.Tensor
    incubate: torch.Tensor
    seed: nn.Module | None
    gate: nn.Module | None

    def __init__(self, dim: int, topology: str) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if topology not in _TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; known topologies: {', '.join(_TOPOLOGIES)}")
        self.dim = dim
        self.topology = topology
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("isolate", torch.ones(()))
        #: Mirrors ``isolate`` as a Python bool (set only by :meth:`set_isolation`), so eager code can branch on it
        #: without reading a device tensor.
        self._isolated = True
        self.register_buffer("incubate", torch.zeros(()))
        self.register_module("seed", None)
        self.register_module("gate", None)
        self.blend: str = "linear"
        self.fossils = nn.ModuleList()
        #: Optional transform of the seed's input (set from a lever's knob); a
        #: plain Python attribute, so setting it specializes a compiled graph.
        self.input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Diagnostics for one eager batch per epoch; never set under torch.compile.
        self.probe: bool = False
        #: Set only by :meth:`seed_skipped` (eager counterfactuals): the live seed is not run.
        self._seed_skipped = False
        self.probe_grad_norm: float = 0.0
        self.probe_alpha_var: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fossil in self.fossils:
            x = x + fossil(x)
        if self.seed is None or (not torch.compiler.is_compiling() and self._seed_skipped):
            return x
        if not torch.compiler.is_compiling() and self._isolated:
            # Isolated, eager: the seed's input gradient would be computed only to be
            # multiplied by 0, so the seed sees detached features and autograd skips it.
            # (Tested first, is_compiling() keeps Dynamo from ever reading, and guarding on, the
            # Python flag: a compiled graph reads the buffer, so isolation never recompiles.)
            s_in = x.detach()
            if self.probe:
                self.probe_grad_norm = 0.0
        else:
            # Same values and gradients as the contract's formula, in fewer
            # full-size ops: the scaling happens in backward only.
            s_in = _ScaleGrad.apply(x, 1 - self.isolate)  # type: ignore[no-untyped-call]
            if self.probe and s_in.requires_grad:
                s_in.register_hook(self._record_host_grad)
        if self.input_transform is not None:
            s_in = self.input_transform(s_in)
        s = self.seed(s_in)
        # The pull's scale: the features' RMS, detached (it sets a size, it is not trained on).
        x_rms = torch.linalg.vector_norm(x.detach()) / math.sqrt(max(x.numel(), 1))
        s = _IncubationPull.apply(s, x_rms, self.incubate)  # type: ignore[no-untyped-call]
        if self.gate is None:
            out: torch.Tensor = x + _Blend.apply(s, self.alpha, self.incubate)  # type: ignore[no-untyped-call]
            return out
        a = self.alpha * self.gate(s_in)
        if self.probe:
            self.probe_alpha_var = float(a.detach().var()) if a.numel() > 1 else 0.0
        out = x + a * s + self.incubate * (s - s.detach())
        return out

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A loaded buffer must not disagree with the flag the eager forward branches on.
        self._isolated = bool(self.isolate.item() != 0.0)

    def _record_host_grad(self, grad: torch.Tensor) -> None:
        # The seed input's gradient, scaled by ``1 - isolate`` on its way back,
        # is exactly what the host receives through the seed path.
        self.probe_grad_norm = float(torch.linalg.vector_norm(grad * (1 - self.isolate)))

    # ------------------------------------------------------------ lifecycle

    def germinate(self, module: nn.Module, blend: str) -> None:
        """Install ``module`` as the live seed, invisible and isolated.

        Sets ``alpha = 0``, ``incubate = 1``, ``isolate = 1`` and, for the
        ``"gated"`` blend, builds a fresh gate. The seed and gate are moved to
        the slot's device.

        Raises:
            RuntimeError: a seed is already live (fossilize or cull it first).
            ValueError: unknown ``blend``.
        """
        if self.seed is not None:
            raise RuntimeError("slot already holds a live seed; fossilize or cull it first")
        if blend not in BLENDS:
            raise ValueError(f"unknown blend {blend!r}; known: {', '.join(BLENDS)}")
        device = self.alpha.device
        self.seed = module.to(device=device)
        self.gate = _SampleGate(self.dim, self.topology).to(device=device) if blend == "gated" else None
        self.blend = blend
        self.set_alpha(0.0)
        self.set_incubate(True)
        self.set_isolation(True)

    def fossilize(self) -> None:
        """Make the live seed a permanent, fully weighted part of the host.

        The seed (wrapped with its gate for the ``"gated"`` blend) is appended
        to :attr:`fossils`, so the slot output afterwards equals the blended
        output at ``alpha = 1``. The slot returns to dormant.

        Raises:
            RuntimeError: no seed is live.
        """
        if self.seed is None:
            raise RuntimeError("no live seed to fossilize")
        fossil = self.seed if self.gate is None else _GatedFossil(self.seed, self.gate)
        self.fossils.append(fossil)
        self._clear()

    def cull(self) -> None:
        """Drop the live seed and its gate; their parameters leave the module.

        Raises:
            RuntimeError: no seed is live.
        """
        if self.seed is None:
            raise RuntimeError("no live seed to cull")
        self._clear()

    def _clear(self) -> None:
        self.input_transform = None
        self.seed = None
        self.gate = None
        self.blend = "linear"
        self.set_alpha(0.0)
        self.set_incubate(False)
        self.set_isolation(True)

    # ------------------------------------------------------------ blend state

    def set_alpha(self, a: float) -> None:
        """Set the blend weight in place (no recompilation).

        Raises:
            ValueError: ``a`` outside ``[0, 1]`` (or NaN).
        """
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {a}")
        self.alpha.fill_(a)

    def set_isolation(self, isolated: bool) -> None:
        """Block (True) or allow (False) host gradient through the seed path."""
        self.isolate.fill_(1.0 if isolated else 0.0)
        self._isolated = bool(isolated)

    def set_incubate(self, on: bool) -> None:
        """Turn the zero-valued gradient path to the seed on or off."""
        self.incubate.fill_(1.0 if on else 0.0)

    @contextmanager
    def alpha_forced(self, value: float) -> Iterator[None]:
        """Temporarily set ``alpha`` to ``value``, restoring it on exit.

        For counterfactual evaluation: under ``alpha_forced(0.0)`` the slot
        outputs exactly ``x`` plus its fossils, as if no seed were live (the
        incubate term is zero in value). In the ``"gated"`` blend the gate
        still multiplies the forced value. The original buffer value is
        restored even if the body raises.

        Raises:
            ValueError: ``value`` outside ``[0, 1]``.
        """
        saved = self.alpha.clone()
        self.set_alpha(value)
        try:
            yield
        finally:
            self.alpha.copy_(saved)

    @contextmanager
    def seed_skipped(self) -> Iterator[None]:
        """Temporarily output ``x`` plus the fossils without running the live seed (eager passes only).

        Under ``alpha_forced(0.0)`` that is the slot's output anyway (the seed's
        term is zero in value): a counterfactual pass need not compute it. A
        compiled graph never reads the flag, so it never recompiles for it.
        """
        self._seed_skipped = True
        try:
            yield
        finally:
            self._seed_skipped = False

    # ------------------------------------------------------------ inspection

    def seed_parameters(self) -> list[nn.Parameter]:
        """Parameters of the live seed and its gate (empty when dormant)."""
        params: list[nn.Parameter] = []
        if self.seed is not None:
            params.extend(self.seed.parameters())
        if self.gate is not None:
            params.extend(self.gate.parameters())
        return params

    def live_key(self) -> tuple[object, ...]:
        """``(seed structure or None, blend or None, fossil structures)``.

        Describes the modules the forward pass runs, i.e. what a compiled host
        must specialise on: two seeds of the same blueprint and width share a
        key (and a graph), a different blueprint does not. Blend-state buffers
        are deliberately absent.
        """
        live = self.seed is not None
        seed = _structure(self.seed) if self.seed is not None else None
        return (seed, self.blend if live else None, tuple(_structure(f) for f in self.fossils))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, topology={self.topology!r}, blend={self.blend!r}"
