"""Lr: the seed's learning rate as a multiple of the host's.

Choice at GERMINATE; the kernel sets ``knobs.lr_scale`` on entering
GERMINATED (declared on the head) and applies it to the seed's optimizer
param group when it creates it, so it acts from the very first epoch. A fast
rate lets a seed catch up with a host that has trained for a while; it also
risks exploding gradients, which G5 holds against the seed for good.

Compile safety: the rate lives in the optimizer's param group, outside the
forward pass entirely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import esper_kernel as ek

if TYPE_CHECKING:  # a mask returns tensors, but listing the lever must not import torch
    import torch

HEAD = "lr"
CHOICES = ("CAUTIOUS", "STANDARD", "AGGRESSIVE")
SCALES = (0.75, 1.0, 2.0)

action_head = ek.returning(
    ek.HeadSpec(HEAD, CHOICES, SCALES, default="STANDARD", ops={ek.Op.GERMINATE}, knob="lr_scale",
                description="seed learning rate as a multiple of the host learning rate")
)  # fmt: skip
compile_safety = ek.returning(ek.CompileSafety(ek.Safety.NONE, "only the seed's param-group lr, outside the graph"))


@ek.hookimpl
def mask(view: ek.MaskView) -> dict[str, torch.Tensor]:
    # No restriction, deliberately: the rate acts from the germination epoch
    # itself, so every choice takes effect whenever germinating is legal, and
    # nothing known before the seed exists says one rate is unsafe.
    return {HEAD: view.ones(HEAD)}


def lr_stability_ratio(ctx: ek.FieldContext) -> float | None:
    """Fraction of the seed's epochs without a gradient explosion (1.0 = never exploded)."""
    flags = ctx.seed.metrics.exploded if ctx.seed else []
    return 1.0 - sum(flags) / len(flags) if flags else None


telemetry_fields = ek.returning(
    [
        ek.TelemetryField(
            "seed_loss_gradient", "seed gradient norm over the epoch", lambda c: c.latest("grad_norm"), observed=True
        ),
        ek.TelemetryField("seed_weight_magnitude", "norm of the seed's weights", lambda c: c.latest("weight_norm")),
        ek.TelemetryField(
            "lr_stability_ratio", "fraction of the seed's epochs without a gradient explosion", lr_stability_ratio
        ),
    ]
)
