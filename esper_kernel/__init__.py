"""Esper kernel: the lever registry and the seed lifecycle it drives.

Everything a lever module needs is importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from esper_kernel.compose.seeds import Knobs, Point, SeedMetrics, SeedState, Timeline
from esper_kernel.compose.specs import (
    CompileSafety,
    FieldContext,
    HeadCondition,
    HeadSpec,
    Safety,
    TelemetryField,
)
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.infra.errors import EsperError, MaskError, PluginError, SelectionError

if TYPE_CHECKING:
    from esper_kernel.compose.masks import MaskView


def __getattr__(name: str) -> Any:
    # MaskView holds tensors, so importing it imports torch; `esper --help` must not pay for that.
    if name == "MaskView":
        from esper_kernel.compose.masks import MaskView

        return MaskView
    raise AttributeError(f"module 'esper_kernel' has no attribute {name!r}")


#: Marker for lever hook implementations: ``@hookimpl def action_head(): ...``
hookimpl = pluggy.HookimplMarker("esper")

_T = TypeVar("_T")


def returning(value: _T) -> Callable[[], _T]:
    """A hook implementation that always returns ``value``, for the hooks that declare data.

    ``action_head = returning(HeadSpec(...))`` is ``@hookimpl def action_head(): return HeadSpec(...)``,
    built once: the value is checked when the lever is imported.
    """

    def hook() -> _T:
        return value

    return hookimpl(hook)


__version__ = "0.1.0"

__all__ = [
    "CompileSafety",
    "EsperError",
    "FieldContext",
    "HeadCondition",
    "HeadSpec",
    "Knobs",
    "MaskError",
    "MaskView",
    "Op",
    "PluginError",
    "Point",
    "Safety",
    "SeedMetrics",
    "SeedState",
    "SelectionError",
    "Stage",
    "TelemetryField",
    "Timeline",
    "hookimpl",
    "returning",
]
