"""Watching levers while a run goes: hook time per lever, and what ``--compile`` really compiled.

Plugins are third-party code on the hot path. A slow ``mask`` hook or a lever
that breaks the graph despite declaring compile safety NONE is not an error,
but it is the user's to know about, by name, in the run's own events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from esper_kernel.compose.registry import Registry

#: A lever whose hooks take more than this share of an epoch's wall time is
#: reported (once per run) as ``lever.slow`` and on the console.
SLOW_HOOK_SHARE = 0.10
#: ...but only when that is also more than this many seconds, so that the
#: sub-millisecond epochs of tests and tiny runs do not make noise.
SLOW_HOOK_MIN_SECONDS = 0.05


def _lever_seconds(registry: Registry) -> dict[str, float]:
    return {lever: sum(hooks.values()) for lever, hooks in registry.timings.items()}


class HookWatch:
    """Per-epoch hook time of every lever, from the registry's running totals."""

    def __init__(self, registry: Registry, log: Any, warn: Callable[[str], None]) -> None:
        self.registry = registry
        self.log = log
        self.warn = warn
        self.warned: set[str] = set()
        self._t0 = time.perf_counter()
        self._before: dict[str, float] = {}

    def epoch_started(self) -> None:
        self._t0 = time.perf_counter()
        self._before = _lever_seconds(self.registry)

    def epoch_ended(self, epoch: int) -> None:
        wall = time.perf_counter() - self._t0
        for lever, total in _lever_seconds(self.registry).items():
            spent = total - self._before.get(lever, 0.0)
            if lever in self.warned or spent <= SLOW_HOOK_MIN_SECONDS or spent <= SLOW_HOOK_SHARE * wall:
                continue
            self.warned.add(lever)
            info = self.registry.info(lever)
            share = spent / wall if wall > 0 else 1.0
            hooks = {h: round(s, 4) for h, s in self.registry.timings[lever].items()}
            self.log.warning(
                "lever.slow",
                lever=lever,
                distribution=info.distribution,
                seconds=round(spent, 4),
                share=round(share, 3),
                limit=SLOW_HOOK_SHARE,
                hooks=hooks,
            )
            self.warn(
                f"{info.label} is slow: its hooks took {spent:.2f}s, {share:.0%} of epoch {epoch} "
                f"(more than {SLOW_HOOK_SHARE:.0%})"
            )

    def totals(self) -> dict[str, dict[str, float]]:
        """Seconds per lever and hook over the whole run (``run.finished``'s ``hook_seconds``)."""
        return {lever: {h: round(s, 6) for h, s in hooks.items()} for lever, hooks in self.registry.timings.items()}


class CompileWatch:
    """Counts Dynamo's graphs, graph breaks and recompiles over an episode.

    Dynamo's counters are process-wide, so they are cleared when the episode
    starts. They say how much was compiled, not which lever caused it (a
    germination recompiles whatever the levers do): a lever whose declaration
    is contradicted is named by the registry when it writes the knob
    (:meth:`~esper_kernel.compose.runtime.HookRuntime._check_graph`), and listed here.
    """

    def __init__(self, registry: Registry, log: Any) -> None:
        from torch._dynamo.utils import counters

        self.registry = registry
        self.log = log
        self.counters = counters
        counters.clear()

    def episode_ended(self) -> dict[str, Any]:
        c = self.counters
        stats: dict[str, Any] = {
            "graphs": int(c["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(c["graph_break"].values())),
            "recompiles": int(sum(c["recompiles"].values())) if "recompiles" in c else 0,
            "contradicted": self.registry.contradicted,
        }
        self.log.info("compile.stats", **stats, break_reasons=sorted(c["graph_break"])[:5])
        return stats
