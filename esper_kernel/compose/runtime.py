"""Calling the levers' seed hooks while a run goes: timed, checked, and under the fault policy.

A lever is third-party code on the hot path. Each ``on_enter_stage`` and
``on_epoch`` call is timed per lever; a knob it writes without owning it, or
too late to matter, is an error naming it; and a failure either stops the run
or, under ``on_lever_error = "quarantine"``, freezes the lever at its
defaults and takes back every knob it wrote. :class:`~esper_kernel.compose.registry.Registry`
composes; this mixin holds what changes while it runs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.compose.discovery import CORE_NAME, ENV_STRICT
from esper_kernel.compose.seeds import BUILD_KNOBS, GRAPH_KNOBS, SeedState
from esper_kernel.compose.specs import CompileSafety, Safety
from esper_kernel.compose.stages import Stage
from esper_kernel.infra.errors import PluginError
from esper_kernel.infra.stops import stops, user_stopped

if TYPE_CHECKING:
    from esper_kernel.compose.discovery import LeverInfo
    from esper_kernel.compose.masks import MaskComposer


@attrs.frozen
class Quarantine:
    """A lever taken out of a run after one of its hooks failed (``--on-lever-error quarantine``)."""

    lever: str
    distribution: str
    hook: str
    error: str

    def describe(self) -> str:
        return (
            f"lever {self.lever!r} ({self.distribution}): {self.hook} failed ({self.error}); "
            "its heads stay at their defaults, the knobs it wrote are restored and its hooks are skipped "
            "for the rest of the episode"
        )


@attrs.frozen
class Contradiction:
    """Under ``--compile``: a lever declaring compile safety NONE changed a knob the compiled graph depends on."""

    lever: str
    distribution: str
    knobs: tuple[str, ...]
    seed: str

    def describe(self) -> str:
        return (
            f"lever {self.lever!r} ({self.distribution}) declares compile safety NONE but set "
            f"{', '.join(self.knobs)} of {self.seed}, which the compiled graph is specialized on "
            "(a graph per value); it should declare SPECIALIZES"
        )


#: Hook time per lever: ``{lever: {hook: seconds}}``.
Timings = dict[str, dict[str, float]]


StageFn = Callable[..., object]


@attrs.frozen
class StageHook:
    """A lever's ``on_enter_stage`` or ``on_epoch``, resolved once, with the knobs the lever owns."""

    lever: str
    distribution: str
    fn: StageFn = attrs.field(repr=False)
    argnames: tuple[str, ...]
    owns: frozenset[str] = frozenset()


@attrs.frozen
class KnobSetting:
    """A declarative head: on entering ``stage`` the kernel sets ``knob`` to the head's value."""

    lever: str
    head: str
    knob: str
    stage: Stage


class HookRuntime:
    """The per-step half of a registry: seed-hook dispatch, hook timing, quarantine and run-time warnings."""

    settings: tuple[KnobSetting, ...]
    stage_hooks: tuple[StageHook, ...]
    epoch_hooks: tuple[StageHook, ...]
    masks: MaskComposer
    safety: dict[str, CompileSafety]

    def info(self, name: str) -> LeverInfo:
        raise NotImplementedError

    def __init__(self) -> None:
        #: "stop": a lever failing at run time stops the run; "quarantine": the lever is frozen and the run goes on.
        self.fault_policy = "stop"
        self.quarantined: dict[str, Quarantine] = {}
        #: Per lever, per seed: the seed, and for each knob the lever wrote, its value before the
        #: lever's first write and after its last, so a quarantine can take the writes back.
        self._written: dict[str, dict[str, tuple[SeedState, dict[str, Any], dict[str, Any]]]] = {}
        #: The seed whose module is about to be built (build knobs may still change).
        self._building: str | None = None
        #: Told of every quarantine as it happens (the run logs and shows it).
        self.on_quarantine: Callable[[Quarantine], None] | None = None
        #: ESPER_STRICT_PLUGINS: a lever's invalid run-time output (NaN telemetry) is an error, not a warning.
        self.strict = False
        #: Where a lever's run-time warnings reach a person (the console); each is shown once per run.
        self.on_warning: Callable[[str], None] | None = None
        self._warned: set[str] = set()
        #: Seconds spent in each lever's run-time hooks, ``{lever: {hook: s}}``.
        self.timings: Timings = self.masks.timings
        self.masks.on_fault = self.quarantine
        #: The host runs under torch.compile: a NONE lever changing a graph knob is named (see :meth:`_check_graph`).
        self.compiling = False
        #: Told of each lever whose compile declaration a knob write contradicts, once per lever.
        self.on_contradiction: Callable[[Contradiction], None] | None = None
        self._contradicted: set[str] = set()

    def begin_episode(self) -> None:
        """A new episode: every lever quarantined in the last one is back (a quarantine lasts its episode)."""
        self.quarantined.clear()
        self.masks.frozen.clear()
        self._written.clear()
        self._building = None

    def enter_stage(self, seed: SeedState, old: Stage, new: Stage) -> None:
        """Set the declared knobs for ``new``, then run every ``on_enter_stage`` in lever order."""
        for setting in self.settings:
            if setting.stage is new and setting.head in seed.values and setting.lever not in self.quarantined:
                before = attrs.asdict(seed.knobs)
                setattr(seed.knobs, setting.knob, seed.values[setting.head])
                changed = self._note_writes(setting.lever, seed, before)
                try:
                    self._check_graph(setting.lever, seed, changed)
                except PluginError as err:
                    if not self.quarantine(setting.lever, "action_head", err):
                        raise
        args = {"seed": seed, "old": old, "new": new}
        self._building = seed.seed_id if new is Stage.GERMINATED else None
        try:
            for hook in self.stage_hooks:
                self._call(hook, "on_enter_stage", args, f"on_enter_stage({old.name} -> {new.name})", new)
        finally:
            self._building = None

    def on_epoch(self, seed: SeedState, epoch: int) -> None:
        """Run every lever's ``on_epoch`` for a live seed, before ``epoch`` runs."""
        args = {"seed": seed, "epoch": epoch}
        for hook in self.epoch_hooks:
            self._call(hook, "on_epoch", args, f"on_epoch(epoch {epoch})", None)

    def _call(self, hook: StageHook, name: str, args: Mapping[str, Any], where: str, new: Stage | None) -> None:
        """One lever's seed hook, timed; a failure (or a knob write it may not make) stops the run or quarantines it."""
        if hook.lever in self.quarantined:
            return
        seed: SeedState = args["seed"]
        before = attrs.asdict(seed.knobs)
        started = time.perf_counter()
        try:
            try:
                _run(hook, args, where, before, building=new is Stage.GERMINATED)
            finally:
                # Noted even when the hook raised after writing: a quarantine must take that write back too.
                changed = self._note_writes(hook.lever, seed, before)
            self._check_graph(hook.lever, seed, changed)
        except PluginError as err:
            if not self.quarantine(hook.lever, name, err):
                raise
        finally:
            self.add_time(hook.lever, name, time.perf_counter() - started)

    def _note_writes(self, lever: str, seed: SeedState, before: Mapping[str, Any]) -> list[str]:
        """Record the knobs of ``seed`` that ``lever`` changed since ``before``; return their names."""
        after = attrs.asdict(seed.knobs)
        changed = [k for k, v in before.items() if after[k] != v]
        if not changed:
            return changed
        _, first, last = self._written.setdefault(lever, {}).setdefault(seed.seed_id, (seed, {}, {}))
        for knob in changed:
            first.setdefault(knob, before[knob])
            last[knob] = after[knob]
        return changed

    def _check_graph(self, lever: str, seed: SeedState, changed: list[str]) -> None:
        """Under compile, a lever declaring NONE that changes a graph knob is named the moment it writes it.

        Dynamo's counters are process-wide and a germination recompiles anyway,
        so a recompile cannot be pinned on a lever after the fact; the write that
        will cause it can. Told once per lever; with strict plugins, an error.
        """
        graph = tuple(k for k in changed if k in GRAPH_KNOBS)
        safety = self.safety.get(lever)
        if not graph or not self.compiling or lever in self._contradicted or safety is None:
            return
        if safety.level is not Safety.NONE:
            return
        self._contradicted.add(lever)
        found = Contradiction(lever, self.info(lever).distribution, graph, seed.seed_id)
        if self.strict:
            raise PluginError(f"--compile: {found.describe()} ({ENV_STRICT}=1)")
        if self.on_contradiction is not None:
            self.on_contradiction(found)

    @property
    def contradicted(self) -> list[str]:
        """The levers whose compile declaration a knob write contradicted, so far."""
        return sorted(self._contradicted)

    def _take_back(self, lever: str) -> None:
        """Restore every knob ``lever`` wrote to its value before the lever wrote it.

        A knob another lever has written since keeps that lever's value: it is
        the later word, and undoing it would take back a write that did not fail.
        A build knob of a seed already built stays: the module was built with it.
        """
        for seed, first, last in self._written.pop(lever, {}).values():
            for knob, value in first.items():
                if knob in BUILD_KNOBS and seed.seed_id != self._building:
                    continue
                if getattr(seed.knobs, knob) == last[knob]:
                    setattr(seed.knobs, knob, copy.deepcopy(value))

    def add_time(self, lever: str, hook: str, seconds: float) -> None:
        per = self.timings.setdefault(lever, {})
        per[hook] = per.get(hook, 0.0) + seconds

    def quarantine(self, lever: str, hook: str, error: BaseException) -> bool:
        """Take ``lever`` out of the run if the fault policy allows; True if it did (or had).

        The kernel's own plugin is never quarantined: without it there is no run.
        """
        if lever in self.quarantined:
            return True
        if self.fault_policy != "quarantine" or lever == CORE_NAME:
            return False
        info = self.info(lever)
        q = Quarantine(lever, info.distribution, hook, one_line(error))
        self.quarantined[lever] = q
        self.masks.frozen.add(lever)
        self._take_back(lever)
        if self.on_quarantine is not None:
            self.on_quarantine(q)
        return True

    def restore_quarantine(self, q: Quarantine) -> None:
        """``q`` again, from a checkpoint of the episode it happened in: frozen and skipped, not announced."""
        self.quarantined[q.lever] = q
        self.masks.frozen.add(q.lever)

    def warn_once(self, key: str, message: str) -> None:
        """Show ``message`` to the person running this, the first time ``key`` comes up."""
        if key not in self._warned and self.on_warning is not None:
            self._warned.add(key)
            self.on_warning(message)


def _run(hook: StageHook, args: Mapping[str, Any], where: str, before: Mapping[str, Any], *, building: bool) -> None:
    """Call a seed hook; a knob it writes without owning it, or too late to matter, is an error."""
    seed: SeedState = args["seed"]
    label = f"lever {hook.lever!r} ({hook.distribution})"
    before_stops = stops()
    try:
        hook.fn(**{a: args[a] for a in hook.argnames})
    except BaseException as exc:  # a hook's sys.exit() or KeyboardInterrupt is the plugin's fault, not a stop
        if user_stopped(exc, before_stops):
            raise
        raise PluginError(f"{label}: {where} raised {type(exc).__name__}: {exc}") from exc
    after = attrs.asdict(seed.knobs)
    changed = sorted(k for k, v in before.items() if after[k] != v)
    stray = [k for k in changed if k not in hook.owns]
    if stray:
        raise PluginError(
            f"{label}: {where} wrote knob(s) {stray} of {seed.seed_id} that it does not own; declare them "
            "(HeadSpec(knob=...) or the module's `writes = (...)`)"
        )
    late = [k for k in changed if k in BUILD_KNOBS and not building]
    if late:
        raise PluginError(
            f"{label}: {where} wrote knob(s) {late} of {seed.seed_id}, which is read only when the seed's module "
            "is built (on entering GERMINATED): the write would be ignored"
        )


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (plugin messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
