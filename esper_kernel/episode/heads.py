"""The registry an env composes for its task: the kernel's heads for its slots and blueprints, and the levers.

Over several tasks (``[[tasks]]``), every task's registry gets one ``blueprint``
head, the union of the tasks' catalogues, each task germinating only its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.data.taskplugins import find_task
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.infra.errors import EsperError, PluginError
from esper_kernel.settings.config import EnvConfig

__all__ = ["blueprints_of", "build_registry", "union_catalogue"]


def union_catalogue(configs: Sequence[EnvConfig]) -> tuple[str, ...]:
    """Every blueprint of the tasks' topologies, each once, in catalogue order: one ``blueprint`` head for all."""
    out: list[str] = []
    for topology in dict.fromkeys(c.topology for c in configs):
        out += [b for b in blueprint_names(topology) if b not in out]
    return tuple(out)


def build_registry(
    config: EnvConfig, selection: Selection | None = None, catalogue: tuple[str, ...] | None = None
) -> Registry:
    """Load the selected levers and compose them with the kernel's heads for this config.

    A task that names its blueprints (``Task.blueprints``) may germinate only those. ``catalogue``
    (:func:`union_catalogue`, training over several tasks) gives the ``blueprint`` head every task's
    choices; this task germinates only its own topology's.
    """
    topology = config.topology
    own = blueprint_names(topology)
    try:
        info = find_task(config.task)
    except PluginError:
        allowed = None  # an unknown task fails where its data is built, with the task plugins' own line
    else:
        allowed = info.task.blueprints
        unknown = [b for b in allowed or () if b not in own]
        if unknown or allowed == ():
            raise EsperError(
                f"task {config.task!r} ({info.distribution}) lists blueprints {list(allowed or ())}: "
                f"each must be one of the {topology} catalogue ({', '.join(own)})"
            )
    if catalogue is not None and catalogue != own:
        allowed = allowed or own
    registry = Registry.open(CoreHeads(config.slots, catalogue or own, topology, allowed), selection)
    registry.compiling = config.compile
    return registry


def blueprints_of(registry: Registry) -> tuple[str, ...]:
    """The ``blueprint`` head's choices a registry was built with (one catalogue, or several tasks' union)."""
    blueprints: tuple[str, ...] = getattr(registry.info("esper").plugin, "blueprints", ())
    return blueprints
