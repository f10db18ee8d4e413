"""A training run's and an evaluation's files, read into plain data; and :func:`load`, which tells the three apart.

A run (``esper run``) is :mod:`esper_kernel.report.events`'s; this module adds
``esper train`` (returns, entropies, KL, what emerged) and ``esper eval``
(paired differences), with nothing imported but JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.compose.names import PLACEMENT_HEADS
from esper_kernel.infra.numerics import recorded
from esper_kernel.report.emergence import Pick, eval_picks, eval_policies, train_picks
from esper_kernel.report.events import (
    EVAL,
    EVAL_SCHEMA,
    EVENTS,
    JOURNAL,
    SUMMARY,
    TRAIN_SUMMARY,
    ReportError,
    RunData,
    StageChange,
    _last_started,
    _num,
    read_events,
    read_json,
    run_data,
    stage_changes,
)
from esper_kernel.report.reacts import Episode, decides, events_episodes, journal_episodes


@attrs.frozen
class UpdateRow:
    """One ``ppo.update`` event, with the env steps per second since the previous one."""

    update: int
    episodes_done: int
    policy_loss: float | None
    value_loss: float | None
    approx_kl: float | None
    clip_fraction: float | None
    entropy: float | None
    head_entropy: Mapping[str, float | None]
    mean_return: float | None
    episode_returns: tuple[float, ...]
    steps_per_second: float | None


@attrs.frozen
class TrainData:
    path: Path
    run_id: str
    env_config: Mapping[str, Any]
    ppo_config: Mapping[str, Any]
    levers: tuple[Mapping[str, Any], ...]
    failed_levers: tuple[Mapping[str, Any], ...]
    head_choices: Mapping[str, tuple[str, ...]]
    updates: tuple[UpdateRow, ...]
    germinations: tuple[StageChange, ...]
    summary: Mapping[str, Any] | None
    #: GERMINATE decisions with their legal choices, early and late in training (the emergence tests).
    picks: tuple[Pick, ...] = ()
    #: The last third of training's complete episodes, with the state before every decision (the reacts tables);
    #: empty where none of them decided anything.
    episodes: tuple[Episode, ...] = ()

    def max_entropy(self, head: str) -> float | None:
        """A head's entropy when it chooses uniformly: ``log(number of choices)``."""
        n = len(self.head_choices.get(head, ()))
        return math.log(n) if n > 0 else None

    def lever_heads(self) -> list[str]:
        """Heads whose choice is recorded on a germinated seed (blend and the levers'), in event order."""
        names: list[str] = []
        for g in self.germinations:
            for h in g.choices:
                if h not in names and h not in PLACEMENT_HEADS:
                    names.append(h)
        return names

    def split_episode(self) -> int:
        """Germinations in episodes below this are "early", the rest "late" (half the episodes each)."""
        episodes = sorted({g.episode for g in self.germinations if g.episode is not None})
        return episodes[len(episodes) // 2] if episodes else 0

    def choice_counts(self, head: str, by: str) -> dict[tuple[str, str], dict[str, int]]:
        """``{(group, "early"|"late"): {choice: count}}`` for ``head``, grouped by ``blueprint`` or ``slot``."""
        split = self.split_episode()
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for g in self.germinations:
            if head not in g.choices:
                continue
            group = (g.blueprint or "?") if by == "blueprint" else f"s{g.slot}"
            phase = "early" if (g.episode or 0) < split else "late"
            bucket = counts.setdefault((group, phase), {})
            bucket[g.choices[head]] = bucket.get(g.choices[head], 0) + 1
        return counts


def train_data(path: Path, events: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> TrainData:
    started = _last_started(events)
    env_config = dict(started.get("env_config") or (summary or {}).get("env_config") or {})
    steps_per_episode = int(env_config.get("epochs") or 0)
    last_ts: float | None = None
    rows: list[UpdateRow] = []
    for e in events:
        if e.get("event") == "run.started":
            # Time between a run's last update and its resumption is not stepping.
            last_ts = _num(e.get("ts"))
        if e.get("event") != "ppo.update":
            continue
        rets = tuple(v for v in (_num(x) for x in e.get("episode_returns") or ()) if v is not None)
        ts = _num(e.get("ts"))
        sps = _num(e.get("env_steps_per_s"))
        if sps is None and ts is not None and last_ts is not None and ts > last_ts and steps_per_episode:
            sps = len(rets) * steps_per_episode / (ts - last_ts)
        last_ts = ts
        rows.append(
            UpdateRow(
                update=int(e.get("update") or 0),
                episodes_done=int(e.get("episodes_done") or 0),
                policy_loss=_num(e.get("policy_loss")),
                value_loss=_num(e.get("value_loss")),
                approx_kl=_num(e.get("approx_kl")),
                clip_fraction=_num(e.get("clip_fraction")),
                entropy=_num(e.get("entropy")),
                head_entropy={k: _num(v) for k, v in (e.get("head_entropy") or {}).items()},
                mean_return=_num(e.get("mean_return")),
                episode_returns=rets,
                steps_per_second=sps,
            )
        )
    germinations = tuple(c for c in stage_changes(events) if c.new == "GERMINATED")
    heads = started.get("head_choices") or {}
    return TrainData(
        path=path,
        run_id=str(started.get("run_id") or path.name),
        env_config=env_config,
        ppo_config=dict(started.get("ppo_config") or (summary or {}).get("ppo_config") or {}),
        levers=tuple(started.get("levers") or ()),
        failed_levers=tuple(started.get("failed_levers") or ()),
        head_choices={str(k): tuple(str(c) for c in v) for k, v in heads.items() if isinstance(v, list)},
        updates=tuple(rows),
        germinations=germinations,
        summary=summary,
        picks=tuple(train_picks(events)),
        episodes=_late_third(events, env_config),
    )


def _late_third(events: Sequence[Mapping[str, Any]], env_config: Mapping[str, Any]) -> tuple[Episode, ...]:
    # The last third only: the policy changes as it trains, and episodes permuted across that drift would pair
    # one policy's choices with another's states, which reads as a reaction that no single policy has.
    slots, epochs = int(env_config.get("slots") or 0), int(env_config.get("epochs") or 0)
    if not slots or not epochs:
        return ()
    eps = events_episodes(events, slots, epochs)
    late = eps[len(eps) - len(eps) // 3 :]
    return tuple(late) if late and decides(late) else ()


# -- an evaluation ----------------------------------------------------------------


@attrs.frozen
class Interval:
    mean: float
    lo: float | None
    hi: float | None
    n: int


@attrs.frozen
class PolicyResult:
    name: str
    mean: Mapping[str, float | None]
    vs_reference: Mapping[str, Interval]
    n_seeds: int


@attrs.frozen
class EvalData:
    path: Path
    task: str
    epochs: int | None
    seeds: tuple[int, ...]
    reference: str
    policies: tuple[PolicyResult, ...]
    wall_seconds: float | None
    #: Per policy, its GERMINATE decisions from the journal beside eval.json (none without one).
    picks: Mapping[str, tuple[Pick, ...]] = attrs.field(factory=dict)
    #: Per policy that decides, its episodes with the state before every decision (journals that record it).
    episodes: Mapping[str, tuple[Episode, ...]] = attrs.field(factory=dict)
    #: Where its episodes were computed, and each other machine its journal episodes came from, with their count.
    numerics: Mapping[str, str] | None = None
    journal_numerics: tuple[tuple[Mapping[str, str], int], ...] = ()


def eval_data(path: Path, raw: Mapping[str, Any]) -> EvalData:
    where = path / EVAL
    if raw.get("schema") != EVAL_SCHEMA:
        raise ReportError(f"{where}: schema is {raw.get('schema')!r}, expected {EVAL_SCHEMA!r}")
    policies: list[PolicyResult] = []
    for i, p in enumerate(raw.get("policies") or ()):
        if not isinstance(p, dict) or "name" not in p:
            raise ReportError(f"{where}: policies[{i}] has no 'name'")
        intervals: dict[str, Interval] = {}
        for metric, v in (p.get("vs_reference") or {}).items():
            if not isinstance(v, dict) or _num(v.get("mean")) is None:
                continue
            ci = v.get("ci95") or [None, None]
            intervals[str(metric)] = Interval(float(v["mean"]), _num(ci[0]), _num(ci[1]), int(v.get("n") or 0))
        policies.append(
            PolicyResult(
                name=str(p["name"]),
                mean={str(k): _num(v) for k, v in (p.get("mean") or {}).items()},
                vs_reference=intervals,
                n_seeds=len(p.get("per_seed") or ()),
            )
        )
    epochs = raw.get("epochs")
    return EvalData(
        path=path,
        task=str(raw.get("task", "?")),
        epochs=int(epochs) if isinstance(epochs, int) else None,
        seeds=tuple(int(s) for s in raw.get("seeds") or ()),
        reference=str(raw.get("reference", "?")),
        policies=tuple(policies),
        wall_seconds=_num(raw.get("wall_seconds")),
        picks=_journal_picks(path / JOURNAL),
        episodes=_journal_episodes(path / JOURNAL),
        numerics=recorded(raw),
        journal_numerics=tuple(
            (machine, int(o.get("episodes") or 0))
            for o in raw.get("journal_numerics") or ()
            if isinstance(o, dict) and (machine := recorded(o)) is not None
        ),
    )


def _journal_episodes(journal: Path) -> dict[str, tuple[Episode, ...]]:
    return {k: tuple(v) for k, v in journal_episodes(journal).items()} if journal.is_file() else {}


def _journal_picks(journal: Path) -> dict[str, tuple[Pick, ...]]:
    if not journal.is_file():
        return {}
    return {name: tuple(eval_picks(journal, name)) for name in eval_policies(journal)}


# -- what a directory holds ---------------------------------------------------


def load(path: Path) -> RunData | TrainData | EvalData:
    """Read a run, a training run or an evaluation from ``path`` (detected from its files)."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    if (path / EVAL).is_file():
        return eval_data(path, read_json(path / EVAL))
    if not (path / EVENTS).is_file():
        raise ReportError(
            f"{path}: holds none of {EVENTS} (esper run / esper train) or {EVAL} (esper eval); "
            "pass the --out directory of a run"
        )
    events = read_events(path / EVENTS)
    is_train = (path / TRAIN_SUMMARY).is_file() or any(
        e.get("event") == "ppo.update" or (e.get("event") == "run.started" and e.get("command") == "train")
        for e in events
    )
    if is_train:
        summary = read_json(path / TRAIN_SUMMARY) if (path / TRAIN_SUMMARY).is_file() else None
        return train_data(path, events, summary)
    summary = read_json(path / SUMMARY) if (path / SUMMARY).is_file() else None
    if not any(e.get("event") == "epoch.completed" for e in events):
        raise ReportError(f"{path / EVENTS}: no epoch.completed event; the run stopped before its first epoch")
    return run_data(path, events, summary)
