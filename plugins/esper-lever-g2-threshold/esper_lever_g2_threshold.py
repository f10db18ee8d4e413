"""G2 threshold: how much a seed must be learning before it may start blending.

Gate G2 moves a TRAINING seed to BLENDING once its RMS gradient, relative to
the host's, reaches ``knobs.g2_threshold``. This lever lets Tamiyo pick that
threshold per seed at GERMINATE: LENIENT (0.05) lets a slow learner through
early, STRICT (0.20) holds back all but clearly learning seeds, DEFAULT
(0.10) is the kernel's own. The choice is written to the knob on entering
GERMINATED, so it holds for every G2 evaluation of the seed's life.

A strict threshold can keep a seed training for many epochs; near the end of
an episode it can only burn the slot, so STRICT is legal only while a seed
germinated now could still pass G2 and finish blending before the episode
ends (the kernel's timeline, ``view.left_after("blended")``).

Compile safety NONE: the threshold is read only by the Python lifecycle
between epochs; the forward pass never sees it.
"""

from __future__ import annotations

import torch

from esper_kernel import CompileSafety, FieldContext, HeadSpec, MaskView, Op, Safety, Stage, TelemetryField, hookimpl

HEAD = "g2_threshold"
CHOICES = ("LENIENT", "DEFAULT", "STRICT")
THRESHOLDS = (0.05, 0.10, 0.20)


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=THRESHOLDS,
        default="DEFAULT",
        ops={Op.GERMINATE},
        description="gate G2 threshold: seed/host gradient ratio a seed needs before blending",
        knob="g2_threshold",  # set on entering GERMINATED: it holds for every G2 evaluation
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    m = view.ones(HEAD)
    m[:, CHOICES.index("STRICT")] = view.left_after("blended") >= 0
    return {HEAD: m}


def g2_margin(ctx: FieldContext) -> float | None:
    """Last gradient ratio minus this seed's threshold, while G2 still applies."""
    seed = ctx.seed
    if seed is None or not seed.metrics.grad_ratio or seed.stage not in (Stage.GERMINATED, Stage.TRAINING):
        return None
    return seed.metrics.grad_ratio[-1] - seed.knobs.g2_threshold


def threshold(ctx: FieldContext) -> float | None:
    """The G2 threshold in force for the seed in this slot."""
    return None if ctx.seed is None else ctx.seed.knobs.g2_threshold


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("g2_margin", "gradient ratio minus this seed's G2 threshold", g2_margin, observed=True),
        TelemetryField("threshold", "the seed's G2 gradient-ratio threshold", threshold),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "the threshold is read only by the Python lifecycle at gate G2")
