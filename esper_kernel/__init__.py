"""Esper kernel: the lever registry and the seed lifecycle it drives."""

from __future__ import annotations

import pluggy

from esper_kernel.errors import EsperError, MaskError, PluginError, SelectionError
from esper_kernel.seeds import Knobs, SeedState
from esper_kernel.specs import (
    CompileSafety,
    FieldContext,
    HeadCondition,
    HeadSpec,
    Safety,
    TelemetryField,
)
from esper_kernel.stages import Op, Stage

#: Marker for lever hook implementations: ``@hookimpl def action_head(): ...``
hookimpl = pluggy.HookimplMarker("esper")

__version__ = "0.1.0"

__all__ = [
    "CompileSafety",
    "EsperError",
    "FieldContext",
    "HeadCondition",
    "HeadSpec",
    "Knobs",
    "MaskError",
    "Op",
    "PluginError",
    "Safety",
    "SeedState",
    "SelectionError",
    "Stage",
    "TelemetryField",
    "hookimpl",
]
