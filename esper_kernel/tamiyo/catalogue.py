"""The policy catalogue: every policy spec Esper accepts, parsed in one place and built in one place.

``esper run --policy``, ``esper eval --policies`` and ``esper sweep --policies``
all read a spec through :func:`parse_policy` and build it with
:func:`build_policy`, so the three commands accept the same names. A spec is

* a kind from :data:`KINDS` (``heuristic``, ``random``, ``wait``, ``pretrained``,
  ``schedule:FILE``, ...) or a policy file written by ``esper train``;
* ``greedy:`` before a learned policy (a file, ``pretrained`` or ``transfer:``):
  each head's most probable legal choice instead of a draw;
* ``+HEAD=CHOICE`` after it, any number of times: that lever head forced
  (the nearest legal choice where it is illegal, counted as a fallback);
* ``static`` or ``static:N``: the starting host widened (to a growing
  policy's final size in an eval, or to about ``N`` parameters) and never grown.

A new policy kind is one :func:`register` call: its name, whether it takes an
argument (``name:ARG``), how to check the argument before any episode starts,
and how to build it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from esper_kernel.compose.names import UNFORCEABLE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.grow.sizing import count_params
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.bounds import MAX_WIDTH
from esper_kernel.settings.config import EnvConfig
from esper_kernel.tamiyo import learned
from esper_kernel.tamiyo.fit import defaulted_heads as defaulted_heads  # re-exported: commands ask here
from esper_kernel.tamiyo.fit import describe_fit as describe_fit
from esper_kernel.tamiyo.fit import unseen_choices as unseen_choices
from esper_kernel.tamiyo.policies import (
    CarriesRunState,
    ForcedPolicy,
    HeuristicPolicy,
    Policy,
    RandomPolicy,
    WaitPolicy,
    load_run_state,
    run_state,
)

__all__ = [
    "KINDS",
    "BuildContext",
    "CarriesRunState",
    "PolicyKind",
    "PolicySpec",
    "build_policy",
    "check_forced",
    "check_spec",
    "defaulted_heads",
    "describe_fit",
    "learned_of",
    "learned_policy_file",
    "load_run_state",
    "parse_force",
    "parse_policy",
    "register",
    "run_state",
    "unseen_choices",
]


@attrs.frozen
class PolicySpec:
    """One parsed policy spec: a policy, lever heads it is forced to, or a static-host control."""

    policy: str
    forced: tuple[tuple[str, str], ...] = ()
    #: For ``static``: the parameter count to widen the host to (None: match a growing policy).
    static_params: int | None = None
    static: bool = False
    #: For a learned policy: take each head's most probable legal choice instead of sampling.
    greedy: bool = False
    #: A schedule resolved before any episode starts (``recipe:``): its TOML text.
    resolved: str | None = None

    @property
    def name(self) -> str:
        if self.static:
            return "static" if self.static_params is None else f"static:{self.static_params}"
        policy = f"greedy:{self.policy}" if self.greedy else self.policy
        return "+".join([policy, *(f"{h}={c}" for h, c in self.forced)])


@attrs.frozen
class BuildContext:
    """What a policy is built for: the composed levers, the observation size, the episode seed, the env."""

    registry: Registry
    obs_dim: int
    seed: int
    env: EnvConfig


@attrs.frozen
class PolicyKind:
    """One kind of policy the catalogue knows."""

    name: str
    #: One line for help texts and ``docs/eval.md``.
    summary: str
    #: ``(argument, spec, context) -> policy``; the argument is what follows ``name:`` (or the name itself).
    build: Callable[[str, PolicySpec, BuildContext], Policy]
    #: Written ``name:ARG`` (``schedule:FILE``) rather than ``name``.
    takes_argument: bool = False
    #: ``greedy:`` applies (a learned policy).
    learned: bool = False
    #: ``(argument, where, registry, env)``: raises a one-line :class:`EsperError` starting with ``where`` (the flag and
    #: the spec) for an argument that cannot work, before any episode starts.
    check: Callable[[str, str, Registry, EnvConfig], None] | None = None
    #: Makes no decision of its own, so ``--force`` does not apply to it.
    decides: bool = True


KINDS: dict[str, PolicyKind] = {}


def register(kind: PolicyKind) -> PolicyKind:
    """Add a kind of policy; every command accepts it from then on."""
    if kind.name in KINDS:
        raise ValueError(f"policy kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


TRANSFER = learned.TRANSFER
#: ``transfer:`` where a blueprint new to the policy draws as its family's missing ones (tamiyo/fit.py).
FAMILY = learned.FAMILY
_check_learned, _policy_path = learned.check, learned.policy_path


def _build_learned(
    arg: str, spec: PolicySpec, ctx: BuildContext, transfer: bool = False, families: bool = False
) -> Policy:
    return learned.build(arg, ctx.registry, ctx.env, ctx.obs_dim, ctx.seed, spec.greedy, transfer, families)


def _check_file(arg: str, where: str, registry: Registry, env: EnvConfig) -> None:
    if not Path(arg).exists():
        known = ", ".join(n for n, k in KINDS.items() if k.name != FILE)
        raise EsperError(f"{where}: {arg!r} is neither a policy kind ({known}) nor an existing policy file")
    _check_learned(arg, where, registry, env)


#: The kind of a spec that names no registered kind: a policy file.
FILE = "file"


def _heuristic(_arg: str, _spec: PolicySpec, _ctx: BuildContext) -> Policy:
    from esper_kernel.tamiyo.heuristic import EvidenceHeuristic

    return EvidenceHeuristic()


register(
    PolicyKind(
        "heuristic",
        "grows early, picks blueprints by their measured contribution, quickest lever timing",
        _heuristic,
    )
)
register(
    PolicyKind(
        "heuristic-v1",
        "the first heuristic: catalogue order on a plateau, default levers",
        lambda *_: HeuristicPolicy(),
    )
)
register(
    PolicyKind(
        "random", "uniform over legal choices, seeded by the episode seed", lambda _a, _s, c: RandomPolicy(c.seed)
    )
)
register(
    PolicyKind("wait", "never grows: the control growth is paired against", lambda *_: WaitPolicy(), decides=False)
)
register(
    PolicyKind("pretrained", "the policy shipped for the task", _build_learned, learned=True, check=_check_learned)
)
register(PolicyKind(FILE, "a policy file written by esper train", _build_learned, learned=True, check=_check_file))


register(
    PolicyKind(
        TRANSFER,
        "a policy file, or the policy shipped for another task, played on this task (blueprints matched by name)",
        lambda arg, spec, ctx: _build_learned(arg, spec, ctx, transfer=True),
        takes_argument=True,
        learned=True,
        check=learned.check_transfer,
    )
)
register(
    PolicyKind(
        FAMILY,
        "as transfer:, and a blueprint new to it is drawn as its family's blueprints missing here were",
        lambda arg, spec, ctx: _build_learned(arg, spec, ctx, transfer=True, families=True),
        takes_argument=True,
        learned=True,
        check=lambda arg, where, registry, env: learned.check_transfer(arg, where, registry, env, families=True),
    )
)


def _schedule(arg: str, spec: PolicySpec, ctx: BuildContext) -> Policy:
    from esper_kernel.tamiyo.schedule import SchedulePolicy, check_schedule, load_schedule, parse_schedule

    if spec.resolved is not None:
        schedule = parse_schedule(spec.resolved, spec.policy)
        check_schedule(schedule, ctx.registry, ctx.env.slots)
    else:
        schedule = load_schedule(arg)  # checked by _check_schedule
    return SchedulePolicy(schedule)


def _check_schedule(arg: str, where: str, registry: Registry, env: EnvConfig) -> None:
    from esper_kernel.tamiyo.schedule import ScheduleError, check_schedule, load_schedule

    if not arg:
        raise EsperError(f"{where}: name a schedule file after schedule:")
    try:
        check_schedule(load_schedule(arg), registry, env.slots)
    except ScheduleError as exc:
        raise EsperError(f"{where}: {exc}") from None


register(
    PolicyKind(
        "schedule",
        "a TOML file of growth steps played open-loop (docs/eval.md, Schedules)",
        _schedule,
        takes_argument=True,
        check=_check_schedule,
    )
)


def _recipe(arg: str, spec: PolicySpec, ctx: BuildContext) -> Policy:
    if spec.resolved is None:
        raise EsperError(
            f"policy {spec.name!r}: a recipe is read off the evaluation seeds, so only esper eval plays it; "
            "it writes OUT/recipe-*.toml, which --policy schedule:FILE plays anywhere"
        )
    return _schedule(arg, spec, ctx)


def _check_recipe(arg: str, where: str, registry: Registry, env: EnvConfig) -> None:
    if not arg:
        raise EsperError(f"{where}: name the policy after recipe:")
    inner = parse_policy(arg, flag=where)
    if inner.static or kind_of(inner.policy)[0].name == "recipe":
        raise EsperError(f"{where}: a recipe is read off a policy that decides, not off {arg!r}")
    check_spec(inner, registry, env, flag=where)


register(
    PolicyKind(
        "recipe",
        "POLICY's most frequent decision sequence on the eval's seeds, replayed open-loop as a schedule",
        _recipe,
        takes_argument=True,
        check=_check_recipe,
    )
)


def kind_of(name: str) -> tuple[PolicyKind, str]:
    """The kind a policy name (no ``greedy:``, no ``+HEAD=CHOICE``) names, and its argument."""
    kind = KINDS.get(name)
    if kind is not None and not kind.takes_argument and name != FILE:
        return kind, name
    prefix, sep, arg = name.partition(":")
    kind = KINDS.get(prefix)
    if sep and kind is not None and kind.takes_argument:
        return kind, arg
    return KINDS[FILE], name


def _parse_force(text: str, where: str) -> tuple[str, str]:
    head, sep, choice = text.partition("=")
    if not sep or not head or not choice:
        raise EsperError(f"{where}: expected HEAD=CHOICE, got {text!r}")
    return head.strip(), choice.strip()


def parse_force(text: str) -> tuple[str, str]:
    """``tempo=GLACIAL`` -> ``("tempo", "GLACIAL")`` (the ``--force`` option)."""
    return _parse_force(text, where="--force")


def _parse_static(head: str, text: str, rest: Sequence[str], flag: str) -> PolicySpec:
    if rest:
        raise EsperError(f"{flag}: {text!r}: a static host makes no decisions, so nothing can be forced")
    if head == "static":
        return PolicySpec("wait", static=True)
    n = head.removeprefix("static:")
    if not n.isdigit() or int(n) < 1:
        raise EsperError(f"{flag}: {text!r}: expected static:N with N a positive parameter count")
    return PolicySpec("wait", static=True, static_params=int(n))


def parse_policy(text: str, extra_forced: Sequence[tuple[str, str]] = (), *, flag: str = "--policies") -> PolicySpec:
    """``heuristic+tempo=GLACIAL`` -> PolicySpec; ``extra_forced`` (``--force``) applies to policies that decide.

    Checks the grammar only; :func:`check_spec` checks files and forced heads against the levers.
    """
    parts = [p.strip() for p in text.split("+")]
    head, rest = parts[0], parts[1:]
    if not head:
        raise EsperError(f"{flag}: empty policy name in {text!r}")
    if head == "static" or head.startswith("static:"):
        return _parse_static(head, text, rest, flag)
    greedy = head.startswith("greedy:")
    head = head.removeprefix("greedy:")
    if greedy and not head:
        raise EsperError(f"{flag} {text!r}: name a policy file or pretrained after greedy:")
    kind, _ = kind_of(head)
    if greedy and not kind.learned:
        raise EsperError(f"{flag} {text!r}: greedy: applies to a policy file or pretrained, not to {head}")
    forced = [_parse_force(p, where=f"{flag} {text!r}") for p in rest]
    if kind.decides:
        forced += [f for f in extra_forced if f[0] not in {h for h, _ in forced}]
    return PolicySpec(head, tuple(forced), greedy=greedy)


def check_forced(spec: PolicySpec, registry: Registry, where: str = "--force") -> None:
    """Every forced head exists and has the forced choice, or a one-line error naming it and ``where`` it was typed."""
    for head, choice in spec.forced:
        at = f"--force {head}={choice}" if where == "--force" else f"{where}: {head}={choice}"
        if head not in registry.space or head in UNFORCEABLE_HEADS:
            levers = ", ".join(n for n in registry.space.names if n not in UNFORCEABLE_HEADS)
            raise EsperError(f"{at}: no head {head!r} to force; heads: {levers}")
        if choice not in registry.space.head(head).spec.choices:
            known = ", ".join(registry.space.head(head).spec.choices)
            raise EsperError(f"{at}: head {head!r} has no choice {choice!r}; choices: {known}")


def check_spec(spec: PolicySpec, registry: Registry, env: EnvConfig, flag: str = "--policies") -> None:
    """What can be checked before an episode starts: the kind's argument (a file, a schedule) and forced heads."""
    check_forced(spec, registry, f"{flag} {spec.name!r}")
    if spec.static or spec.resolved is not None:
        return
    kind, arg = kind_of(spec.policy)
    if kind.check is not None:
        kind.check(arg, f"{flag} {spec.name!r}", registry, env)


def build_policy(spec: PolicySpec, ctx: BuildContext, flag: str = "--policies") -> Policy:
    """The policy ``spec`` names, for one episode (``ctx.seed``), with its forced heads."""
    if spec.static:
        base: Policy = WaitPolicy()
    else:
        kind, arg = kind_of(spec.policy)
        if kind.check is not None and spec.resolved is None:
            kind.check(arg, f"{flag} {spec.name!r}", ctx.registry, ctx.env)
        base = kind.build(arg, spec, ctx)
    if not spec.forced:
        return base
    check_forced(spec, ctx.registry)
    return ForcedPolicy(base, dict(spec.forced))


def static_width(env: EnvConfig, shape: int | HostShape, params: float) -> int:
    """The smallest width of the task's host whose parameter count reaches ``params`` (the static control).

    ``shape`` is the task's :class:`~esper_kernel.data.taskplugins.HostShape` (an int: the classes of a
    3-channel image task). The host is the task plugin's own, at other widths.
    """
    hs = HostShape(shape) if isinstance(shape, int) else shape
    widest = host_params(env, hs, MAX_WIDTH)
    if widest < params:
        raise EsperError(
            f"the host of task {env.task!r} has {widest:,} parameters at its widest "
            f"(width {MAX_WIDTH}), fewer than {params:,.0f}; ask for fewer"
        )
    lo, hi = 1, MAX_WIDTH  # parameters grow with width: the first width that reaches ``params``
    while lo < hi:
        mid = (lo + hi) // 2
        if host_params(env, hs, mid) < params:
            lo = mid + 1
        else:
            hi = mid
    return lo


def host_params(env: EnvConfig, shape: HostShape, width: int | None) -> int:
    """Parameters of ``env``'s task host at ``width`` (None: the task's own), counted without allocating it."""
    from esper_kernel.data.taskplugins import find_task

    info = find_task(env.task)
    return count_params(lambda: info.host(shape, env.slots, width))


def static_env(spec: PolicySpec, env: EnvConfig, num_classes: int | HostShape, flag: str = "--policy") -> EnvConfig:
    """``env`` with the host widened for a ``static:N`` spec (``env`` itself for any other spec)."""
    if not spec.static:
        return env
    if spec.static_params is None:
        raise EsperError(
            f"{flag} static: give the parameter count to widen the host to, static:N "
            "(a bare static matches a growing policy's size, which only esper eval has)"
        )
    try:
        return attrs.evolve(env, width=static_width(env, num_classes, spec.static_params))
    except EsperError as exc:
        raise EsperError(f"{flag} {spec.name!r}: {exc}") from exc


def learned_of(spec: PolicySpec, ctx: BuildContext) -> Policy | None:
    """The learned policy ``spec`` plays (``recipe:P``'s ``P``), built to ask how it fits; None for a spec
    that plays no learned policy."""
    if spec.static:
        return None
    kind, arg = kind_of(spec.policy)
    if kind.name == "recipe":
        return learned_of(parse_policy(arg), ctx)
    if not kind.learned:
        return None
    return build_policy(attrs.evolve(spec, forced=()), ctx)


def learned_policy_file(text: str, task: str) -> Path | None:
    """The policy file a spec plays (``pretrained``'s for ``task``), or None for a policy that is not learned."""
    spec = parse_policy(text, flag="--policy")
    if spec.static:
        return None
    kind, arg = kind_of(spec.policy)
    if not kind.learned:
        return None
    return _policy_path(arg, task, kind.name in (TRANSFER, FAMILY))


def expand(text: str) -> list[str]:
    """``schedule:DIR/*.toml`` -> one spec per matching file, sorted (a grid of schedules); other specs as given."""
    import glob

    head, plus, rest = text.partition("+")
    kind, arg = kind_of(head.removeprefix("greedy:"))
    if not kind.takes_argument or not glob.has_magic(arg):
        return [text]
    files = sorted(glob.glob(arg))
    if not files:
        raise EsperError(f"--policies {text!r}: {arg!r} matches no file")
    prefix = head[: len(head) - len(arg)]
    return [f"{prefix}{f}{plus}{rest}" for f in files]


def describe_kinds() -> str:
    """Every registered kind, one per line (help texts and docs)."""
    return "\n".join(f"{k.name}{':ARG' if k.takes_argument else ''}: {k.summary}" for k in KINDS.values())
