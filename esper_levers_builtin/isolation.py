"""Isolation: whether the host gets gradient through a seed while it blends.

Choice at GERMINATE; effect on entering BLENDING (``knobs.isolate_blending``,
which also holds through PROBATIONARY). ISOLATED blocks every host gradient
through the seed path, so the host cannot bend itself around a half-blended
seed; COADAPT lets host and seed adapt to each other; DEFAULT leaves it to the
topology (CNN seeds isolated, transformer seeds co-adapting). While a seed
trains before blending it is always isolated, whatever the choice, so a seed
that cannot reach BLENDING before the episode ends has nothing to choose.

Compile safety: the kernel writes the choice into the slot's 0-d ``isolate``
buffer, which a compiled graph reads as an input.
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

HEAD = "isolation"
CHOICES = ("DEFAULT", "ISOLATED", "COADAPT")
VALUES: tuple[bool | None, ...] = (None, True, False)
#: Epochs before the earliest possible BLENDING epoch: one GERMINATED, at least one TRAINING.
_EPOCHS_BEFORE_BLENDING = 2


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=VALUES,
        default="DEFAULT",
        ops={Op.GERMINATE},
        description="host gradient through the seed while blending: by topology, blocked, or allowed",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    # A seed germinated too late never blends, so the choice could not take
    # effect; only DEFAULT stays legal then, so the policy is not credited or
    # blamed for a choice that changed nothing.
    m = view.ones(HEAD)
    can_blend = view.epochs_left > _EPOCHS_BEFORE_BLENDING
    m[:, 1:] &= can_blend[:, None]
    return {HEAD: m}


@hookimpl
def on_enter_stage(seed: SeedState, new: Stage) -> None:
    if new is Stage.BLENDING and HEAD in seed.values:
        seed.knobs.isolate_blending = seed.values[HEAD]


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def host_gradient_norm_via_seed(ctx: FieldContext) -> float | None:
    """Norm of the gradient the host received through the seed path (0 when isolated)."""
    return None if ctx.seed is None else _last(ctx.seed.metrics.host_grad_via_seed)


def host_weight_change_rate(ctx: FieldContext) -> float | None:
    """Relative change of the host's weights over the last epoch."""
    return None if ctx.seed is None else _last(ctx.seed.metrics.host_weight_change)


def coadaptation_delta(ctx: FieldContext) -> float | None:
    """Isolated-minus-co-adapting counterfactual, the latest one measured for this seed.

    The counterfactual costs an extra training step, so it is not measured
    every epoch; the latest measurement stays the seed's answer until a new one.
    """
    if ctx.seed is None:
        return None
    return next((d for d in reversed(ctx.seed.metrics.coadaptation_delta) if d is not None), None)


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField(
            "host_gradient_norm_via_seed",
            "host gradient norm arriving through the seed path",
            host_gradient_norm_via_seed,
            observed=True,
        ),
        TelemetryField(
            "host_weight_change_rate", "relative host weight change over the epoch", host_weight_change_rate
        ),
        TelemetryField(
            "coadaptation_delta",
            "isolated minus co-adapting counterfactual, latest measured (None until measured)",
            coadaptation_delta,
        ),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(Safety.NONE, "only changes the slot's 0-d isolate buffer")
