"""Seed lifecycle stages, the ops Tamiyo chooses, and the transition table.

The table is the single source of truth for what may follow what: every stage
change in the kernel goes through :func:`check_transition`.
"""

from __future__ import annotations

import enum


class Stage(enum.IntEnum):
    """Where a seed is in its life. Integer values are stable: they are observed."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    PROBATIONARY = 4
    FOSSILIZED = 5
    CULLED = 6
    EMBARGOED = 7


class Op(enum.IntEnum):
    """The lifecycle decision Tamiyo makes each epoch (the ``op`` head)."""

    WAIT = 0
    GERMINATE = 1
    CULL = 2
    FOSSILIZE = 3


ALL_OPS: frozenset[Op] = frozenset(Op)

#: Stages in which a slot holds a live seed (one that can be culled).
LIVE_STAGES: frozenset[Stage] = frozenset({Stage.GERMINATED, Stage.TRAINING, Stage.BLENDING, Stage.PROBATIONARY})

TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.DORMANT: frozenset({Stage.GERMINATED}),
    Stage.GERMINATED: frozenset({Stage.TRAINING, Stage.CULLED}),
    Stage.TRAINING: frozenset({Stage.BLENDING, Stage.CULLED}),
    Stage.BLENDING: frozenset({Stage.PROBATIONARY, Stage.CULLED}),
    Stage.PROBATIONARY: frozenset({Stage.FOSSILIZED, Stage.CULLED}),
    # A fossil is part of the host; its slot is free for a new seed.
    Stage.FOSSILIZED: frozenset({Stage.DORMANT}),
    Stage.CULLED: frozenset({Stage.EMBARGOED}),
    Stage.EMBARGOED: frozenset({Stage.DORMANT}),
}


class IllegalTransition(RuntimeError):
    """A stage change the transition table does not allow."""


def check_transition(old: Stage, new: Stage) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS[old])) or "nothing"
        raise IllegalTransition(f"illegal transition {old.name} -> {new.name}; {old.name} may go to {allowed}")
