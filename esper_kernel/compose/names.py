"""The names the kernel composes heads from, without torch: topologies, blends and blueprints.

``esper levers list`` composes the kernel's heads to show every lever beside
them; these names are all it needs of the modules that build seeds, and
importing those (torch) would cost a listing command most of its time.
:mod:`esper_kernel.grow.blueprints` and :mod:`esper_kernel.grow.slots` check at import
that what they build is exactly what is named here.
"""

from __future__ import annotations

#: The kernel's own heads (esper_kernel.compose.core); every other head is a lever's.
CORE_HEADS: frozenset[str] = frozenset({"op", "slot", "blueprint", "blend"})
#: The core heads that place a seed (what, where, which): the report reads them as the placement decision.
PLACEMENT_HEADS: tuple[str, ...] = ("op", "slot", "blueprint")
#: The core heads a forced choice cannot name: a force or a schedule step says them as the step itself.
UNFORCEABLE_HEADS: tuple[str, ...] = ("op", "slot")

TOPOLOGIES: tuple[str, ...] = ("cnn", "cnn1d", "transformer")

#: How a seed's alpha ramps in, the ``blend`` head's choices.
BLENDS: tuple[str, ...] = ("linear", "sigmoid", "gated")

#: Each topology's blueprints, in the documented order (the ``blueprint`` head's choices).
BLUEPRINTS: dict[str, tuple[str, ...]] = {
    "cnn": ("norm", "attention", "depthwise", "bottleneck", "conv_small", "conv_light", "conv_heavy", "dilated"),
    "cnn1d": ("norm", "attention", "conv_small", "bottleneck", "wide", "dilated", "dilated4"),
    "transformer": ("norm", "lora8", "lora32", "attention", "mlp_small", "mlp_large", "conv1d", "gated_mlp"),
}

#: What each blueprint adds to the host, by name in every topology: ``context`` mixes in other positions
#: (a convolution, attention; squeeze-excite pools the whole input), ``channel`` acts on each position's
#: features alone, ``norm`` renormalises them. A policy played with ``family:`` on another topology draws
#: a blueprint new to it with the probability it gave that family's blueprints missing there.
FAMILIES: dict[str, str] = {
    "norm": "norm",
    **dict.fromkeys(("lora8", "lora32", "mlp_small", "mlp_large", "gated_mlp"), "channel"),
    **dict.fromkeys(
        (
            "attention",
            "depthwise",
            "bottleneck",
            "conv_small",
            "conv_light",
            "conv_heavy",
            "dilated",
            "wide",
            "dilated4",
            "conv1d",
        ),
        "context",
    ),
}
