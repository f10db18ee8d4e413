"""Steepness: how sharply a sigmoid blend ramps in around its midpoint.

Choice at GERMINATE, relevant only when the ``blend`` head chose ``sigmoid``
(``alpha_sigmoid`` is the only schedule that reads it); the kernel sets
``knobs.steepness`` on entering BLENDING (declared on the head). GENTLE is
close to the linear ramp; SHARP keeps alpha near 0 for longer, then switches
the seed in quickly. A seed that cannot reach BLENDING in the episode gets NORMAL only.

Compile safety: the schedule lands in the slot's 0-d ``alpha`` buffer.
"""

from __future__ import annotations

import esper_kernel as ek

HEAD = "steepness"
EARLY_ALPHA = 0.3  # the alpha at which a seed's contribution is first taken as a signal
SIGMOID = ek.HeadCondition("blend", ("sigmoid",))
action_head = ek.returning(
    ek.HeadSpec(HEAD, ("GENTLE", "NORMAL", "SHARP"), (0.5, 1.0, 2.0), "NORMAL", {ek.Op.GERMINATE}, SIGMOID,
                "sigmoid blend steepness: how abruptly alpha rises mid-ramp", "steepness", ek.Stage.BLENDING,
                until=ek.Stage.BLENDING)
)  # fmt: skip
compile_safety = ek.returning(ek.CompileSafety(ek.Safety.NONE, "only the alpha schedule, which lives in a 0-d buffer"))


def alpha_variance(ctx: ek.FieldContext) -> float | None:
    """Variance of the per-sample alpha over the last probe batch: only a gated blend varies it."""
    return ctx.latest("alpha_batch_var") if ctx.seed and ctx.seed.blend == "gated" else None


def early_contribution_signal(ctx: ek.FieldContext) -> float | None:
    """Counterfactual contribution at the first epoch whose alpha reached 0.3."""
    m = ctx.seed.metrics if ctx.seed else None
    pairs = zip(m.alpha, m.contribution, strict=True) if m else iter(())
    return next((contrib for alpha, contrib in pairs if alpha >= EARLY_ALPHA), None)


telemetry_fields = ek.returning(
    [
        ek.TelemetryField("alpha_variance", "per-sample alpha variance of a gated blend", alpha_variance),
        ek.TelemetryField(
            "early_contribution_signal",
            f"counterfactual contribution at the first epoch with alpha >= {EARLY_ALPHA}",
            early_contribution_signal,
        ),
    ]
)
