"""Isolation strength: how much of the host's gradient through a seed is let through.

The kernel's isolation is binary: the seed path either carries the host's
gradient (co-adaptation) or blocks it. This lever makes it continuous. Tamiyo
picks a strength per seed at GERMINATE: NONE (0.0, the gradient passes
unchanged), HALF (0.5) or MOST (0.9). On entering GERMINATED the lever names
:func:`scale_gradient` as the seed's input transform
(``knobs.seed_input_transform``) with ``{"strength": s}``; the kernel applies
it to the seed's input while the seed is live. It is the identity in the
forward pass, so the seed computes exactly what it would otherwise; in the
backward pass it scales the gradient flowing into the host through the seed
by ``1 - strength``. Whether that path is open at all is still the kernel's
(and the ``isolation`` lever's) decision: strength attenuates an open path.

A non-finite gradient arriving through the seed path is dropped rather than
scaled, so a diverging seed cannot poison the host. That check reads the
gradient norm into Python (``.item()``) and branches on it, which Dynamo
cannot capture: the lever declares BREAKS_GRAPH, and ``esper run --compile``
refuses it unless ``--allow-graph-breaks`` is given.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from esper_kernel import (
    CompileSafety,
    FieldContext,
    HeadSpec,
    MaskView,
    Op,
    Safety,
    SeedState,
    Stage,
    TelemetryField,
    hookimpl,
)

HEAD = "isolation_strength"
CHOICES = ("NONE", "HALF", "MOST")
STRENGTHS = (0.0, 0.5, 0.9)
TRANSFORM = f"{__name__}:scale_gradient"
#: The knobs this lever's hook writes (it installs a transform, not just a value).
writes = ("seed_input_transform", "seed_input_kwargs")


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``1 - strength`` (drops it if non-finite)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.keep = 1.0 - strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # A Python branch on the gradient's value: the reason this lever breaks the graph.
        if not math.isfinite(torch.linalg.vector_norm(grad).item()):
            return torch.zeros_like(grad), None
        return grad * ctx.keep, None


def scale_gradient(x: torch.Tensor, strength: float = 0.0) -> torch.Tensor:
    """The seed input transform: ``x`` unchanged, its gradient scaled by ``1 - strength``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"isolation strength must be in [0, 1], got {strength}")
    out: torch.Tensor = _ScaleGradient.apply(x, float(strength))
    return out


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=STRENGTHS,
        default="NONE",
        ops={Op.GERMINATE},
        description="share of the host gradient through the seed path that is blocked: 0, 0.5 or 0.9",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # The path only opens from BLENDING on; a seed that cannot get there has nothing to attenuate.
    m = view.ones(HEAD)
    m[:, 1:] &= (view.left_after(Stage.BLENDING) >= 0)[:, None]
    return {HEAD: m}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is not Stage.GERMINATED or HEAD not in seed.values:
        return
    strength = float(seed.values[HEAD])
    if strength > 0.0:  # NONE installs nothing: its seed's host graph stays whole
        seed.knobs.seed_input_transform = TRANSFORM
        seed.knobs.seed_input_kwargs = {"strength": strength}


def strength(ctx: FieldContext) -> float | None:
    """The isolation strength of the seed in this slot (0 when no transform is installed)."""
    if ctx.seed is None:
        return None
    return float(ctx.seed.knobs.seed_input_kwargs.get("strength", 0.0))


def host_grad_via_seed(ctx: FieldContext) -> float | None:
    """Norm of the (attenuated) gradient the host received through the seed path last epoch."""
    seed = ctx.seed
    if seed is None or not seed.metrics.host_grad_via_seed:
        return None
    return seed.metrics.host_grad_via_seed[-1]


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("strength", "share of the seed-path host gradient blocked", strength, observed=True),
        TelemetryField(
            "host_grad_via_seed", "host gradient norm through the seed path after scaling", host_grad_via_seed
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(
        Safety.BREAKS_GRAPH,
        "the seed-input transform's backward reads the gradient norm with .item() and branches on it "
        "(non-finite gradients are dropped), which Dynamo cannot capture: the host graph splits at the seed input",
    )
