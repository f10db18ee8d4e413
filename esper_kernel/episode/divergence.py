"""The divergence guard: a host pinned at chance while seeds change its output loses the seed to blame.

The step guard (``esper_kernel.grow.training``) stops one bad step; it cannot
see a host that trains on, finite, into predicting one class. This guard reads
validation accuracy each epoch: once it has sat at chance
(``1 / n_classes + CHANCE_MARGIN``) for ``DIVERGED_EPOCHS`` epochs after having
been clearly above it (``1 / n_classes + ABOVE_CHANCE``) while a seed was
live, that seed is culled with reason ``diverged`` (``docs/reliability.md``).
With no live seed to blame (a fossil, or a host wrecked before its seed was
culled) nothing can be undone, and the pinned host is reported instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Stage

#: Validation accuracy at most this far above chance is "at chance".
CHANCE_MARGIN = 0.02
#: The host must first have been at least this far above chance: a host that never learned did not diverge.
ABOVE_CHANCE = 0.10
#: Epochs at chance in a row before the guard acts.
DIVERGED_EPOCHS = 3
#: Fewer validation examples than this cannot tell chance from a bad epoch (at 100, ABOVE_CHANCE is about
#: three standard errors of a 10-class accuracy): the guard stays off.
MIN_VAL_EXAMPLES = 100
#: The cull reason (``seed.stage_changed``, the report's seed table, the console's fate).
REASON = "diverged"
#: Stages in which a seed's output reaches the host's (its counterfactual contribution is measured).
_BLENDED = (Stage.BLENDING, Stage.PROBATIONARY)


@attrs.frozen
class Divergence:
    """The seed the guard culls, and why (the ``seed.diverged`` event's fields)."""

    seed_id: str
    slot: int
    blueprint: str
    stage: str
    #: The seed's last measured counterfactual contribution (None: not blended yet).
    contribution: float | None
    val_accuracy: float
    chance: float
    best_accuracy: float
    epochs: int

    def describe(self) -> str:
        contribution = "" if self.contribution is None else f", contribution {self.contribution:+.3f}"
        return (
            f"seed {self.seed_id} ({self.blueprint}) in slot {self.slot} culled: validation accuracy "
            f"{self.val_accuracy:.3f} has been at chance ({self.chance:.3f}) for {self.epochs} epochs after "
            f"reaching {self.best_accuracy:.3f}, while it was {self.stage}{contribution}"
        )


def _pinned(acc_history: Sequence[float], n_classes: int, since: int, n_val: int) -> tuple[int, float, float] | None:
    """``(start, chance, best)`` if the last ``DIVERGED_EPOCHS`` epochs (all from ``since`` on) sat at chance
    after the host had been clearly above it, else None. Off for fewer than ``MIN_VAL_EXAMPLES`` examples."""
    if n_classes < 2 or n_val < MIN_VAL_EXAMPLES or len(acc_history) < DIVERGED_EPOCHS + 1:
        return None
    chance = 1.0 / n_classes
    start = len(acc_history) - DIVERGED_EPOCHS
    window, before = acc_history[start:], acc_history[:start]
    if start < since or any(a > chance + CHANCE_MARGIN for a in window):
        return None
    best = max(before)
    return (start, chance, best) if best >= chance + ABOVE_CHANCE else None


def find_divergence(
    acc_history: Sequence[float],
    n_classes: int,
    live: Sequence[SeedState],
    since: int = 0,
    n_val: int = MIN_VAL_EXAMPLES,
) -> Divergence | None:
    """The seed to cull if the last ``DIVERGED_EPOCHS`` epochs (all from ``since`` on) sat at chance, else None.

    Off for fewer than ``MIN_VAL_EXAMPLES`` validation examples (``n_val``).
    Suspects are the seeds live since before those epochs began. The one whose
    last contribution is most negative is culled; with none measured, the most
    recently germinated.
    """
    pinned = _pinned(acc_history, n_classes, since, n_val)
    if pinned is None:
        return None
    start, chance, best = pinned
    suspects = [s for s in live if s.germinated_epoch < start]
    if not suspects:
        return None
    seed = min(suspects, key=lambda s: (_blame(s), -s.germinated_epoch))
    return Divergence(
        seed_id=seed.seed_id,
        slot=seed.slot,
        blueprint=seed.blueprint,
        stage=seed.stage.name,
        contribution=_last_contribution(seed) if seed.stage in _BLENDED else None,
        val_accuracy=acc_history[-1],
        chance=chance,
        best_accuracy=best,
        epochs=DIVERGED_EPOCHS,
    )


@attrs.frozen
class PinnedHost:
    """The host sits at chance with no live seed to cull (the ``host.diverged`` event's fields).

    Nothing can be undone: a fossil is part of the host. It is reported, with
    the seeds fossilized since the host was last clearly above chance.
    """

    val_accuracy: float
    chance: float
    best_accuracy: float
    epochs: int
    #: ``"seed (blueprint) in slot N"`` for each seed fossilized since the host's best epoch.
    fossils: tuple[str, ...]

    def describe(self) -> str:
        since = f"; fossilized since it last learned: {', '.join(self.fossils)}" if self.fossils else ""
        return (
            f"the host's validation accuracy {self.val_accuracy:.3f} has been at chance ({self.chance:.3f}) "
            f"for {self.epochs} epochs after reaching {self.best_accuracy:.3f}, with no live seed to cull{since}"
        )


def find_pinned_host(
    acc_history: Sequence[float],
    n_classes: int,
    live: Sequence[SeedState],
    history: Sequence[SeedState],
    since: int = 0,
    n_val: int = MIN_VAL_EXAMPLES,
) -> PinnedHost | None:
    """A host at chance (as :func:`find_divergence` tells it) that no live seed can be blamed for, else None."""
    pinned = _pinned(acc_history, n_classes, since, n_val)
    if pinned is None or find_divergence(acc_history, n_classes, live, since, n_val) is not None:
        return None
    start, chance, best = pinned
    best_epoch = max(i for i, a in enumerate(acc_history[:start]) if a == best)
    fossils = tuple(
        f"{s.seed_id} ({s.blueprint}) in slot {s.slot}"
        for s in history
        if s.stage is Stage.FOSSILIZED and s.stage_entered_epoch >= best_epoch
    )
    return PinnedHost(acc_history[-1], chance, best, DIVERGED_EPOCHS, fossils)


def _last_contribution(seed: SeedState) -> float | None:
    measured = [c for c in seed.metrics.contribution if c is not None]
    return measured[-1] if measured else None


def _blame(seed: SeedState) -> float:
    """Lower is more to blame: a harmful (negative) contribution, most negative first; a seed not
    measured or helping (positive) sorts after them, so the most recently germinated of those is next."""
    c = _last_contribution(seed) if seed.stage in _BLENDED else None
    return c if c is not None and c <= 0 else float("inf")


def last_divergence(history: Sequence[SeedState]) -> int:
    """The first epoch the guard may look at again: after the last seed it culled (0: none)."""
    ends = [s.stage_entered_epoch + 1 for s in history if s.cull_reason == REASON]
    return max(ends, default=0)
