"""Tamiyo's observation, declared once: each feature's name beside how it is computed.

The observation vector and its schema (``observation_names``, what a policy
file is stamped with and the report labels) come from the same declarations,
so they cannot drift apart: a feature added here is named and computed in one
edit. Episode features come first (their scaled twins after them), then each
slot's features, then each slot's observed lever telemetry
(``TelemetryField(observed=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from esper_kernel.compose.stages import Stage
from esper_kernel.settings.bounds import CONTRIBUTION_READS

if TYPE_CHECKING:
    from esper_kernel.compose.seeds import SeedState
    from esper_kernel.grow.lifecycle import Lifecycle
    from esper_kernel.grow.training import EpochResult
    from esper_kernel.settings.config import EnvConfig


class MorphoEnv(Protocol):
    """What the features read of an env (:class:`esper_kernel.episode.env.MorphoEnv` is one)."""

    config: EnvConfig
    epoch: int
    last: EpochResult | None
    acc_history: list[float]
    loss_history: list[float]
    plateau: int
    best: float
    base_params: int
    n_slots: int
    n_classes: int
    blueprints: tuple[str, ...]
    lifecycle: Lifecycle

    def param_count(self) -> int: ...


__all__ = [
    "ABSOLUTE",
    "BLUEPRINT_ENTRY",
    "EPISODE",
    "HISTORY",
    "SCALED",
    "SIGNS",
    "SLOT",
    "STREAK",
    "VALUE",
    "Feature",
    "blueprint_of_entry",
    "episode_values",
    "fresh_reads",
    "names",
    "scaled_names",
    "slot_values",
]

#: Validation accuracies of the last epochs the observation carries.
HISTORY = 3

#: Measurements a seed's helped/harmed streak counts up to.
STREAK = 3

#: A slot's one-hot entry of its seed's blueprint: ``s0.blueprint_dilated``.
BLUEPRINT_ENTRY = "blueprint_"


@attrs.frozen
class Feature:
    """One feature, or a group of them (a one-hot, a history): its names and its values, in the same order."""

    #: The names, given the topology's blueprints (a one-hot over them has one name each).
    names: Callable[[Sequence[str]], list[str]]
    #: Episode features: ``values(env)``; slot features: ``values(env, slot, seed)``.
    values: Callable[..., list[float]]


def _one(name: str, fn: Callable[..., float]) -> Feature:
    return Feature(lambda _bp: [name], lambda *a: [fn(*a)])


def _delta_acc(env: MorphoEnv) -> float:
    hist, last = env.acc_history, env.last
    prev = hist[-2] if len(hist) >= 2 else (hist[-1] if hist else 0.0)
    return (last.val_accuracy - prev) if last else 0.0


def _delta_loss(env: MorphoEnv) -> float:
    losses = env.loss_history
    return (losses[-1] - losses[-2]) if len(losses) >= 2 else 0.0


def _history(env: MorphoEnv) -> list[float]:
    hist = env.acc_history
    return [hist[-(i + 1)] if len(hist) > i else 0.0 for i in range(HISTORY)]


EPISODE: tuple[Feature, ...] = (
    _one("epoch_frac", lambda e: e.epoch / e.config.epochs),
    _one("train_loss", lambda e: e.last.train_loss if e.last else 0.0),
    _one("val_loss", lambda e: e.last.val_loss if e.last else 0.0),
    _one("train_accuracy", lambda e: e.last.train_accuracy if e.last else 0.0),
    _one("val_accuracy", lambda e: e.last.val_accuracy if e.last else 0.0),
    _one("delta_val_accuracy", _delta_acc),
    _one("delta_val_loss", _delta_loss),
    _one("plateau_frac", lambda e: e.plateau / e.config.epochs),
    _one("best_val_accuracy", lambda e: e.best),
    Feature(lambda _bp: [f"val_accuracy_t-{i + 1}" for i in range(HISTORY)], _history),
    _one("param_growth", lambda e: (e.param_count() - e.base_params) / e.base_params),
    _one("slot_utilisation", lambda e: sum(s is not None for s in e.lifecycle.seeds) / e.n_slots),
)


def _gain(env: MorphoEnv, acc: float) -> float:
    """Accuracy as the fraction of the way from chance to perfect."""
    chance = 1.0 / env.n_classes
    return (acc - chance) / (1.0 - chance)


def _per_chance_loss(env: MorphoEnv, loss: float) -> float:
    """A cross-entropy as a fraction of chance's (the uniform guess's ``ln K``)."""
    return loss / math.log(env.n_classes)


#: The features whose scale is a task's own (a loss in nats, an accuracy whose chance level is 1/K), and
#: :data:`SCALED`, the same read on a scale every task shares: a loss per chance loss, an accuracy per the
#: way from chance to perfect. A policy trained on several tasks reads SCALED only, so its observation does
#: not carry which task it is on through the scale of its numbers.
ABSOLUTE: tuple[str, ...] = (
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "delta_val_accuracy",
    "delta_val_loss",
    "best_val_accuracy",
    *(f"val_accuracy_t-{i + 1}" for i in range(HISTORY)),
)

SCALED: tuple[Feature, ...] = (
    _one("train_loss_scaled", lambda e: _per_chance_loss(e, e.last.train_loss) if e.last else 0.0),
    _one("val_loss_scaled", lambda e: _per_chance_loss(e, e.last.val_loss) if e.last else 0.0),
    _one("train_accuracy_scaled", lambda e: _gain(e, e.last.train_accuracy) if e.last else 0.0),
    _one("val_accuracy_scaled", lambda e: _gain(e, e.last.val_accuracy) if e.last else 0.0),
    _one("delta_val_accuracy_scaled", lambda e: _delta_acc(e) / (1.0 - 1.0 / e.n_classes)),
    _one("delta_val_loss_scaled", lambda e: _per_chance_loss(e, _delta_loss(e))),
    _one("best_val_accuracy_scaled", lambda e: _gain(e, e.best) if e.last else 0.0),
    Feature(
        lambda _bp: [f"val_accuracy_scaled_t-{i + 1}" for i in range(HISTORY)],
        lambda e: [_gain(e, a) if i < len(e.acc_history) else 0.0 for i, a in enumerate(_history(e))],
    ),
)


#: A seed's contribution as its size (``contribution``: a difference of accuracies, on the task's own scale)
#: or as its signs alone (:data:`SIGNS`: whether it helps, and how many measurements in a row), which mean the
#: same on every task. A policy reads one of the two (``ppo.contribution``).
VALUE: tuple[str, ...] = ("contribution",)
SIGNS: tuple[str, ...] = ("contribution_sign", "helped_streak", "harmed_streak")


def _stage(env: MorphoEnv, slot: int, _seed: SeedState | None) -> list[float]:
    onehot = [0.0] * len(Stage)
    onehot[int(env.lifecycle.stages[slot])] = 1.0
    return onehot


def _measured(seed: SeedState | None) -> list[float]:
    """The seed's measured counterfactual contributions, oldest first (epochs it was not measured left out)."""
    return [] if seed is None else [c for c in seed.metrics.contribution if c is not None]


def _contribution(_env: MorphoEnv, _slot: int, seed: SeedState | None) -> float:
    measured = _measured(seed)
    return measured[-1] if measured else 0.0


def _sign(env: MorphoEnv, slot: int, seed: SeedState | None) -> float:
    c = _contribution(env, slot, seed)
    return math.copysign(1.0, c) if c else 0.0


def _streak(helped: bool) -> Callable[[MorphoEnv, int, SeedState | None], float]:
    """How many of the seed's last measurements in a row helped (or hurt), up to :data:`STREAK`, over STREAK."""

    def value(_env: MorphoEnv, _slot: int, seed: SeedState | None) -> float:
        n = 0
        for c in reversed(_measured(seed)[-STREAK:]):
            if (c > 0) != helped or c == 0:
                break
            n += 1
        return n / STREAK

    return value


def _blueprint(env: MorphoEnv, _slot: int, seed: SeedState | None) -> list[float]:
    onehot = [0.0] * len(env.blueprints)
    if seed is not None:
        onehot[env.blueprints.index(seed.blueprint)] = 1.0
    return onehot


SLOT: tuple[Feature, ...] = (
    _one("active", lambda _e, _s, seed: float(seed is not None)),
    Feature(lambda _bp: [f"stage_{s.name.lower()}" for s in Stage], _stage),
    _one("alpha", lambda e, s, _seed: float(e.lifecycle.slots[s].alpha)),
    _one("contribution", _contribution),
    _one("contribution_sign", _sign),
    _one("helped_streak", _streak(helped=True)),
    _one("harmed_streak", _streak(helped=False)),
    _one(
        "epochs_in_stage_frac",
        lambda e, _s, seed: (seed.epochs_in_stage(e.epoch) / e.config.epochs) if seed is not None else 0.0,
    ),
    Feature(lambda bp: [f"{BLUEPRINT_ENTRY}{b}" for b in bp], _blueprint),
)


def blueprint_of_entry(name: str) -> str | None:
    """The blueprint a slot's one-hot entry (``s0.blueprint_dilated``) stands for; None for any other entry."""
    slot, dot, rest = name.partition(".")
    if not dot or not slot[1:].isdigit() or not rest.startswith(BLUEPRINT_ENTRY) or "." in rest:
        return None
    return rest.removeprefix(BLUEPRINT_ENTRY)


def scaled_names() -> tuple[str, ...]:
    """The names of :data:`SCALED`'s entries (a one-task policy leaves them out: it reads :data:`ABSOLUTE`)."""
    return tuple(n for f in SCALED for n in f.names(()))


def names(blueprints: Sequence[str], n_slots: int, observed: Sequence[str]) -> tuple[str, ...]:
    """Every observation entry's name, in order; ``observed`` are the observed telemetry keys."""
    out = [n for f in (*EPISODE, *SCALED) for n in f.names(blueprints)]
    per_slot = [n for f in SLOT for n in f.names(blueprints)]
    for s in range(n_slots):
        out += [f"s{s}.{n}" for n in per_slot]
        out += [f"s{s}.{key}" for key in observed]
    return tuple(out)


def fresh_reads(names: Sequence[str], *, several_tasks: bool, contribution: str) -> list[str]:
    """The entries of the observation ``names`` a fresh policy reads.

    Over several tasks the scaled twins only (a loss in nats or an accuracy over 1/K would say which task it
    is); on one task the entries one-task policies always read, so its runs are the ones before the twins.
    A seed's contribution as its size or as its signs (``contribution``: ``value`` or ``sign``), not both.
    """
    episode_out = set(ABSOLUTE if several_tasks else scaled_names())
    if contribution not in CONTRIBUTION_READS:
        raise ValueError(f"contribution must be one of {', '.join(CONTRIBUTION_READS)}, not {contribution!r}")
    slot_out = set(SIGNS if contribution == "value" else VALUE)
    return [n for n in names if n not in episode_out and n.partition(".")[2] not in slot_out]


def episode_values(env: MorphoEnv) -> list[float]:
    return [v for f in (*EPISODE, *SCALED) for v in f.values(env)]


def slot_values(env: MorphoEnv, slot: int, seed: SeedState | None) -> list[float]:
    return [v for f in SLOT for v in f.values(env, slot, seed)]
