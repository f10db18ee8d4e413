"""Dwell: how many epochs a seed trains invisibly before gate G2 is tried.

Choice at GERMINATE; effect on entering TRAINING (``knobs.dwell_epochs``):
the seed spends exactly that many epochs in TRAINING before G2 (is the seed
learning?) is first evaluated. A short dwell blends sooner but judges the
seed on little evidence; a long one costs epochs. A dwell that leaves no time
to finish blending before the episode ends is masked out.

Compile safety: the dwell is read only by the lifecycle engine in Python,
between epochs; the compiled forward pass never sees it.
"""

from __future__ import annotations

import torch

from esper_kernel import (
    CompileSafety,
    FieldContext,
    HeadSpec,
    Knobs,
    Op,
    Safety,
    SeedState,
    Stage,
    TelemetryField,
    hookimpl,
)
from esper_kernel.actions import MaskView

HEAD = "dwell"
CHOICES = ("MINIMAL", "SHORT", "STANDARD", "EXTENDED")
EPOCHS = (1, 2, 3, 5)
#: The germination epoch itself: G1 runs at its end, TRAINING starts the epoch after.
_GERMINATED_EPOCHS = 1


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=EPOCHS,
        default="STANDARD",
        ops={Op.GERMINATE},
        description="epochs a seed trains before gate G2 may move it to blending",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # G3 cannot pass before the kernel's minimum blending epochs, so a dwell
    # that leaves fewer than that many epochs after training can never get the
    # seed blended in: it only burns the slot. The shortest dwell stays legal
    # so the row is never empty.
    min_blend = Knobs().min_blend_epochs
    need = _GERMINATED_EPOCHS + torch.tensor(EPOCHS) + min_blend
    m = need[None, :] <= view.epochs_left[:, None]
    m[:, 0] = True
    return {HEAD: m}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.TRAINING and HEAD in seed.values:
        seed.knobs.dwell_epochs = int(seed.values[HEAD])


def training_gradient_stability(ctx: FieldContext) -> float | None:
    """Variance of the seed's gradient norm across its TRAINING epochs (low = settled)."""
    seed = ctx.seed
    if seed is None:
        return None
    norms = [seed.metrics.grad_norm[i] for i in seed.metrics.epochs_in(Stage.TRAINING)]
    # One epoch has no spread to speak of; 0.0 would claim a stability nobody measured.
    if len(norms) < 2:
        return None
    # Plain float arithmetic: statistics.pvariance works in exact Fractions,
    # which made this one field a third of all per-epoch lever work.
    mean = sum(norms) / len(norms)
    return sum((n - mean) ** 2 for n in norms) / len(norms)


def g2_headroom(ctx: FieldContext) -> float | None:
    """Last gradient ratio minus the G2 threshold: > 0 means G2 would pass now."""
    seed = ctx.seed
    if seed is None or not seed.metrics.grad_ratio:
        return None
    # After G2 the gate no longer applies; reporting a margin then would mislead.
    if seed.metrics.stage[-1] not in (Stage.GERMINATED, Stage.TRAINING):
        return None
    return seed.metrics.grad_ratio[-1] - seed.knobs.g2_threshold


def early_accuracy_signal(ctx: FieldContext) -> float | None:
    """Validation accuracy now minus at the end of the germination epoch.

    During that first epoch the seed's alpha is 0, so it is the host's own
    accuracy: the difference is what has happened since the seed arrived.
    """
    seed = ctx.seed
    if seed is None or not seed.metrics.val_accuracy:
        return None
    return seed.metrics.val_accuracy[-1] - seed.metrics.val_accuracy[0]


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField(
            "training_gradient_stability",
            "variance of the seed gradient norm across its TRAINING epochs",
            training_gradient_stability,
            observed=True,
        ),
        TelemetryField("g2_headroom", "seed/host gradient ratio minus the G2 threshold", g2_headroom, observed=True),
        TelemetryField("early_accuracy_signal", "validation accuracy change since germination", early_accuracy_signal),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes when the Python lifecycle evaluates G2, never the forward pass")
