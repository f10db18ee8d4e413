"""Composing lever plugins: the pluggy manager, the action space, masks, telemetry fields and knob owners.

Finding and loading levers is :mod:`esper_kernel.compose.discovery`; calling their
seed hooks each step, timed and under the fault policy, is
:mod:`esper_kernel.compose.runtime`. Composition resolves every hook once; the
per-step path then calls plain functions.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import pluggy

from esper_kernel.compose import hookspecs
from esper_kernel.compose.actions import ActionSpace, ComposedHead
from esper_kernel.compose.discovery import (
    CORE_NAME,
    ENV_STRICT,
    LeverInfo,
    LoadFailure,
    Selection,
    kernel_version,
    load_levers,
)
from esper_kernel.compose.masks import MaskComposer, MaskFn, MaskSource, MaskView
from esper_kernel.compose.runtime import HookRuntime, KnobSetting, StageHook, one_line
from esper_kernel.compose.seeds import KNOB_NAMES
from esper_kernel.compose.specs import UNDECLARED_SAFETY, CompileSafety, HeadSpec, Safety, TelemetryField
from esper_kernel.infra.errors import PluginError, SelectionError
from esper_kernel.infra.stops import stops, user_stopped

if TYPE_CHECKING:  # composing levers is plain Python; only their masks, called later, make tensors
    import torch


@attrs.frozen
class ComposedField:
    """A telemetry field with the lever that declared it."""

    lever: str
    spec: TelemetryField

    @property
    def key(self) -> str:
        return f"{self.lever}.{self.spec.name}"


class Registry(HookRuntime):
    """The pluggy manager holding the kernel's core plugin and the active levers.

    Construct it from a :class:`LoadResult` and a core plugin; composition
    happens in the constructor, so a Registry that exists is valid. Finding
    and loading levers is :mod:`esper_kernel.compose.discovery`'s; calling their seed
    hooks with the fault policy is :class:`~esper_kernel.compose.runtime.HookRuntime`'s.
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
        core_info = LeverInfo(CORE_NAME, "esper-kernel", kernel_version(), "esper_kernel.compose.core", core)
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
        HookRuntime.__init__(self)

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
                registry.fault_policy = sel.on_error
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
                    LoadFailure(culprit.name, culprit.distribution, culprit.version, culprit.entry_point, one_line(exc))
                )

    def clone(self) -> Registry:
        """The same levers composed afresh, for another env: its own quarantines, knob records and hook times."""
        twin = type(self)(self._all[0].plugin, self.levers, self.failures, self.installed)
        if twin.space.names != self.space.names:
            raise PluginError(
                f"the levers composed heads {list(twin.space.names)} on a second call, "
                f"{list(self.space.names)} on the first: a lever's action_head() must be the same"
            )
        twin.strict, twin.fault_policy, twin.compiling = self.strict, self.fault_policy, self.compiling
        return twin

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
        before = stops()
        try:
            return impl.function(**{a: kwargs[a] for a in impl.argnames})
        except BaseException as exc:  # a declaration hook's sys.exit() or KeyboardInterrupt is the plugin's fault
            if user_stopped(exc, before):
                raise
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

    def observed_fields(self) -> tuple[ComposedField, ...]:
        return tuple(f for f in self.fields if f.spec.observed)


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
