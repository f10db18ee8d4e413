"""Finding and loading lever plugins: entry points, the user's selection, and every failure named.

Levers are entry points in the ``esper.levers`` group. Each is loaded on its
own so one broken package cannot hide the others, and every failure is
reported with the distribution that shipped it. Composing what loaded is
:mod:`esper_kernel.compose.registry`'s.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Iterable, Mapping, Sequence

import attrs

from esper_kernel.infra.dists import name_and_version
from esper_kernel.infra.errors import PluginError, SelectionError
from esper_kernel.infra.stops import stops, user_stopped

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
    #: What a lever failing at run time does (``--on-lever-error``): "stop" the run, or be "quarantine"d
    #: for the rest of its episode. Carried with the selection, so worker processes apply the same policy.
    on_error: str = "stop"

    @classmethod
    def from_env(
        cls,
        levers: str | Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        on_error: str = "stop",
    ) -> Selection:
        """The CLI's ``--levers`` wins over ``ESPER_LEVERS``; the rest come from the env (``on_error`` from a flag)."""
        env = os.environ if environ is None else environ
        only = _split(levers) if levers is not None else _split(env.get(ENV_LEVERS))
        return cls(
            only=only,
            disabled=_split(env.get(ENV_DISABLED)) or (),
            autoload=not _flag(env, ENV_NO_AUTOLOAD),
            strict=_flag(env, ENV_STRICT),
            on_error=on_error,
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
    return name_and_version(dist)[0] if dist is not None else "<unknown distribution>"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = ep.dist
    return name_and_version(dist)[1] if dist is not None else "?"


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
    before = stops()
    try:
        plugin = ep.load()
        relations = _relation(plugin, "requires"), _relation(plugin, "conflicts_with")
    except BaseException as exc:  # a plugin's sys.exit(), KeyboardInterrupt or BaseException must not end the command
        if user_stopped(exc, before):
            raise
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
        requires=relations[0],
        conflicts_with=relations[1],
    )


def _relation(plugin: object, attr: str) -> tuple[str, ...]:
    """A lever's ``requires`` or ``conflicts_with``: lever names, or a TypeError saying what it is instead."""
    value = getattr(plugin, attr, ())
    if isinstance(value, str) or not isinstance(value, tuple | list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{attr} must be a tuple of lever names, got {value!r}")
    return tuple(value)


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


def kernel_version() -> str:
    try:
        return md.version("esper-kernel")
    except md.PackageNotFoundError:
        return "0+unknown"
