"""Watching levers while a run goes: hook time per lever, and what ``--compile`` really compiled.

Plugins are third-party code on the hot path. A slow ``mask`` hook or a lever
that breaks the graph despite declaring compile safety NONE is not an error,
but it is the user's to know about, by name, in the run's own events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from esper_kernel.compose.registry import Registry
from esper_kernel.compose.runtime import Contradiction, Quarantine

#: A lever whose hooks take more than this share of an epoch's wall time is
#: reported (once per env) as ``lever.slow`` and on the console.
SLOW_HOOK_SHARE = 0.10
#: ...but only when that is also more than this many seconds, so that the
#: sub-millisecond epochs of tests and tiny runs do not make noise.
SLOW_HOOK_MIN_SECONDS = 0.05


def _lever_seconds(registry: Registry) -> dict[str, float]:
    return {lever: sum(hooks.values()) for lever, hooks in registry.timings.items()}


class HookWatch:
    """Per-epoch hook time of one env's levers, from its registry's running totals, and per episode.

    An epoch's share is its levers' hook time over the env's own step plus the
    hook time (masks) since its last step, so envs stepped one after another in
    one process do not count each other's epochs as their own.
    """

    def __init__(self, registry: Registry, warn: Callable[[str], None]) -> None:
        self.registry = registry
        self.warn = warn
        #: Levers already reported slow: once per env, over all its episodes.
        self.warned: set[str] = set()
        self._t0 = time.perf_counter()
        self._outside = 0.0
        self._before: dict[str, float] = {}
        self._episode: dict[str, dict[str, float]] = {}

    def episode_started(self) -> None:
        self._episode = {lever: dict(hooks) for lever, hooks in self.registry.timings.items()}
        self._before = _lever_seconds(self.registry)

    def epoch_started(self) -> None:
        self._outside = sum(_lever_seconds(self.registry).values()) - sum(self._before.values())
        self._t0 = time.perf_counter()

    def epoch_ended(self, epoch: int, log: Any) -> None:
        wall = time.perf_counter() - self._t0 + self._outside
        for lever, total in _lever_seconds(self.registry).items():
            spent = total - self._before.get(lever, 0.0)
            if lever in self.warned or spent <= SLOW_HOOK_MIN_SECONDS or spent <= SLOW_HOOK_SHARE * wall:
                continue
            self.warned.add(lever)
            info = self.registry.info(lever)
            share = spent / wall if wall > 0 else 1.0
            hooks = {h: round(s, 4) for h, s in self.registry.timings[lever].items()}
            log.warning(
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
        self._before = _lever_seconds(self.registry)

    def episode_seconds(self) -> dict[str, dict[str, float]]:
        """Seconds per lever and hook since the episode started (``hook_seconds``)."""
        out: dict[str, dict[str, float]] = {}
        for lever, hooks in self.registry.timings.items():
            before = self._episode.get(lever, {})
            out[lever] = {h: round(s - before.get(h, 0.0), 6) for h, s in hooks.items()}
        return out


_COUNTS = ("graphs", "graph_breaks", "recompiles")


class CompileWatch:
    """Dynamo's graphs, graph breaks and recompiles during one env's episode, counted around its own steps.

    Dynamo's counters are process-wide and only grow; the envs of a process
    step one at a time, so what they grow by while an env steps is that env's.
    They say how much was compiled, not which lever caused it (a germination
    recompiles whatever the levers do): a lever whose declaration is
    contradicted is named by the registry when it writes the knob
    (:meth:`~esper_kernel.compose.runtime.HookRuntime._check_graph`), and listed here.
    """

    def __init__(self, registry: Registry) -> None:
        from torch._dynamo.utils import counters

        self.registry = registry
        self.counters = counters
        self.totals = dict.fromkeys(_COUNTS, 0)
        self.reasons: dict[str, int] = {}
        self._at = self._read()
        self._breaks: dict[str, int] = {}

    def _read(self) -> dict[str, int]:
        c = self.counters
        recompiles = int(sum(c["recompiles"].values())) if "recompiles" in c else 0
        return {
            "graphs": int(c["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(c["graph_break"].values())),
            "recompiles": recompiles,
        }

    def step_started(self) -> None:
        self._at = self._read()
        self._breaks = dict(self.counters["graph_break"])

    def step_ended(self) -> None:
        now = self._read()
        for k in _COUNTS:
            self.totals[k] += max(0, now[k] - self._at[k])
        for reason, n in self.counters["graph_break"].items():
            if n > self._breaks.get(reason, 0):
                self.reasons[reason] = self.reasons.get(reason, 0) + n - self._breaks.get(reason, 0)

    def stats(self) -> dict[str, Any]:
        """The episode's counts, the levers named so far, and up to five break reasons (``compile.stats``)."""
        return {**self.totals, "contradicted": self.registry.contradicted, "break_reasons": sorted(self.reasons)[:5]}


#: Where an env is: its event log (bound to its env, episode and epoch), index, episode and epoch.
Place = Callable[[], tuple[Any, int, int, int]]


class LeverWatch:
    """One env's levers over its episodes, the same in ``esper run``, ``train`` and ``eval``.

    At each episode's start the last one's quarantines are lifted (a quarantine
    lasts its episode); quarantines and compile contradictions go to the env's
    stream and to ``warn`` as they happen; hook time and compile counts are
    kept per episode, for :meth:`report`.
    """

    def __init__(self, registry: Registry, compiling: bool, place: Place, warn: Callable[[str], None]) -> None:
        self.registry = registry
        self.compiling = compiling
        self.place = place
        self.warn = warn
        self.hooks = HookWatch(registry, warn)
        self.compile: CompileWatch | None = None
        self.quarantines: list[dict[str, Any]] = []

    def episode_started(self) -> None:
        reg = self.registry
        reg.begin_episode()
        reg.on_quarantine = self._quarantined
        reg.on_contradiction = self._contradicted
        reg.on_warning = self.warn
        self.quarantines = []
        self.hooks.episode_started()
        self.compile = CompileWatch(reg) if self.compiling else None

    def step_started(self) -> None:
        self.hooks.epoch_started()
        if self.compile is not None:
            self.compile.step_started()

    def step_ended(self, done: bool) -> None:
        log, _, _, epoch = self.place()
        self.hooks.epoch_ended(epoch - 1, log)
        if self.compile is not None:
            self.compile.step_ended()
            if done:
                log.info("compile.stats", **self.compile.stats())

    def _quarantined(self, q: Quarantine) -> None:
        log, env, episode, epoch = self.place()
        log.warning("lever.quarantined", **attrs.asdict(q), epoch=epoch)
        self.quarantines.append({**attrs.asdict(q), "env": env, "episode": episode, "epoch": epoch})
        self.warn(f"quarantined {q.describe()}")

    def state_dict(self) -> list[dict[str, Any]]:
        """This episode's quarantines, for a checkpoint."""
        return [dict(q) for q in self.quarantines]

    def load_state_dict(self, quarantines: Iterable[Mapping[str, Any]]) -> None:
        """Take the checkpointed episode's quarantined levers out again, without reporting them anew.

        The knobs they wrote were restored when they were quarantined, so the
        checkpointed seeds already hold those values.
        """
        for q in quarantines:
            self.registry.restore_quarantine(Quarantine(q["lever"], q["distribution"], q["hook"], q["error"]))
            self.quarantines.append(dict(q))

    def _contradicted(self, c: Contradiction) -> None:
        self.place()[0].warning("compile.contradiction", **attrs.asdict(c))
        self.warn(f"--compile: {c.describe()}")

    def report(self) -> dict[str, Any]:
        """This episode's ``hook_seconds`` per lever and hook, the ``quarantined`` (each with its env,
        episode and epoch) and, under ``--compile``, the ``compile`` counts."""
        _, env, episode, _ = self.place()
        return {
            "env": env,
            "episode": episode,
            "hook_seconds": self.hooks.episode_seconds(),
            "quarantined": list(self.quarantines),
            "compile": None if self.compile is None else self.compile.stats(),
        }


def merge_levers(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several episodes' lever reports (:meth:`~esper_kernel.episode.env.MorphoEnv.lever_report`) as one.

    Hook seconds and compile counts add up; every quarantine is kept, with the
    episode it happened in. What ``esper train`` and ``esper eval`` summarise.
    """
    seconds: dict[str, dict[str, float]] = {}
    quarantined: list[dict[str, Any]] = []
    compiled: dict[str, Any] | None = None
    for rep in reports:
        for lever, hooks in rep["hook_seconds"].items():
            per = seconds.setdefault(lever, {})
            for h, s in hooks.items():
                per[h] = round(per.get(h, 0.0) + s, 6)
        quarantined += rep["quarantined"]
        if rep.get("compile") is not None:
            c = rep["compile"]
            compiled = compiled or {**dict.fromkeys(_COUNTS, 0), "contradicted": [], "break_reasons": []}
            for k in _COUNTS:
                compiled[k] += c[k]
            compiled["contradicted"] = sorted({*compiled["contradicted"], *c["contradicted"]})
            compiled["break_reasons"] = sorted({*compiled["break_reasons"], *c["break_reasons"]})[:5]
    return {"hook_seconds": seconds, "quarantined": quarantined, "compile": compiled}
