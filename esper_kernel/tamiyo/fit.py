"""How a policy file fits the active levers: its own heads and observation inside a larger action space.

A policy trained with levers L runs with L plus levers it never saw. It reads
only the observation entries it was trained on (the new levers' observed
telemetry, and kernel features added after it was trained, are left out),
its own heads keep their logits, and every head new to it is held at the
lever's declared default (the nearest legal choice where a mask rules the
default out), so it is never drawn. A lever's default is
what the kernel does without the lever, so the policy decides as it learned
to. What it cannot do without is refused, naming it: a lever of L that is
missing (it has no output for another head), a head with no choice left that
it knows, an observation entry it read that is gone.

Choices are matched by name, so a policy runs where a head offers other
choices than it learned: on a task of another host topology, whose
blueprint catalogue shares only some blueprints with its own. A choice new
to it is never drawn (where nothing else is legal, it picks among the new
ones as among equals); a one-hot entry of a blueprint this catalogue lacks
reads 0, which is what it reads in every state such a run reaches, since
that blueprint can never be germinated here.

With ``families`` (the ``family:`` policy kind), a blueprint new to it is
drawn instead as its family (:data:`~esper_kernel.compose.names.FAMILIES`)
was: its logit is the log of the probability the policy gives that family's
blueprints this catalogue lacks, shared equally among the family's new
blueprints here. The policy's mass over what it knew is then kept, only
passed from blueprints that cannot be grown here to their kin that can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch

from esper_kernel.compose.actions import ActionSpace
from esper_kernel.compose.names import FAMILIES
from esper_kernel.episode.observation import blueprint_of_entry
from esper_kernel.tamiyo.policies import ForcedPolicy, Policy

#: A :attr:`Fit.take` or :attr:`Fit.choices` entry with no source: read as 0, or never drawn.
ABSENT = -1


@attrs.frozen
class Kin:
    """An active choice new to the policy, drawn with its family's mass among the policy's choices missing here."""

    #: The active head and choice it fills.
    head: int
    choice: int
    #: The policy's own head, and its choices whose logits the new one pools.
    own_head: int
    sources: tuple[int, ...]
    #: How many new choices of that family share the pool.
    share: int
    name: str = ""
    pooled: tuple[str, ...] = ()


def apply_kin(active: torch.Tensor, own: torch.Tensor, kin: Sequence[Kin]) -> torch.Tensor:
    """Active logits ``[..., H, C]`` with each kin choice set from the policy's own logits ``[..., h, c]``."""
    if not kin:
        return active
    out = active.clone()
    for k in kin:
        pool = own[..., k.own_head, list(k.sources)]
        out[..., k.head, k.choice] = torch.logsumexp(pool, -1) - math.log(k.share)
    return out


def _kin(heads: Sequence[tuple[str, tuple[str, ...]]], space: ActionSpace) -> tuple[Kin, ...]:
    """The blueprint head's new choices that a family member the policy knew, missing here, stands for."""
    out: list[Kin] = []
    for h, (name, choices) in enumerate(heads):
        if name != "blueprint" or name not in space.names:
            continue
        active = tuple(space.head(name).spec.choices)
        new = [c for c in active if c not in choices]
        for c in new:
            fam = FAMILIES.get(c)
            pool = [i for i, b in enumerate(choices) if b not in active and fam is not None and FAMILIES.get(b) == fam]
            share = sum(FAMILIES.get(o) == fam for o in new)
            if pool:
                pooled = tuple(choices[i] for i in pool)
                out.append(Kin(space.names.index(name), active.index(c), h, tuple(pool), share, c, pooled))
    return tuple(out)


@attrs.frozen
class Fit:
    """Where a policy's own heads and observation entries sit in the active ones."""

    #: Active head index of each of the policy's heads, in the policy's order.
    place: tuple[int, ...]
    #: Active observation index of each entry the policy was trained on, in its order (ABSENT: reads 0).
    take: tuple[int, ...]
    #: Heads new to the policy, each with the default choice it is held at.
    defaulted: tuple[tuple[str, str], ...]
    #: The active space's size; with ``place`` and ``take`` the identity, nothing needs moving.
    n_heads: int
    obs_dim: int
    #: Per policy head, the policy's choice index of each active choice (ABSENT: new to it, never drawn);
    #: empty: every head has the choices it was trained with.
    choices: tuple[tuple[int, ...], ...] = ()
    #: Active choices new to the policy that draw as their family's missing blueprints (``families``).
    kin: tuple[Kin, ...] = ()

    @property
    def identity(self) -> bool:
        return not self.choices and self.place == tuple(range(self.n_heads)) and self.take == tuple(range(self.obs_dim))


def _missing(
    heads: Sequence[tuple[str, tuple[str, ...]]], levers: Sequence[str], space: ActionSpace, active: Sequence[str]
) -> list[str]:
    """The policy's heads the active space lacks or changed, naming the lever that is gone."""
    out = []
    gone = [lv for lv in levers if lv not in active]
    lost = [name for name, _ in heads if name not in space.names]
    heads_lost = f"head(s) {', '.join(map(repr, lost))} missing" if lost else "its observation needs it"
    if gone:
        out.append(
            f"it was trained with lever(s) {', '.join(map(repr, gone))}, not active here ({heads_lost}): "
            "install or select it"
        )
    elif lost:
        out.append(f"{heads_lost} from the active action space")
    for name, choices in heads:
        if name in space.names and not set(space.head(name).spec.choices) & set(choices):
            out.append(f"head {name!r} had choices {list(choices)}, now {list(space.head(name).spec.choices)}")
    return out


def _choice_maps(heads: Sequence[tuple[str, tuple[str, ...]]], space: ActionSpace) -> tuple[tuple[int, ...], ...]:
    """Per policy head, where each active choice sits among the policy's (empty: all as trained)."""
    maps = []
    for name, choices in heads:
        active = tuple(space.head(name).spec.choices)
        maps.append(tuple(choices.index(c) if c in choices else ABSENT for c in active))
    if all(m == tuple(range(len(c))) for m, (_n, c) in zip(maps, heads, strict=True)):
        return ()
    return tuple(maps)


def _unseen_blueprint(name: str, known: Sequence[str], here: Sequence[str]) -> bool:
    """A one-hot entry of a blueprint the policy knew (``known``) that this catalogue (``here``) lacks, or
    the reverse: no seed of it can exist in a run of this policy here, so the entry is constant 0."""
    bp = blueprint_of_entry(name)
    return bp is not None and (bp in known) != (bp in here)


def _new_entry(name: str, new_levers: Sequence[str]) -> bool:
    """An observation entry of a lever the policy never saw (``s0.LEVER.field``)."""
    _slot, _, rest = name.partition(".")
    return rest.partition(".")[0] in new_levers


def _take(
    saved: Sequence[str],
    active: Sequence[str],
    gone_levers: Sequence[str],
    blueprints: tuple[Sequence[str], Sequence[str]] = ((), ()),
) -> tuple[list[int], list[str]]:
    index = {n: i for i, n in enumerate(active)}
    known, here = blueprints
    # A missing lever's own entries are said with the lever.
    gone = [
        n for n in saved if n not in index and not _new_entry(n, gone_levers) and not _unseen_blueprint(n, known, here)
    ]
    # An entry new to the policy (a lever's, a kernel feature added since) is not read: it decides as it learned.
    problems = []
    if gone:
        problems.append(f"observation entries {gone[:4]}{' ...' if len(gone) > 4 else ''} are not observed here")
    return [index.get(n, ABSENT) for n in saved if n in index or _unseen_blueprint(n, known, here)], problems


def fit(
    heads: Sequence[tuple[str, tuple[str, ...]]],
    levers: Sequence[str],
    obs_names: Sequence[str],
    space: ActionSpace,
    active_levers: Sequence[str],
    active_obs: Sequence[str],
    families: bool = False,
) -> tuple[Fit | None, list[str]]:
    """Fit a policy (its heads with their choices, levers, observation names) into the active ones.

    With ``families``, a new blueprint draws as its family's missing ones (:class:`Kin`).
    Returns the fit, or None and every problem in words.
    """
    problems = _missing(heads, levers, space, active_levers)
    gone_levers = [lv for lv in levers if lv not in active_levers]
    own_bp = dict(heads).get("blueprint", ())
    here_bp = space.head("blueprint").spec.choices if "blueprint" in space.names else ()
    take, obs_problems = _take(obs_names, active_obs, gone_levers, (own_bp, here_bp))
    problems += obs_problems
    if problems:
        return None, problems
    own = {name for name, _ in heads}
    defaulted = tuple((h.name, h.spec.default) for h in space.heads if h.name not in own)
    place = tuple(space.names.index(name) for name, _ in heads)
    kin = _kin(heads, space) if families else ()
    return Fit(place, tuple(take), defaulted, space.n_heads, len(active_obs), _choice_maps(heads, space), kin), []


def describe_defaults(defaulted: Sequence[tuple[str, str]]) -> str:
    """One line for the console: the heads a policy was not trained with, at the defaults they are held at."""
    held = ", ".join(f"{h}={c}" for h, c in defaulted)
    return f"heads of levers it was not trained with are held at their defaults: {held}"


def unseen(fit: Fit, heads: Sequence[tuple[str, tuple[str, ...]]], space: ActionSpace) -> dict[str, tuple[str, ...]]:
    """Per policy head with choices new to it, those choices (never drawn)."""
    out = {}
    drawn = {k.name for k in fit.kin}
    for (name, _choices), cmap in zip(heads, fit.choices, strict=False):
        active = space.head(name).spec.choices
        new = tuple(c for c, i in zip(active, cmap, strict=True) if i == ABSENT and c not in drawn)
        if new:
            out[name] = new
    return out


def describe_unseen(unseen: dict[str, tuple[str, ...]]) -> str:
    """One line for the console: the choices a policy never saw, which it never draws."""
    said = "; ".join(f"{h}={', '.join(c)}" for h, c in unseen.items())
    return f"choices it was not trained with are never drawn: {said}"


# -- what a person is told of a learned policy's fit (catalogue re-exports these) --


def defaulted_heads(policy: Policy) -> dict[str, str]:
    """The heads a learned policy was not trained with, held at their defaults (empty for any other policy)."""
    inner = policy.base if isinstance(policy, ForcedPolicy) else policy
    held = getattr(inner, "defaulted", None)
    return dict(held) if isinstance(held, dict) else {}


def unseen_choices(policy: Policy) -> dict[str, tuple[str, ...]]:
    """Per head, the choices a learned policy never saw and so never draws (a task of another topology's
    blueprints, with ``transfer:``); empty for any other policy."""
    inner = policy.base if isinstance(policy, ForcedPolicy) else policy
    unseen = getattr(inner, "unseen", None)
    return dict(unseen) if isinstance(unseen, dict) else {}


def kin_choices(policy: Policy) -> tuple[Kin, ...]:
    """The new blueprints a learned policy draws as their family (``family:``); empty for any other policy."""
    inner = policy.base if isinstance(policy, ForcedPolicy) else policy
    kin = getattr(inner, "kin", ())
    return tuple(kin) if isinstance(kin, tuple) else ()


def describe_kin(kin: Sequence[Kin]) -> str:
    """One line for the console: each new blueprint and the missing family members it is drawn as."""
    said = "; ".join(f"{k.name} as {FAMILIES[k.name]} ({', '.join(k.pooled)}{f', /{k.share}' if k.share > 1 else ''})"
                     for k in kin)  # fmt: skip
    return f"blueprints it was not trained with are drawn as their family's missing ones: {said}"


def describe_fit(policy: Policy) -> list[str]:
    """The lines a person is told once about how a learned policy fits this run (empty: as trained)."""
    held, unseen, kin = defaulted_heads(policy), unseen_choices(policy), kin_choices(policy)
    return (
        ([describe_defaults(list(held.items()))] if held else [])
        + ([describe_kin(kin)] if kin else [])
        + ([describe_unseen(unseen)] if unseen else [])
    )
