"""Finding, selecting, loading and composing lever plugins.

Levers are entry points in the ``esper.levers`` group. Each is loaded on its
own so one broken package cannot hide the others, and every failure is
reported with the distribution that shipped it. Composition resolves every
hook once; the per-step path then calls plain functions.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import pluggy

from esper_kernel import hookspecs
from esper_kernel.actions import ActionSpace, ComposedHead, MaskComposer, MaskFn, MaskSource, MaskView
from esper_kernel.errors import PluginError, SelectionError
from esper_kernel.seeds import BUILD_KNOBS, KNOB_NAMES, SeedState
from esper_kernel.specs import UNDECLARED_SAFETY, CompileSafety, HeadSpec, Safety, TelemetryField
from esper_kernel.stages import Stage

if TYPE_CHECKING:  # composing levers is plain Python; only their masks, called later, make tensors
    import torch

ENTRY_POINT_GROUP = "esper.levers"
CORE_NAME = "esper"

ENV_LEVERS = "ESPER_LEVERS"
ENV_DISABLED = "ESPER_DISABLED_LEVERS"
ENV_NO_AUTOLOAD = "ESPER_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "ESPER_STRICT_PLUGINS"

#: The builtin levers ship with the kernel, in its own distribution: a plugin never displaces them.
BUILTIN_DISTRIBUTION = "esper-kernel"


@attrs.frozen
class LeverInfo:
    """A loaded lever: where it came from and the object holding its hooks."""

    name: str
    distribution: str
    version: str
    entry_point: str
    plugin: object = attrs.field(eq=False, repr=False)
    requires: tuple[str, ...] = ()
    conflicts_with: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"lever {self.name!r} ({self.distribution} {self.version})"

    @property
    def builtin(self) -> bool:
        return _is_builtin(self.distribution)


def _is_builtin(distribution: str) -> bool:
    return distribution == BUILTIN_DISTRIBUTION


@attrs.frozen
class LoadFailure:
    """A lever that was installed but could not be loaded, and why."""

    name: str
    distribution: str
    version: str
    entry_point: str
    error: str

    def describe(self) -> str:
        return (
            f"lever {self.name!r} from {self.distribution} {self.version} "
            f"(entry point {self.name} = {self.entry_point}) failed to load: {self.error}"
        )


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
            "for the rest of the run"
        )


#: Hook time per lever: ``{lever: {hook: seconds}}``.
Timings = dict[str, dict[str, float]]


def _split(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(s.strip() for s in items if s.strip()))


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() not in ("", "0", "false", "no")


@attrs.frozen
class Selection:
    """Which levers to load. Build it with :meth:`from_env`.

    ``only`` None means every installed lever. With autoload off, only the
    levers named explicitly are loaded, as pytest does with ``-p``.
    """

    only: tuple[str, ...] | None = None
    disabled: tuple[str, ...] = ()
    autoload: bool = True
    strict: bool = False

    @classmethod
    def from_env(
        cls,
        levers: str | Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Selection:
        """The CLI's ``--levers`` wins over ``ESPER_LEVERS``; the rest come from the env."""
        env = os.environ if environ is None else environ
        only = _split(levers) if levers is not None else _split(env.get(ENV_LEVERS))
        return cls(
            only=only,
            disabled=_split(env.get(ENV_DISABLED)) or (),
            autoload=not _flag(env, ENV_NO_AUTOLOAD),
            strict=_flag(env, ENV_STRICT),
        )


@attrs.frozen
class LoadResult:
    levers: tuple[LeverInfo, ...]
    failures: tuple[LoadFailure, ...]
    installed: tuple[str, ...]


def installed_entry_points(group: str = ENTRY_POINT_GROUP) -> list[md.EntryPoint]:
    """Every entry point in ``group``, deduplicated, sorted by name then distribution."""
    seen: dict[tuple[str, str], md.EntryPoint] = {}
    for ep in md.entry_points(group=group):
        seen.setdefault((ep.name, _dist_name(ep)), ep)
    return sorted(seen.values(), key=lambda ep: (ep.name, _dist_name(ep)))


def _dist_name(ep: md.EntryPoint) -> str:
    dist = ep.dist
    return dist.metadata["Name"] if dist is not None else "<unknown distribution>"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = ep.dist
    return dist.version if dist is not None else "?"


def load_levers(
    selection: Selection | None = None,
    entry_points: Iterable[md.EntryPoint] | None = None,
    *,
    listing: bool = False,
) -> LoadResult:
    """Load the selected levers, each on its own, in name order.

    A lever that fails to import is recorded as a :class:`LoadFailure`; it is
    an error if the user named it, or if the selection is strict. ``listing``
    (``esper levers list/show``) never raises for a lever that fails: a listing
    tool must show what is broken. Relations between levers (``requires``,
    ``conflicts_with``) are the selection's to satisfy and stay errors, except
    in a listing, which marks the levers concerned as failures. A plugin
    reusing a builtin lever's name is dropped, never the builtin.
    """
    sel = selection or Selection.from_env()
    eps = list(entry_points) if entry_points is not None else installed_entry_points()
    by_name, clashes = _by_name(eps, sel, listing)
    installed = tuple(sorted(by_name))
    asked = tuple(sel.only or ()) + tuple(sel.disabled)
    unknown = [n for n in asked if n not in by_name]
    if unknown:
        raise SelectionError(
            f"unknown lever(s) {', '.join(map(repr, unknown))}; installed levers: {', '.join(installed) or 'none'}"
        )
    if sel.only is not None:
        wanted = [n for n in installed if n in sel.only]
    elif sel.autoload:
        wanted = list(installed)
    else:
        wanted = []
    wanted = [n for n in wanted if n not in sel.disabled]

    loaded = [_load_one(name, by_name[name], sel, listing) for name in wanted]
    levers = [lv for lv in loaded if isinstance(lv, LeverInfo)]
    broken = _check_relations(levers, listing)
    levers = [lv for lv in levers if lv.name not in {f.name for f in broken}]
    failures = (*clashes, *(f for f in loaded if isinstance(f, LoadFailure)), *broken)
    return LoadResult(tuple(levers), failures, installed)


def _by_name(
    eps: Iterable[md.EntryPoint], sel: Selection, listing: bool
) -> tuple[dict[str, md.EntryPoint], list[LoadFailure]]:
    """One entry point per lever name. A builtin keeps its name; a plugin reusing it is dropped (refused if strict).

    Two plugins sharing a name cannot be told apart, so that is an error,
    except in a listing, which shows the second as broken.
    """
    by_name: dict[str, md.EntryPoint] = {}
    dropped: list[LoadFailure] = []
    for ep in sorted(eps, key=lambda e: (not _ep_builtin(e), e.name, _dist_name(e))):
        other = by_name.get(ep.name)
        if other is None or _dist_name(other) == _dist_name(ep):
            by_name.setdefault(ep.name, ep)
            continue
        clash = (
            f"lever name {ep.name!r} is declared by two distributions: "
            f"{_dist_name(other)} ({other.value}) and {_dist_name(ep)} ({ep.value})"
        )
        if _ep_builtin(other) and not sel.strict:
            clash = f"{clash}; the builtin lever keeps the name, rename the plugin's entry point"
        elif not listing:
            raise PluginError(clash + (f" ({ENV_STRICT}=1)" if sel.strict else ""))
        dropped.append(LoadFailure(ep.name, _dist_name(ep), _dist_version(ep), ep.value, clash))
    return by_name, dropped


def _ep_builtin(ep: md.EntryPoint) -> bool:
    return _is_builtin(_dist_name(ep))


def _load_one(name: str, ep: md.EntryPoint, sel: Selection, listing: bool) -> LeverInfo | LoadFailure:
    """Import one lever; a failure is an error if the user named it or the selection is strict (unless listing)."""
    try:
        plugin = ep.load()
    except Exception as exc:
        fail = LoadFailure(name, _dist_name(ep), _dist_version(ep), ep.value, f"{type(exc).__name__}: {exc}")
        if not listing and (sel.strict or (sel.only is not None and name in sel.only)):
            why = "" if not sel.strict else f" ({ENV_STRICT}=1)"
            raise PluginError(fail.describe() + why) from exc
        return fail
    return LeverInfo(
        name=name,
        distribution=_dist_name(ep),
        version=_dist_version(ep),
        entry_point=ep.value,
        plugin=plugin,
        requires=tuple(getattr(plugin, "requires", ())),
        conflicts_with=tuple(getattr(plugin, "conflicts_with", ())),
    )


def _check_relations(levers: Sequence[LeverInfo], listing: bool) -> list[LoadFailure]:
    """A missing requirement or a conflict is an error, except in a listing, which marks the levers broken."""
    names = {lv.name for lv in levers}
    broken: list[LoadFailure] = []
    for lv in levers:
        missing = [r for r in lv.requires if r not in names]
        why = []
        if missing:
            why.append(f"{lv.label} requires lever(s) {', '.join(map(repr, missing))}, which are not active")
        why += [
            f"{lv.label} conflicts with active lever {other!r}; select one"
            for other in lv.conflicts_with
            if other in names
        ]
        if why and not listing:
            raise PluginError(why[0])
        if why:
            broken.append(LoadFailure(lv.name, lv.distribution, lv.version, lv.entry_point, "; ".join(why)))
    return broken


@attrs.frozen
class ComposedField:
    """A telemetry field with the lever that declared it."""

    lever: str
    spec: TelemetryField

    @property
    def key(self) -> str:
        return f"{self.lever}.{self.spec.name}"


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


class Registry:
    """The pluggy manager holding the kernel's core plugin and the active levers.

    Construct it from a :class:`LoadResult` and a core plugin; composition
    happens in the constructor, so a Registry that exists is valid.
    """

    def __init__(
        self,
        core: object,
        levers: Sequence[LeverInfo] = (),
        failures: Sequence[LoadFailure] = (),
        installed: Sequence[str] | None = None,
    ) -> None:
        self.levers: tuple[LeverInfo, ...] = tuple(levers)
        self.failures: tuple[LoadFailure, ...] = tuple(failures)
        #: Every installed lever name, selected or not, so errors can list them.
        self.installed: tuple[str, ...] = (
            tuple(installed)
            if installed is not None
            else tuple(sorted({lv.name for lv in self.levers} | {f.name for f in self.failures}))
        )
        core_info = LeverInfo(CORE_NAME, "esper-kernel", kernel_version(), "esper_kernel.core", core)
        self._all = (core_info, *self.levers)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for info in self._all:
            try:
                self.pm.register(info.plugin, name=info.name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                raise PluginError(f"{info.label} could not be registered: {exc}") from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            bad = next((i for i in self._all if i.plugin is exc.plugin), None)
            label = bad.label if bad else repr(exc.plugin)
            raise PluginError(f"{label}: {exc}; the hooks are {', '.join(hookspecs.HOOK_NAMES)}") from exc
        self.space = ActionSpace(self._compose_heads())
        self.fields: tuple[ComposedField, ...] = self._compose_fields()
        self.safety: dict[str, CompileSafety] = self._compose_safety()
        self.masks = MaskComposer(self.space, self._mask_sources())
        #: Knob name -> the levers that own it (write it, by declaration or in a hook).
        self.knob_owners: dict[str, tuple[str, ...]] = self._compose_knob_owners()
        self.settings: tuple[KnobSetting, ...] = tuple(
            KnobSetting(h.lever, h.name, h.spec.knob, h.spec.on_enter) for h in self.space.heads if h.spec.knob
        )
        self.stage_hooks: tuple[StageHook, ...] = self._seed_hooks("on_enter_stage")
        self.epoch_hooks: tuple[StageHook, ...] = self._seed_hooks("on_epoch")
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

    @classmethod
    def open(
        cls,
        core: object,
        selection: Selection | None = None,
        entry_points: Iterable[md.EntryPoint] | None = None,
        *,
        listing: bool = False,
    ) -> Registry:
        """Load the selected levers and compose them with ``core``.

        What every command does first. Failures that the selection tolerates
        are kept on :attr:`failures` for the caller to report; with
        ``listing`` every failure is tolerated (see :func:`load_levers`).
        """
        sel = selection or Selection.from_env()
        result = load_levers(sel, entry_points, listing=listing)
        levers = list(result.levers)
        failures = list(result.failures)
        named = set(sel.only or ())
        while True:
            try:
                registry = cls(core, levers, failures, installed=result.installed)
                registry.strict = sel.strict
                return registry
            except PluginError as exc:
                # Tolerant means tolerant: a lever whose declarations are invalid is
                # dropped and reported like one that fails to import, unless the
                # user named it or asked for strictness. Every message names the
                # lever at fault; the last one named is the one that clashed.
                # A builtin is never the culprit while a plugin it clashed with is named.
                suspects = sorted(reversed(levers), key=lambda lv: lv.builtin)
                culprit = next((lv for lv in suspects if f"lever {lv.name!r}" in str(exc)), None)
                if culprit is None or (not listing and (sel.strict or culprit.name in named)):
                    if sel.strict and culprit is not None:
                        raise PluginError(f"{exc} ({ENV_STRICT}=1)") from exc
                    raise
                levers.remove(culprit)
                failures.append(
                    LoadFailure(
                        culprit.name, culprit.distribution, culprit.version, culprit.entry_point, _one_line(exc)
                    )
                )

    # -- resolution ------------------------------------------------------

    def _impl(self, info: LeverInfo, hook: str) -> pluggy.HookImpl | None:
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin is info.plugin:
                return impl  # type: ignore[no-any-return]
        return None

    def hooks_of(self, name: str) -> tuple[str, ...]:
        """Which of the hooks the named lever implements."""
        info = self.info(name)
        return tuple(h for h in hookspecs.HOOK_NAMES if self._impl(info, h) is not None)

    def info(self, name: str) -> LeverInfo:
        for info in self._all:
            if info.name == name:
                return info
        raise SelectionError(f"no active lever {name!r}; active: {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levers)

    def _call_once(self, info: LeverInfo, hook: str, **kwargs: Any) -> Any:
        impl = self._impl(info, hook)
        if impl is None:
            return None
        try:
            return impl.function(**{a: kwargs[a] for a in impl.argnames})
        except Exception as exc:
            raise PluginError(f"{info.label}: {hook}() raised {type(exc).__name__}: {exc}") from exc

    def _compose_heads(self) -> list[ComposedHead]:
        heads: list[ComposedHead] = []
        owner: dict[str, LeverInfo] = {}
        for info in self._all:
            got = self._call_once(info, "action_head")
            if got is not None and not isinstance(got, HeadSpec | Iterable):
                # list(got) would raise a bare TypeError that names no lever.
                raise PluginError(f"{info.label}: action_head() must return HeadSpec(s), got {type(got).__name__}")
            specs = [] if got is None else [got] if isinstance(got, HeadSpec) else list(got)
            for spec in specs:
                if not isinstance(spec, HeadSpec):
                    raise PluginError(f"{info.label}: action_head() must return HeadSpec(s), got {type(spec).__name__}")
                if spec.name in owner:
                    raise PluginError(_head_clash(spec.name, owner[spec.name], info))
                owner[spec.name] = info
                heads.append(ComposedHead(spec, len(heads), info.name, info.distribution))
        return heads

    def _compose_fields(self) -> tuple[ComposedField, ...]:
        out: list[ComposedField] = []
        for info in self._all:
            got = self._call_once(info, "telemetry_fields")
            if got is None:
                got = ()
            elif not isinstance(got, Iterable):
                # Iterating it would raise a bare TypeError that names no lever.
                raise PluginError(
                    f"{info.label}: telemetry_fields() must return a list of TelemetryField, got {type(got).__name__}"
                )
            seen: set[str] = set()
            for spec in got:
                if not isinstance(spec, TelemetryField):
                    raise PluginError(
                        f"{info.label}: telemetry_fields() must return TelemetryField items, got {type(spec).__name__}"
                    )
                if spec.name in seen:
                    raise PluginError(f"{info.label}: telemetry field {spec.name!r} declared twice")
                seen.add(spec.name)
                out.append(ComposedField(info.name, spec))
        return tuple(out)

    def _compose_safety(self) -> dict[str, CompileSafety]:
        out: dict[str, CompileSafety] = {}
        for info in self._all:
            if self._impl(info, "compile_safety") is None:
                out[info.name] = UNDECLARED_SAFETY
                continue
            got = self._call_once(info, "compile_safety")
            if not isinstance(got, CompileSafety):
                raise PluginError(f"{info.label}: compile_safety() must return CompileSafety, got {type(got).__name__}")
            out[info.name] = got
        return out

    def _mask_sources(self) -> list[MaskSource]:
        out = []
        for info in self._all:
            until = {h.name: h.spec.until for h in self.space.heads if h.lever == info.name and h.spec.until}
            if until:
                out.append(MaskSource(info.name, info.distribution, _declared_mask(until)))
            impl = self._impl(info, "mask")
            if impl is not None:
                fn = impl.function if impl.argnames else _ignore_view(impl.function)
                out.append(MaskSource(info.name, info.distribution, cast(MaskFn, fn)))
        return out

    def _knob_list(self, info: LeverInfo, attr: str) -> frozenset[str]:
        got = getattr(info.plugin, attr, ())
        names = (got,) if isinstance(got, str) else tuple(got)
        unknown = [n for n in names if n not in KNOB_NAMES]
        if unknown:
            raise PluginError(f"{info.label}: `{attr}` names unknown knob(s) {unknown}; knobs are {sorted(KNOB_NAMES)}")
        return frozenset(names)

    def owned_knobs(self, lever: str) -> frozenset[str]:
        """The knobs ``lever`` may write: its heads' ``knob`` and its module's ``writes``."""
        info = self.info(lever)
        declared = {h.spec.knob for h in self.space.heads if h.lever == lever and h.spec.knob}
        return self._knob_list(info, "writes") | frozenset(k for k in declared if k)

    def _compose_knob_owners(self) -> dict[str, tuple[str, ...]]:
        owners: dict[str, list[LeverInfo]] = {}
        for info in self._all:
            for knob in sorted(self.owned_knobs(info.name)):
                owners.setdefault(knob, []).append(info)
        for knob, infos in owners.items():
            sharing = [i for i in infos if knob in self._knob_list(i, "composes")]
            if len(infos) > 1 and not sharing:
                # Two plain writers: the later one silently overwrites the earlier's choice.
                raise PluginError(
                    f"knob {knob!r} is written by {infos[0].label} and by {infos[1].label}; one would silently "
                    f"overwrite the other. Drop one, or declare `composes = ({knob!r},)` in the lever that "
                    "combines its write with the others'"
                )
        return {k: tuple(i.name for i in v) for k, v in owners.items()}

    def _seed_hooks(self, hook: str) -> tuple[StageHook, ...]:
        out = []
        for info in self._all:
            impl = self._impl(info, hook)
            if impl is not None:
                owns = self.owned_knobs(info.name)
                out.append(StageHook(info.name, info.distribution, impl.function, tuple(impl.argnames), owns))
        return tuple(out)

    # -- per-step calls ----------------------------------------------------

    def enter_stage(self, seed: SeedState, old: Stage, new: Stage) -> None:
        """Set the declared knobs for ``new``, then run every ``on_enter_stage`` in lever order."""
        for setting in self.settings:
            if setting.stage is new and setting.head in seed.values and setting.lever not in self.quarantined:
                before = attrs.asdict(seed.knobs)
                setattr(seed.knobs, setting.knob, seed.values[setting.head])
                self._note_writes(setting.lever, seed, before)
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
                self._note_writes(hook.lever, seed, before)
        except PluginError as err:
            if not self.quarantine(hook.lever, name, err):
                raise
        finally:
            self.add_time(hook.lever, name, time.perf_counter() - started)

    def _note_writes(self, lever: str, seed: SeedState, before: Mapping[str, Any]) -> None:
        after = attrs.asdict(seed.knobs)
        changed = [k for k, v in before.items() if after[k] != v]
        if not changed:
            return
        _, first, last = self._written.setdefault(lever, {}).setdefault(seed.seed_id, (seed, {}, {}))
        for knob in changed:
            first.setdefault(knob, before[knob])
            last[knob] = after[knob]

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
        q = Quarantine(lever, info.distribution, hook, _one_line(error))
        self.quarantined[lever] = q
        self.masks.frozen.add(lever)
        self._take_back(lever)
        if self.on_quarantine is not None:
            self.on_quarantine(q)
        return True

    def warn_once(self, key: str, message: str) -> None:
        """Show ``message`` to the person running this, the first time ``key`` comes up."""
        if key not in self._warned and self.on_warning is not None:
            self._warned.add(key)
            self.on_warning(message)

    def observed_fields(self) -> tuple[ComposedField, ...]:
        return tuple(f for f in self.fields if f.spec.observed)


def _run(hook: StageHook, args: Mapping[str, Any], where: str, before: Mapping[str, Any], *, building: bool) -> None:
    """Call a seed hook; a knob it writes without owning it, or too late to matter, is an error."""
    seed: SeedState = args["seed"]
    label = f"lever {hook.lever!r} ({hook.distribution})"
    try:
        hook.fn(**{a: args[a] for a in hook.argnames})
    except Exception as exc:
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


def _head_clash(head: str, first: LeverInfo, second: LeverInfo) -> str:
    """The kernel's own heads and the builtin levers keep their names: the plugin is named as the one at fault."""
    if first.builtin != second.builtin:
        kept, plugin = (first, second) if first.builtin else (second, first)
        return f"{plugin.label}: head {head!r} is already declared by the builtin {kept.label}, which keeps it"
    return f"head {head!r} is declared twice: by {first.label} and by {second.label}"


def _declared_mask(until: Mapping[str, Any]) -> MaskFn:
    """The mask of heads declaring ``HeadSpec.until``: choices whose seed reaches that point in the episode."""

    def mask(view: MaskView) -> dict[str, torch.Tensor]:
        return {head: view.reaching_each(head, point) for head, point in until.items()}

    return mask


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _ignore_view(fn: Callable[[], Any]) -> Callable[[Any], Any]:
    return lambda _view: fn()


def check_compile_safety(registry: Registry, allow_graph_breaks: bool) -> None:
    """With compile on, refuse levers that declare BREAKS_GRAPH unless the user allows them."""
    breaking = [(name, s) for name, s in registry.safety.items() if s.level is Safety.BREAKS_GRAPH]
    if breaking and not allow_graph_breaks:
        detail = "; ".join(f"{registry.info(n).label}: {s.reason or 'no reason given'}" for n, s in breaking)
        raise PluginError(
            f"--compile refuses levers that break the graph ({detail}). Pass --allow-graph-breaks to run them "
            "anyway (the host then compiles in pieces), or deselect them with --levers / ESPER_DISABLED_LEVERS"
        )


def kernel_version() -> str:
    try:
        return md.version("esper-kernel")
    except md.PackageNotFoundError:
        return "0+unknown"
