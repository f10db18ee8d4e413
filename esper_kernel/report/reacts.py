"""What drives a policy's choices: its decisions conditioned on the state it decided in, and a test that it reacts.

A policy that replays a recipe makes the same choice at the same epoch
whatever the episode's state; one that reacts chooses by the state (a
plateau, how the last seed in a slot ended). The tables here count each
decision under the state it was made in: the op by epoch third, by plateau
and by the slots' history; the blueprint germinated by the last fate in the
slot it goes into and by plateau.

Decisions of one episode are not independent (a seed germinated at epoch 1
is the reason for a cull at epoch 8), so a chi-square over decisions would
count one episode's plan many times. The test permutes **episodes**: every
episode's decisions are paired with another episode's states at the same
epochs (its own slot), and the statistic (Pearson's chi-square of the
state x choice table) is recomputed for each pairing. Under the null -- the
choices do not depend on the episode's own state, given the epoch, as for an
open-loop recipe -- every pairing is as likely as the true one, so the
p-value is the share of pairings whose statistic is at least the observed
one. Whole episodes move together, so their internal dependence is kept.
A state feature that is the same in every episode (the epoch) cannot be
tested this way and has no p-value; the task is compared only where the
episodes span several (a policy trained over several tasks). A policy that follows an episode-level plan of its own
(drawn once, then played) also "depends on its state", since the state
records its own earlier choices. And the masks react: a step a recipe
replays where it is illegal (a slot still occupied) is skipped, so even a
recipe's realized choices can depend on the state. The control for a
policy's table is therefore the same table of ``recipe:P``, its own
decisions replayed open-loop (``esper eval``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

#: Epochs without a new best validation accuracy from which the state counts as a plateau.
PLATEAU = 2
PERMUTATIONS = 2000
OPS = ("wait", "germinate", "cull", "fossilize")
#: Epoch thirds in time order (other labels alphabetically after them).
_ORDER = {"early": 0, "middle": 1, "late": 2}


@attrs.frozen
class Episode:
    """One episode's decision at every epoch and the state before it."""

    seed: int
    #: ``{"op": ..., "slot": ..., "blueprint": ...}`` per epoch (``{"op": "wait"}`` where it waited).
    decisions: tuple[Mapping[str, Any], ...]
    #: ``{"plateau": int, "fates": [per slot: "fossilized", "culled" or None]}`` per epoch.
    states: tuple[Mapping[str, Any], ...]
    task: str = ""


def episode(
    seed: int, decisions: Sequence[Mapping[str, Any]], states: Sequence[Mapping[str, Any]], task: str = ""
) -> Episode:
    """An :class:`Episode` from an eval journal's ``decisions`` (non-WAIT, with their epoch) and ``states``."""
    by_epoch = {int(d["epoch"]): d for d in decisions}
    return Episode(seed, tuple(by_epoch.get(t, {"op": "wait"}) for t in range(len(states))), tuple(states), task)


def journal_episodes(journal: Path) -> dict[str, list[Episode]]:
    """Per policy, the episodes of an ``esper eval`` journal that recorded their states (newer journals)."""
    out: dict[str, list[Episode]] = {}
    task = ""
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(row, dict):
            continue
        task = str((row.get("env") or {}).get("task", task))
        result = row.get("result") or {}
        if row.get("policy") and result.get("states") and row.get("width") is None:
            ep = episode(int(result["seed"]), result.get("decisions") or (), result["states"], task)
            out.setdefault(str(row["policy"]), []).append(ep)
    return {name: sorted(eps, key=lambda e: e.seed) for name, eps in out.items() if decides(eps)}


#: A seed's end, as ``seed.stage_changed`` records it, and the fate ``esper eval`` records for its slot.
_ENDS = {"FOSSILIZED": "fossilized", "CULLED": "culled"}


@attrs.define
class _Replay:
    """One episode read back from an events stream, as it stood before each decision."""

    decisions: list[dict[str, Any]] = attrs.Factory(list)
    states: list[dict[str, Any]] = attrs.Factory(list)
    fates: list[str | None] = attrs.Factory(list)
    best: float = 0.0
    plateau: int = 0
    task: str = ""


def events_episodes(events: Sequence[Mapping[str, Any]], slots: int, epochs: int) -> list[Episode]:
    """The episodes of an ``esper run`` or ``esper train`` events stream, each with its state before every decision.

    The state is what ``esper eval`` records (``commands/evaluate.py``): the
    plateau counter the env keeps (epochs since a new best validation
    accuracy, by more than 1e-4) and each slot's last ended seed. It is read
    from the stream: a ``decision`` line is written before its epoch trains,
    so every line before it is its past. An episode replayed after a resume
    (its epoch-0 decision seen again) starts over; one cut short is left out.
    """
    eps: dict[int, _Replay] = {}
    task = ""
    #: Training over several tasks: each env's task (``n_envs / len(tasks)`` consecutive envs each).
    env_tasks: list[str] = []
    for e in events:
        kind = e.get("event")
        if kind == "run.started":
            config = e.get("config") or {}
            task = str((config.get("env") or e.get("env_config") or {}).get("task") or task)
            tables, n_envs = config.get("tasks") or [], int((config.get("ppo") or {}).get("n_envs") or 0)
            per = n_envs // len(tables) if tables else 0
            env_tasks = [str(t.get("task")) for t in tables for _ in range(per)]
            continue
        n = e.get("episode")
        i = int(n) if isinstance(n, int) else 0
        if kind == "decision":
            t = int(e.get("epoch") or 0)
            if t == 0 or i not in eps:
                env = e.get("env")
                own = env_tasks[env] if isinstance(env, int) and 0 <= env < len(env_tasks) else task
                eps[i] = _Replay(fates=[None] * slots, task=own)
            r = eps[i]
            r.states.append({"plateau": r.plateau, "fates": list(r.fates)})
            choices, relevant = e.get("choices") or {}, e.get("relevant") or {}
            op = str(e.get("op", "wait")).lower()
            if op != "wait":
                chosen = {h: c for h, c in choices.items() if relevant.get(h) and h not in ("op", "slot")}
                slot = {"slot": int(str(choices["slot"]).removeprefix("s"))} if "slot" in choices else {}
                r.decisions.append({"epoch": t, "op": op, **slot, **chosen})
        elif i in eps and kind == "epoch.completed":
            r = eps[i]
            acc = float(e.get("val_accuracy") or 0.0)
            if acc > r.best + 1e-4:
                r.best, r.plateau = acc, 0
            else:
                r.plateau += 1
        elif i in eps and kind == "seed.stage_changed" and e.get("new") in _ENDS:
            slot_i = int(e.get("slot") or 0)
            if 0 <= slot_i < slots:
                eps[i].fates[slot_i] = _ENDS[str(e["new"])]
    return [episode(i, r.decisions, r.states, r.task) for i, r in sorted(eps.items()) if len(r.states) == epochs]


def decides(eps: Sequence[Episode]) -> bool:
    """Whether any of ``eps`` made a decision other than WAIT (one that never did has no table)."""
    return any(d["op"] != "wait" for e in eps for d in e.decisions)


# -- state features --------------------------------------------------------------------------

#: ``feature(state, epoch, epochs, decision) -> label``; the decision gives the slot a slot feature reads.
Feature = Callable[[Mapping[str, Any], int, int, Mapping[str, Any]], str]


def epoch_third(_state: Mapping[str, Any], t: int, epochs: int, _d: Mapping[str, Any]) -> str:
    return ("early", "middle", "late")[min(2, 3 * t // max(1, epochs))]


def plateau(state: Mapping[str, Any], _t: int, _e: int, _d: Mapping[str, Any]) -> str:
    return f"plateau ({PLATEAU}+ epochs, no new best)" if int(state["plateau"]) >= PLATEAU else "improving"


def slots_history(state: Mapping[str, Any], _t: int, _e: int, _d: Mapping[str, Any]) -> str:
    fates = state["fates"]
    if "culled" in fates:
        return "a slot's last seed was culled"
    return "fossilized only" if "fossilized" in fates else "no seed ended yet"


def slot_fate(state: Mapping[str, Any], _t: int, _e: int, d: Mapping[str, Any]) -> str:
    fate = state["fates"][int(d["slot"])]
    return f"slot's last seed {fate}" if fate else "slot never used"


def task_of(state: Mapping[str, Any], _t: int, _e: int, _d: Mapping[str, Any]) -> str:
    return str(state.get("task") or "")


@attrs.frozen
class TableSpec:
    title: str
    feature: Feature
    #: What is counted: ``choice(decision)``, or None to leave the decision out.
    choice: Callable[[Mapping[str, Any]], str | None]
    #: The feature is the same in every episode: permuting episodes cannot test it.
    testable: bool = True
    #: Shown only where the episodes span more than one task (training over several).
    across_tasks: bool = False


def _op(d: Mapping[str, Any]) -> str:
    return str(d["op"])


def _germinated(d: Mapping[str, Any]) -> str | None:
    return str(d.get("blueprint")) if d["op"] == "germinate" else None


TABLES = (
    TableSpec("op by epoch third", epoch_third, _op, testable=False),
    TableSpec("op by plateau", plateau, _op),
    TableSpec("op by the slots' history", slots_history, _op),
    TableSpec("blueprint germinated by the last fate in its slot", slot_fate, _germinated),
    TableSpec("blueprint germinated by plateau", plateau, _germinated),
    # A recipe plays the same ops on every task; a policy over several tasks that tells them apart does not.
    TableSpec("op by task", task_of, _op, across_tasks=True),
)


def tasks_of(episodes: Sequence[Episode]) -> tuple[str, ...]:
    """The tasks ``episodes`` were played on, in first-seen order."""
    return tuple(dict.fromkeys(e.task for e in episodes if e.task))


# -- the table and its test ------------------------------------------------------------------


@attrs.frozen
class ReactTable:
    title: str
    choices: tuple[str, ...]
    #: ``(state label, counts per choice)`` per row.
    rows: tuple[tuple[str, tuple[int, ...]], ...]
    episodes: int
    statistic: float | None
    #: Episodes-permutation p-value (None: not testable, or one row or one choice only).
    p_value: float | None
    note: str = ""


def chi2(table: np.ndarray) -> np.ndarray:
    """Pearson's chi-square of ``[..., rows, cols]`` contingency tables against their own margins."""
    total = table.sum((-2, -1), keepdims=True)
    expected = table.sum(-1, keepdims=True) * table.sum(-2, keepdims=True) / np.maximum(total, 1)
    cells = np.where(expected > 0, (table - expected) ** 2 / np.where(expected > 0, expected, 1), 0.0)
    out: np.ndarray = cells.sum((-2, -1))
    return out


def permutation_p(pairs: np.ndarray, perms: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """The chi-square of the true pairing and its episode-permutation p-value.

    ``pairs[e, f]`` is the ``[rows, cols]`` table of episode ``e``'s decisions counted under episode
    ``f``'s states; the true pairing is the diagonal.
    """
    n = pairs.shape[0]
    observed = float(chi2(pairs[np.arange(n), np.arange(n)].sum(0)))
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((perms, n)), axis=1)
    stats = chi2(pairs[np.arange(n)[None, :], order].sum(1))
    return observed, float((1 + np.sum(stats >= observed - 1e-9)) / (1 + perms))


def table(spec: TableSpec, episodes: Sequence[Episode], perms: int = PERMUTATIONS, seed: int = 0) -> ReactTable:
    """``spec``'s counts over ``episodes`` and, where it can be tested, its episode-permutation test."""
    epochs = min(len(e.states) for e in episodes)

    def counted(mine: Episode, theirs: Episode) -> list[tuple[str, str]]:
        out = []
        for t in range(epochs):
            d = mine.decisions[t]
            c = spec.choice(d)
            if c is not None:
                state = {**theirs.states[t], "task": theirs.task}
                out.append((spec.feature(state, t, epochs, d), c))
        return out

    every = [[counted(mine, theirs) for theirs in episodes] for mine in episodes]
    own = [c for e, rows in enumerate(every) for c in rows[e]]
    labels = sorted({f for rows in every for pair in rows for f, _ in pair}, key=lambda f: (_ORDER.get(f, 3), f))
    choices = sorted({c for _, c in own}, key=lambda c: (OPS.index(c) if c in OPS else len(OPS), c))
    seen = Counter(own)
    rows = tuple(
        (lab, tuple(seen[(lab, c)] for c in choices)) for lab in labels if any(seen[(lab, c)] for c in choices)
    )
    if not spec.testable or len(rows) < 2 or len(choices) < 2:
        note = "the same in every episode: not testable by permuting episodes" if not spec.testable else ""
        return ReactTable(spec.title, tuple(choices), rows, len(episodes), None, None, note)
    li, ci = {lab: i for i, lab in enumerate(labels)}, {c: i for i, c in enumerate(choices)}
    n = len(episodes)
    # pairs[e, f]: episode e's decisions counted under episode f's states; the truth is the diagonal.
    pairs = np.zeros((n, n, len(labels), len(choices)))
    for e in range(n):
        for f in range(n):
            for lab, c in every[e][f]:
                pairs[e, f, li[lab], ci[c]] += 1
    stat, p = permutation_p(pairs, perms, seed)
    return ReactTable(spec.title, tuple(choices), rows, len(episodes), stat, p)


def reaction_tables(episodes: Sequence[Episode], perms: int = PERMUTATIONS, seed: int = 0) -> list[ReactTable]:
    """Every table of :data:`TABLES` over ``episodes`` (those with a decision to count)."""
    several = len(tasks_of(episodes)) > 1
    out = [table(spec, episodes, perms, seed) for spec in TABLES if several or not spec.across_tasks]
    return [t for t in out if t.rows]


def markdown(name: str, tables: Sequence[ReactTable], task: str | Sequence[str] = "") -> str:
    """One policy's tables: per state, how often each choice was made (count and share of the row)."""
    eps = tables[0].episodes if tables else 0
    tasks = [task] if isinstance(task, str) and task else list(task) if not isinstance(task, str) else []
    on = ", ".join(f"`{t}`" for t in tasks)
    head = f"## {name}\n\n{eps} episodes" + (
        f" on {on} (one task: the task is not compared)" if len(tasks) == 1 else f" on {on}" if tasks else ""
    )
    parts = [head + ".\n"]
    for t in tables:
        test = (
            f"chi-square {t.statistic:.1f}, episodes-permutation p = {t.p_value:.4f}"
            if t.p_value is not None and t.statistic is not None
            else (t.note or "one row or one choice: nothing to test")
        )
        lines = [f"**{t.title}** ({test})", "", "| state | n | " + " | ".join(t.choices) + " |"]
        lines.append("|---|---|" + "---|" * len(t.choices))
        for lab, counts in t.rows:
            n = sum(counts)
            cells = [f"{c} ({c / n:.0%})" if n else "0" for c in counts]
            lines.append(f"| {lab} | {n} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


__all__ = [
    "TABLES",
    "Episode",
    "ReactTable",
    "chi2",
    "decides",
    "episode",
    "events_episodes",
    "journal_episodes",
    "markdown",
    "permutation_p",
    "reaction_tables",
    "table",
    "task_of",
    "tasks_of",
]
