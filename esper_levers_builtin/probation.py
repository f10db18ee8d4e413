"""Probation: how long a fully blended seed may wait to be fossilized.

Choice at GERMINATE; the kernel sets ``knobs.probation_epochs`` on entering
PROBATIONARY (declared on the head): if Tamiyo has not fossilized the seed
after that many epochs there, the kernel culls it (``probation_timeout``).
Short patience frees slots from undecided seeds; long patience gives a
slow-to-pay-off seed time to show a positive contribution.

Compile safety: counted by the Python lifecycle; the forward pass never sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import esper_kernel as ek

if TYPE_CHECKING:  # a mask returns tensors, but listing the lever must not import torch
    import torch

HEAD = "probation"
CHOICES = ("SHORT", "STANDARD", "LONG")
EPOCHS = (3, 5, 8)
PATIENCE = "epochs a blended seed may wait in probation before it is culled"

action_head = ek.returning(
    ek.HeadSpec(HEAD, CHOICES, EPOCHS, "STANDARD", {ek.Op.GERMINATE}, None, PATIENCE, "probation_epochs",
                ek.Stage.PROBATIONARY)
)  # fmt: skip
compile_safety = ek.returning(ek.CompileSafety(ek.Safety.NONE, "only read by the Python lifecycle when it culls"))


@ek.hookimpl
def mask(view: ek.MaskView) -> dict[str, torch.Tensor]:
    # Patience that cannot run out in the episode means "never time out", and
    # all such choices mean exactly that: the shortest stays, the rest are
    # masked, so the policy does not spread its probability over one outcome.
    times_out = view.left_after_each(HEAD, "timeout") >= 0
    # EPOCHS ascend, so times_out is a prefix: legal = that prefix plus the next choice.
    legal = times_out.roll(1, dims=1)
    legal[:, 0] = True
    return {HEAD: legal}


def probation_epochs_remaining(ctx: ek.FieldContext) -> float | None:
    """Epochs left before a probation timeout, counting from the end of this epoch."""
    seed = ctx.seed
    # A seed culled at this epoch's end by the timeout was still on probation during it.
    if seed is None or ek.Stage.PROBATIONARY not in (seed.stage, *seed.metrics.stage[-1:]):
        return None
    return float(max(0, seed.knobs.probation_epochs - len(seed.metrics.epochs_in(ek.Stage.PROBATIONARY))))


def contribution_trend(ctx: ek.FieldContext) -> float | None:
    """Least-squares slope of the counterfactual contribution per probation epoch."""
    m = ctx.seed.metrics if ctx.seed else None
    on_probation = m.epochs_in(ek.Stage.PROBATIONARY) if m else []
    points = [(float(i), c) for i in on_probation if m and (c := m.contribution[i]) is not None]
    if len(points) < 2:
        return None
    mx, my = (sum(v) / len(points) for v in zip(*points, strict=True))
    slope: float = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return slope


remaining = "epochs left before the seed is culled for a probation timeout"
trend = "least-squares slope of the counterfactual contribution over the probation epochs"
telemetry_fields = ek.returning(
    [
        ek.TelemetryField("probation_epochs_remaining", remaining, probation_epochs_remaining, observed=True),
        ek.TelemetryField("contribution_trend", trend, contribution_trend),
    ]
)
