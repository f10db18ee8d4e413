"""Isolation: whether the host gets gradient through a seed while it blends.

Choice at GERMINATE; the kernel sets ``knobs.isolate_blending`` on entering
BLENDING (declared on the head; it holds through PROBATIONARY). ISOLATED
blocks every host gradient through the seed path, so the host cannot bend
itself around a half-blended seed; COADAPT lets host and seed adapt to each
other; DEFAULT leaves it to the topology (CNN seeds isolated, transformer
seeds co-adapting). Before blending every seed is isolated, so a seed that
cannot reach BLENDING in the episode (the kernel's timeline) gets DEFAULT only.

Compile safety: the choice lands in the slot's 0-d ``isolate`` buffer.
"""

from __future__ import annotations

import esper_kernel as ek

HEAD = "isolation"
CHOICES = ("DEFAULT", "ISOLATED", "COADAPT")
VALUES: tuple[bool | None, ...] = (None, True, False)
WHAT = "host gradient through the seed while blending: by topology, blocked, or allowed"
action_head = ek.returning(
    ek.HeadSpec(HEAD, CHOICES, VALUES, "DEFAULT", {ek.Op.GERMINATE}, description=WHAT, knob="isolate_blending",
                on_enter=ek.Stage.BLENDING, until=ek.Stage.BLENDING)
)  # fmt: skip
compile_safety = ek.returning(ek.CompileSafety(ek.Safety.NONE, "only changes the slot's 0-d isolate buffer"))


telemetry_fields = ek.returning(
    [
        ek.TelemetryField(
            "host_gradient_norm_via_seed",
            "host gradient norm arriving through the seed path",
            lambda c: c.latest("host_grad_via_seed"),
            observed=True,
        ),
        ek.TelemetryField(
            "host_weight_change_rate",
            "relative host weight change over the epoch",
            lambda c: c.latest("host_weight_change"),
        ),
        # Costly (an extra training step), so measured only now and then: the latest one stands.
        ek.TelemetryField(
            "coadaptation_delta",
            "isolated minus co-adapting counterfactual, latest measured (None until measured)",
            lambda c: c.latest("coadaptation_delta"),
        ),
    ]
)
