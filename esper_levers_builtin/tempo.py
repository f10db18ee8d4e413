"""Tempo: how many epochs a seed's alpha takes to ramp from 0 to 1.

Choice at GERMINATE; effect on entering BLENDING (``knobs.blend_steps``).
A long ramp is gentler on the host but costs epochs, so choices that cannot
finish before the episode ends are masked out.
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

HEAD = "tempo"
CHOICES = ("FAST", "STANDARD", "SLOW", "GLACIAL")
EPOCHS = (3, 5, 8, 12)
MILESTONES = (0.25, 0.5, 0.75, 1.0)


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=EPOCHS,
        default="STANDARD",
        ops={Op.GERMINATE},
        description="blending epochs: how fast alpha ramps from 0 to 1",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # A ramp that cannot finish before the episode ends is meaningless; the
    # fastest choice stays legal so the row is never empty.
    m = torch.tensor(EPOCHS)[None, :] <= view.epochs_left[:, None]
    m[:, 0] = True
    return {HEAD: m}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.BLENDING and HEAD in seed.values:
        seed.knobs.blend_steps = int(seed.values[HEAD])


def blending_velocity(ctx: FieldContext) -> float | None:
    """d alpha / d epoch over the last epoch."""
    seed = ctx.seed
    if seed is None or len(seed.metrics.alpha) < 2:
        return None
    return seed.metrics.alpha[-1] - seed.metrics.alpha[-2]


def contribution_at_alpha_milestones(ctx: FieldContext) -> float | None:
    """Counterfactual contribution at the last alpha milestone (0.25, 0.5, 0.75, 1.0) crossed."""
    seed = ctx.seed
    if seed is None:
        return None
    last: float | None = None
    prev_alpha = 0.0
    for alpha, contrib in zip(seed.metrics.alpha, seed.metrics.contribution, strict=True):
        if contrib is not None and any(prev_alpha < m <= alpha for m in MILESTONES):
            last = contrib
        prev_alpha = alpha
    return last


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("blending_velocity", "d alpha / d epoch", blending_velocity, observed=True),
        TelemetryField(
            "contribution_at_alpha_milestones",
            "counterfactual contribution when alpha last crossed 0.25/0.5/0.75/1.0",
            contribution_at_alpha_milestones,
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes the alpha schedule, which lives in a 0-d buffer")
