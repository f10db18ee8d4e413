"""Tempo: how many epochs a seed's alpha takes to ramp from 0 to 1.

Choice at GERMINATE; the kernel sets ``knobs.blend_steps`` on entering
BLENDING (declared on the head). A long ramp is gentler on the host but costs
epochs: a ramp whose last epoch, by the kernel's timeline (germination and
dwell included), would fall after the episode's end is masked out.

Compile safety: the ramp lands in the slot's 0-d ``alpha`` buffer.
"""

from __future__ import annotations

import esper_kernel as ek

HEAD = "tempo"
CHOICES = ("FAST", "STANDARD", "SLOW", "GLACIAL")
EPOCHS = (3, 5, 8, 12)
MILESTONES = (0.25, 0.5, 0.75, 1.0)

# until: the ramp's last epoch must fall inside the episode.
action_head = ek.returning(
    ek.HeadSpec(HEAD, CHOICES, EPOCHS, "STANDARD", {ek.Op.GERMINATE}, knob="blend_steps", on_enter=ek.Stage.BLENDING,
                until="blended", description="blending epochs: how fast alpha ramps from 0 to 1")
)  # fmt: skip
compile_safety = ek.returning(ek.CompileSafety(ek.Safety.NONE, "the alpha schedule only: a 0-d buffer"))


def blending_velocity(ctx: ek.FieldContext) -> float | None:
    """d alpha / d epoch over the last epoch."""
    alpha = ctx.seed.metrics.alpha if ctx.seed else []
    return alpha[-1] - alpha[-2] if len(alpha) >= 2 else None


def contribution_at_alpha_milestones(ctx: ek.FieldContext) -> float | None:
    """Counterfactual contribution at the last alpha milestone (0.25, 0.5, 0.75, 1.0) crossed."""
    if ctx.seed is None:
        return None
    last: float | None = None
    prev_alpha = 0.0
    for alpha, contrib in zip(ctx.seed.metrics.alpha, ctx.seed.metrics.contribution, strict=True):
        if contrib is not None and any(prev_alpha < m <= alpha for m in MILESTONES):
            last = contrib
        prev_alpha = alpha
    return last


telemetry_fields = ek.returning(
    [
        ek.TelemetryField("blending_velocity", "d alpha / d epoch", blending_velocity, observed=True),
        ek.TelemetryField(
            "contribution_at_alpha_milestones",
            "counterfactual contribution when alpha last crossed 0.25/0.5/0.75/1.0",
            contribution_at_alpha_milestones,
        ),
    ]
)
