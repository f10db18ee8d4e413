"""Probation: how long a fully blended seed may wait to be fossilized.

Choice at GERMINATE; effect on entering PROBATIONARY
(``knobs.probation_epochs``): if Tamiyo has not fossilized the seed after that
many epochs in PROBATIONARY, the kernel culls it with reason
``probation_timeout``. Short patience frees slots from undecided seeds; long
patience gives a slow-to-pay-off seed time to show a positive contribution.

Compile safety: the patience is counted by the Python lifecycle between
epochs; the forward pass never sees it.
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

HEAD = "probation"
CHOICES = ("SHORT", "STANDARD", "LONG")
EPOCHS = (3, 5, 8)


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=EPOCHS,
        default="STANDARD",
        ops={Op.GERMINATE},
        description="epochs a blended seed may wait in probation before it is culled",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # Patience that cannot run out before the episode ends means "never time
    # out", and every such choice means exactly that: keep the shortest of
    # them and mask the rest, so the policy does not spread its probability
    # over identical outcomes. Choices that do time out stay legal. The
    # earliest probation epoch: one GERMINATED, one TRAINING, and the kernel's
    # minimum blending epochs.
    earliest = 2 + Knobs().min_blend_epochs
    times_out = (earliest + torch.tensor(EPOCHS))[None, :] <= view.epochs_left[:, None]
    # EPOCHS ascend, so times_out is a prefix: legal = that prefix plus the next choice.
    n_times_out = times_out.sum(dim=1, keepdim=True)
    return {HEAD: torch.arange(len(EPOCHS))[None, :] <= n_times_out}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.PROBATIONARY and HEAD in seed.values:
        seed.knobs.probation_epochs = int(seed.values[HEAD])


def probation_epochs_remaining(ctx: FieldContext) -> float | None:
    """Epochs left before a probation timeout, counting from the end of this epoch."""
    seed = ctx.seed
    if seed is None:
        return None
    served = len(seed.metrics.epochs_in(Stage.PROBATIONARY))
    # A seed culled at this epoch's end by the timeout was still on probation during it.
    on_probation = seed.stage is Stage.PROBATIONARY or (
        bool(seed.metrics.stage) and seed.metrics.stage[-1] == Stage.PROBATIONARY
    )
    if not on_probation:
        return None
    return float(max(0, seed.knobs.probation_epochs - served))


def contribution_trend(ctx: FieldContext) -> float | None:
    """Least-squares slope of the counterfactual contribution per probation epoch."""
    seed = ctx.seed
    if seed is None:
        return None
    points = [
        (float(i), c)
        for i in seed.metrics.epochs_in(Stage.PROBATIONARY)
        if (c := seed.metrics.contribution[i]) is not None
    ]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField(
            "probation_epochs_remaining",
            "epochs left before the seed is culled for a probation timeout",
            probation_epochs_remaining,
            observed=True,
        ),
        TelemetryField(
            "contribution_trend",
            "least-squares slope of the counterfactual contribution over the probation epochs",
            contribution_trend,
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes when the Python lifecycle culls, never the forward pass")
