"""Blueprint variant: how wide the seed Tamiyo germinates is.

Every blueprint builds its seed as ``factory(dim, width_scale)``; this lever
lets Tamiyo pick that scale per seed at GERMINATE: SMALL (0.5), MEDIUM (1.0,
the kernel's default) or LARGE (2.0). The choice is written to
``knobs.width_scale`` on entering GERMINATED, which the kernel runs before it
builds the seed module, so the seed is born at that width. (Blueprints with
no hidden width, such as ``norm``, build the same module at every scale.)

A large seed needs epochs to pay for its parameters, so LARGE is legal only
while a seed germinated now could still finish blending into the host before
the episode ends (the kernel's timeline, ``view.left_after("blended")``).

Compile safety SPECIALIZES, honestly: the width changes the seed module's
parameter shapes, so a compiled host compiles one graph per variant in use.
"""

from __future__ import annotations

import torch

from esper_kernel import CompileSafety, FieldContext, HeadSpec, MaskView, Op, Safety, TelemetryField, hookimpl

HEAD = "blueprint_variant"
CHOICES = ("SMALL", "MEDIUM", "LARGE")
WIDTH_SCALES = (0.5, 1.0, 2.0)


@hookimpl
def action_head() -> HeadSpec:
    return HeadSpec(
        name=HEAD,
        choices=CHOICES,
        values=WIDTH_SCALES,
        default="MEDIUM",
        ops={Op.GERMINATE},
        description="seed width: hidden widths of the germinated blueprint x0.5, x1 or x2",
        # Set on entering GERMINATED, before the module is built: the only moment the width can be set.
        knob="width_scale",
    )


@hookimpl
def mask(view: MaskView) -> dict[str, torch.Tensor]:
    m = view.ones(HEAD)
    m[:, CHOICES.index("LARGE")] = view.left_after("blended") >= 0
    return {HEAD: m}


def width_scale(ctx: FieldContext) -> float | None:
    """The width scale the seed in this slot was built with."""
    return None if ctx.seed is None else ctx.seed.knobs.width_scale


def grad_norm_per_width(ctx: FieldContext) -> float | None:
    """The seed's last gradient norm divided by its width scale: is the extra width learning?"""
    seed = ctx.seed
    if seed is None or not seed.metrics.grad_norm:
        return None
    return seed.metrics.grad_norm[-1] / seed.knobs.width_scale


@hookimpl
def telemetry_fields() -> list[TelemetryField]:
    return [
        TelemetryField("width_scale", "width scale of the seed in this slot", width_scale, observed=True),
        TelemetryField("grad_norm_per_width", "seed gradient norm over its width scale", grad_norm_per_width),
    ]


@hookimpl
def compile_safety() -> CompileSafety:
    return CompileSafety(
        Safety.SPECIALIZES, "the width changes the seed module's parameter shapes: one graph per variant"
    )
