"""Lr: the seed's learning rate as a multiple of the host's.

Choice at GERMINATE; effect from the very first epoch (``knobs.lr_scale``,
set on GERMINATED, which the kernel applies to the seed's optimizer param
group when it creates it). A fast rate lets a seed catch up with a host that
has trained for a while; it also risks exploding gradients, which G5 holds
against the seed for good.

Compile safety: the rate lives in the optimizer's param group, outside the
forward pass entirely.
"""

from __future__ import annotations

import torch

from esper_kernel import (
    CompileSafety,
    FieldContext,
    HeadSpec,
    Op,
    Safety,
    SeedState,
    Stage,
    TelemetryField,
    hookimpl,
)
from esper_kernel.actions import MaskView

HEAD = "lr"
CHOICES = ("CAUTIOUS", "STANDARD", "AGGRESSIVE")
SCALES = (0.5, 1.0, 2.0)


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=SCALES,
        default="STANDARD",
        ops={Op.GERMINATE},
        description="seed learning rate as a multiple of the host learning rate",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # No restriction, deliberately: the rate acts from the germination epoch
    # itself (the seed trains through the incubator path while invisible), so
    # every choice takes effect whenever germinating is legal at all, and the
    # view holds nothing (no gradient history exists for an unborn seed) that
    # says one rate is unsafe. Declared so the lever's legality is explicit.
    return {HEAD: view.ones(HEAD)}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.GERMINATED and HEAD in seed.values:
        seed.knobs.lr_scale = float(seed.values[HEAD])


def seed_loss_gradient(ctx: FieldContext) -> float | None:
    """Mean norm of the seed's loss gradient over the last epoch."""
    if ctx.seed is None or not ctx.seed.metrics.grad_norm:
        return None
    return ctx.seed.metrics.grad_norm[-1]


def seed_weight_magnitude(ctx: FieldContext) -> float | None:
    """Norm of all the seed's weights at the end of the last epoch."""
    if ctx.seed is None or not ctx.seed.metrics.weight_norm:
        return None
    return ctx.seed.metrics.weight_norm[-1]


def lr_stability_ratio(ctx: FieldContext) -> float | None:
    """Fraction of the seed's epochs without a gradient explosion (1.0 = never exploded)."""
    if ctx.seed is None or not ctx.seed.metrics.exploded:
        return None
    flags = ctx.seed.metrics.exploded
    return 1.0 - sum(flags) / len(flags)


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("seed_loss_gradient", "seed gradient norm over the epoch", seed_loss_gradient, observed=True),
        TelemetryField("seed_weight_magnitude", "norm of the seed's weights", seed_weight_magnitude),
        TelemetryField(
            "lr_stability_ratio", "fraction of the seed's epochs without a gradient explosion", lr_stability_ratio
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes the seed's optimizer param-group lr, outside the forward pass")
