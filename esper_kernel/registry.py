"""Finding, selecting, loading and composing lever plugins.

Levers are entry points in the ``esper.levers`` group. Each is loaded on its
own so one broken package cannot hide the others, and every failure is
reported with the distribution that shipped it. Composition resolves every
hook once; the per-step path then calls plain functions.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import attrs
import pluggy

from esper_kernel import hookspecs
from esper_kernel.actions import ActionSpace, ComposedHead, MaskComposer, MaskFn, MaskSource
from esper_kernel.errors import PluginError, SelectionError
from esper_kernel.specs import UNDECLARED_SAFETY, CompileSafety, HeadSpec, TelemetryField

ENTRY_POINT_GROUP = "esper.levers"
CORE_NAME = "esper"

ENV_LEVERS = "ESPER_LEVERS"
ENV_DISABLED = "ESPER_DISABLED_LEVERS"
ENV_NO_AUTOLOAD = "ESPER_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "ESPER_STRICT_PLUGINS"


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
            "its heads stay at their defaults and its hooks are skipped for the rest of the run"
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
    ``conflicts_with``) are the selection's to satisfy and stay errors.
    """
    sel = selection or Selection.from_env()
    eps = list(entry_points) if entry_points is not None else installed_entry_points()
    by_name: dict[str, md.EntryPoint] = {}
    for ep in sorted(eps, key=lambda e: (e.name, _dist_name(e))):
        other = by_name.get(ep.name)
        if other is not None and _dist_name(other) != _dist_name(ep):
            raise PluginError(
                f"lever name {ep.name!r} is declared by two distributions: "
                f"{_dist_name(other)} ({other.value}) and {_dist_name(ep)} ({ep.value})"
            )
        by_name.setdefault(ep.name, ep)
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

    levers: list[LeverInfo] = []
    failures: list[LoadFailure] = []
    for name in wanted:
        ep = by_name[name]
        try:
            plugin = ep.load()
        except Exception as exc:
            fail = LoadFailure(name, _dist_name(ep), _dist_version(ep), ep.value, f"{type(exc).__name__}: {exc}")
            if not listing and (sel.strict or (sel.only is not None and name in sel.only)):
                why = "" if not sel.strict else f" ({ENV_STRICT}=1)"
                raise PluginError(fail.describe() + why) from exc
            failures.append(fail)
            continue
        levers.append(
            LeverInfo(
                name=name,
                distribution=_dist_name(ep),
                version=_dist_version(ep),
                entry_point=ep.value,
                plugin=plugin,
                requires=tuple(getattr(plugin, "requires", ())),
                conflicts_with=tuple(getattr(plugin, "conflicts_with", ())),
            )
        )
    _check_relations(levers)
    return LoadResult(tuple(levers), tuple(failures), installed)


def _check_relations(levers: Sequence[LeverInfo]) -> None:
    names = {lv.name for lv in levers}
    for lv in levers:
        missing = [r for r in lv.requires if r not in names]
        if missing:
            raise PluginError(f"{lv.label} requires lever(s) {', '.join(map(repr, missing))}, which are not active")
        for other in lv.conflicts_with:
            if other in names:
                raise PluginError(f"{lv.label} conflicts with active lever {other!r}; select one")


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
    lever: str
    distribution: str
    fn: StageFn = attrs.field(repr=False)
    argnames: tuple[str, ...]


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
        self.stage_hooks: tuple[StageHook, ...] = self._stage_hooks()
        #: "stop": a lever failing at run time stops the run; "quarantine": the lever is frozen and the run goes on.
        self.fault_policy = "stop"
        self.quarantined: dict[str, Quarantine] = {}
        #: Told of every quarantine as it happens (the run logs and shows it).
        self.on_quarantine: Callable[[Quarantine], None] | None = None
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
                return cls(core, levers, failures, installed=result.installed)
            except PluginError as exc:
                # Tolerant means tolerant: a lever whose declarations are invalid is
                # dropped and reported like one that fails to import, unless the
                # user named it or asked for strictness. Every message names the
                # lever at fault; the last one named is the one that clashed.
                culprit = next((lv for lv in reversed(levers) if f"lever {lv.name!r}" in str(exc)), None)
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
        """Which of the five hooks the named lever implements."""
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
                    first = owner[spec.name]
                    raise PluginError(f"head {spec.name!r} is declared twice: by {first.label} and by {info.label}")
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
            impl = self._impl(info, "mask")
            if impl is not None:
                fn = impl.function if impl.argnames else _ignore_view(impl.function)
                out.append(MaskSource(info.name, info.distribution, cast(MaskFn, fn)))
        return out

    def _stage_hooks(self) -> tuple[StageHook, ...]:
        out = []
        for info in self._all:
            impl = self._impl(info, "on_enter_stage")
            if impl is not None:
                out.append(StageHook(info.name, info.distribution, impl.function, tuple(impl.argnames)))
        return tuple(out)

    # -- per-step calls ----------------------------------------------------

    def enter_stage(self, seed: Any, old: Any, new: Any) -> None:
        """Run every lever's ``on_enter_stage`` in lever order, the core first."""
        args = {"seed": seed, "old": old, "new": new}
        for hook in self.stage_hooks:
            if hook.lever in self.quarantined:
                continue
            started = time.perf_counter()
            try:
                hook.fn(**{a: args[a] for a in hook.argnames})
            except Exception as exc:
                err = PluginError(
                    f"lever {hook.lever!r} ({hook.distribution}): on_enter_stage({old.name} -> "
                    f"{new.name}) raised {type(exc).__name__}: {exc}"
                )
                if not self.quarantine(hook.lever, "on_enter_stage", err):
                    raise err from exc
            finally:
                self.add_time(hook.lever, "on_enter_stage", time.perf_counter() - started)

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
        if self.on_quarantine is not None:
            self.on_quarantine(q)
        return True

    def observed_fields(self) -> tuple[ComposedField, ...]:
        return tuple(f for f in self.fields if f.spec.observed)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _ignore_view(fn: Callable[[], Any]) -> Callable[[Any], Any]:
    return lambda _view: fn()


def kernel_version() -> str:
    try:
        return md.version("esper-kernel")
    except md.PackageNotFoundError:
        return "0+unknown"
