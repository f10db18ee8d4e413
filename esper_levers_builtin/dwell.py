"""Dwell: how many epochs a seed trains invisibly before gate G2 is tried.

Choice at GERMINATE; the kernel sets ``knobs.dwell_epochs`` on entering
TRAINING (declared on the head): the seed spends exactly that many epochs in
TRAINING before G2 (is the seed learning?) is first evaluated. A short dwell
blends sooner but judges the seed on little evidence; a long one costs epochs.
A dwell that leaves no time to finish blending (by the kernel's timeline) is masked.

Compile safety: read only by the Python lifecycle, between epochs.
"""

from __future__ import annotations

import esper_kernel as ek

HEAD = "dwell"
EPOCHS = {"MINIMAL": 1, "SHORT": 2, "STANDARD": 3, "EXTENDED": 5}
WHAT = "epochs a seed trains before gate G2 may move it to blending"
SAFETY = ek.CompileSafety(ek.Safety.NONE, "read only when the lifecycle evaluates G2, between epochs")

# Masked by when the ramp could end, with the quickest tempo any active lever offers: both are chosen together.
action_head = ek.returning(ek.HeadSpec(HEAD, tuple(EPOCHS), tuple(EPOCHS.values()), "STANDARD", {ek.Op.GERMINATE},
                                       None, WHAT, "dwell_epochs", ek.Stage.TRAINING, "blended"))  # fmt: skip
compile_safety = ek.returning(SAFETY)


def training_gradient_stability(ctx: ek.FieldContext) -> float | None:
    """Variance of the seed's gradient norm across its TRAINING epochs (low = settled)."""
    m = ctx.seed.metrics if ctx.seed else None
    norms = [m.grad_norm[i] for i in m.epochs_in(ek.Stage.TRAINING)] if m else []
    # One epoch has no spread; plain floats, as statistics.pvariance works in slow exact Fractions.
    mean = sum(norms) / max(len(norms), 1)
    return sum((n - mean) ** 2 for n in norms) / len(norms) if len(norms) >= 2 else None


def g2_headroom(ctx: ek.FieldContext) -> float | None:
    """Last gradient ratio minus the G2 threshold, while G2 still applies: > 0 means it would pass now."""
    seed = ctx.seed
    if seed is None or not seed.metrics.grad_ratio or seed.metrics.stage[-1] > ek.Stage.TRAINING:
        return None
    return seed.metrics.grad_ratio[-1] - seed.knobs.g2_threshold


def early_accuracy_signal(ctx: ek.FieldContext) -> float | None:
    """Validation accuracy now minus at the end of the germination epoch (alpha 0: the host's own)."""
    acc = ctx.seed.metrics.val_accuracy if ctx.seed else []
    return acc[-1] - acc[0] if acc else None


stability = "variance of the seed gradient norm across its TRAINING epochs"
telemetry_fields = ek.returning(
    [
        ek.TelemetryField("training_gradient_stability", stability, training_gradient_stability, observed=True),
        ek.TelemetryField("g2_headroom", "seed/host gradient ratio minus the G2 threshold", g2_headroom, observed=True),
        ek.TelemetryField("early_accuracy_signal", "val accuracy change since germination", early_accuracy_signal),
    ]
)
