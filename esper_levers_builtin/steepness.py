"""Steepness: how sharply a sigmoid blend ramps in around its midpoint.

Choice at GERMINATE, relevant only when the ``blend`` head chose ``sigmoid``
(``alpha_sigmoid`` is the only schedule that reads it); effect on entering
BLENDING (``knobs.steepness``). GENTLE is close to the linear ramp; SHARP
keeps alpha near 0 for longer, then switches the seed in quickly. With any
other blend the head is not sampled and the knob stays at the kernel's 1.0.

Compile safety: the schedule is computed in Python between epochs and lands
in the slot's 0-d ``alpha`` buffer.
"""

from __future__ import annotations

import torch

from esper_kernel import (
    CompileSafety,
    FieldContext,
    HeadCondition,
    HeadSpec,
    Op,
    Safety,
    SeedState,
    Stage,
    TelemetryField,
    hookimpl,
)
from esper_kernel.actions import MaskView

HEAD = "steepness"
CHOICES = ("GENTLE", "NORMAL", "SHARP")
VALUES = (0.5, 1.0, 2.0)
#: Epochs before the earliest possible BLENDING epoch: one GERMINATED, at least one TRAINING.
_EPOCHS_BEFORE_BLENDING = 2
#: The alpha at which a seed's contribution is first taken as a signal.
EARLY_ALPHA = 0.3


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=VALUES,
        default="NORMAL",
        ops={Op.GERMINATE},
        condition=HeadCondition("blend", ("sigmoid",)),
        description="sigmoid blend steepness: how abruptly alpha rises mid-ramp",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # The curve's shape shows only in blending epochs; a seed germinated too
    # late never blends, so only NORMAL (the kernel's own curve) stays legal.
    m = view.ones(HEAD)
    can_blend = view.epochs_left > _EPOCHS_BEFORE_BLENDING
    m[:, 0] &= can_blend
    m[:, 2] &= can_blend
    return {HEAD: m}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.BLENDING and HEAD in seed.values:
        seed.knobs.steepness = float(seed.values[HEAD])


def alpha_variance(ctx: FieldContext) -> float | None:
    """Variance of the per-sample alpha over the last epoch's probe batch (gated blends only)."""
    seed = ctx.seed
    # Only the gated blend varies alpha per sample; elsewhere the variance is 0 by construction.
    if seed is None or seed.blend != "gated" or not seed.metrics.alpha_batch_var:
        return None
    return seed.metrics.alpha_batch_var[-1]


def early_contribution_signal(ctx: FieldContext) -> float | None:
    """Counterfactual contribution at the first epoch whose alpha reached 0.3."""
    seed = ctx.seed
    if seed is None:
        return None
    for alpha, contrib in zip(seed.metrics.alpha, seed.metrics.contribution, strict=True):
        if alpha >= EARLY_ALPHA:
            return contrib
    return None


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("alpha_variance", "per-sample alpha variance of a gated blend", alpha_variance),
        TelemetryField(
            "early_contribution_signal",
            f"counterfactual contribution at the first epoch with alpha >= {EARLY_ALPHA}",
            early_contribution_signal,
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes the alpha schedule, which lives in a 0-d buffer")
