"""What a policy learned to choose: its lever choices against uniform-over-legal, per blueprint and slot.

A policy that has learned nothing picks among the choices its masks leave
legal at random. So the null for every head is *uniform over the legal
choices of each decision*, not uniform over all choices: a mask that rules
a choice out is not a preference. Decisions where only one choice was legal
say nothing and are left out.

The statistic is Pearson's chi-square of the observed choice counts against
their expectation under that null; because the legal set differs from one
decision to the next, its p-value is a Monte Carlo one (every decision
redrawn uniformly from its own legal set, ``sims`` times) rather than a
chi-square table's.

Records come from two places: ``decision`` events of an ``esper train`` run
(which carry ``legal`` since the emergence report exists) and the
``germinate`` list of each episode in an ``esper eval`` journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from esper_kernel.compose.names import PLACEMENT_HEADS

#: A decision with fewer relevant decisions than this in a group is not tested (the p-value would mean little).
MIN_DECISIONS = 8
SIMS = 4000
#: Null draws are made this many at a time, to keep memory flat on long runs.
_CHUNK = 500
#: Heads that place a seed rather than tune it: grouped by, not tested within a group.


@attrs.frozen
class Pick:
    """One decision of one head: where it happened and what was legal."""

    phase: str
    blueprint: str
    slot: str
    head: str
    choice: str
    legal: tuple[str, ...]


@attrs.frozen
class ChoiceTest:
    head: str
    #: "all", "blueprint" or "slot": how the picks were grouped.
    by: str
    group: str
    phase: str
    #: Decisions with more than one legal choice.
    n: int
    counts: dict[str, int]
    #: Expected counts if each decision were uniform over its legal choices.
    expected: dict[str, float]
    statistic: float
    p_value: float

    def preferred(self) -> str:
        """The choice picked most above its expectation."""
        return max(self.counts, key=lambda c: self.counts[c] - self.expected.get(c, 0.0))


def picks_of(records: Iterable[Mapping[str, Any]], phase: str) -> list[Pick]:
    """``{"choices": {head: choice}, "legal": {head: [choices]}}`` records -> one :class:`Pick` per tuned head."""
    out: list[Pick] = []
    for rec in records:
        choices, legal = rec.get("choices") or {}, rec.get("legal") or {}
        where = (str(choices.get("blueprint", "?")), str(choices.get("slot", "?")))
        for head, could in legal.items():
            if head in PLACEMENT_HEADS or head not in choices:
                continue
            out.append(Pick(phase, *where, head, str(choices[head]), tuple(str(c) for c in could)))
    return out


def uniform_over_legal(picks: Sequence[Pick], sims: int = SIMS, seed: int = 0) -> ChoiceTest | None:
    """Chi-square of ``picks`` (one head) against uniform-over-legal, Monte Carlo p-value; None if too few."""
    live = [p for p in picks if len(p.legal) > 1 and p.choice in p.legal]
    if len(live) < MIN_DECISIONS:
        return None
    # The head's own order: every legal list is in it, and the longest one nearly always holds every choice.
    longest: tuple[str, ...] = max((p.legal for p in live), key=len)
    names = list(longest)
    names += [c for c in dict.fromkeys(c for p in live for c in p.legal) if c not in names]
    index = {c: i for i, c in enumerate(names)}
    k = np.array([len(p.legal) for p in live])
    table = np.full((len(live), int(k.max())), -1)
    for row, p in enumerate(live):
        table[row, : len(p.legal)] = [index[c] for c in p.legal]
    expected = np.zeros(len(names))
    np.add.at(expected, table[table >= 0], np.repeat(1.0 / k, k))
    observed = np.bincount([index[p.choice] for p in live], minlength=len(names))

    def chi2(counts: np.ndarray) -> np.ndarray:
        return np.asarray(((counts - expected) ** 2 / expected).sum(-1))

    stat = float(chi2(observed))
    rng = np.random.default_rng(seed)
    rows_ = np.arange(len(live))
    at_least = 0
    for start in range(0, sims, _CHUNK):
        m = min(_CHUNK, sims - start)
        drawn = table[rows_, (rng.random((m, len(live))) * k).astype(int)]
        flat = (drawn + (np.arange(m) * len(names))[:, None]).ravel()
        null = np.bincount(flat, minlength=m * len(names)).reshape(m, len(names))
        at_least += int((chi2(null) >= stat - 1e-9).sum())
    p_value = (1 + at_least) / (1 + sims)
    first = live[0]
    return ChoiceTest(
        head=first.head,
        by="all",
        group="-",
        phase=first.phase,
        n=len(live),
        counts={c: int(observed[i]) for c, i in index.items()},
        expected={c: round(float(expected[i]), 2) for c, i in index.items()},
        statistic=round(stat, 2),
        p_value=p_value,
    )


def choice_tests(picks: Sequence[Pick], sims: int = SIMS) -> list[ChoiceTest]:
    """Every head, per phase: over all decisions, then per blueprint and per slot (groups large enough only)."""
    out: list[ChoiceTest] = []
    keys = sorted({(p.phase, p.head) for p in picks}, key=lambda t: (t[1], _phase_order(t[0])))
    for phase, head in keys:
        mine = [p for p in picks if p.phase == phase and p.head == head]
        for by in ("all", "blueprint", "slot"):
            groups = sorted({"-" if by == "all" else getattr(p, by) for p in mine})
            for group in groups:
                part = [p for p in mine if by == "all" or getattr(p, by) == group]
                test = uniform_over_legal(part, sims)
                if test is not None:
                    out.append(attrs.evolve(test, by=by, group=group))
    return out


def _phase_order(phase: str) -> int:
    return {"early": 0, "late": 1}.get(phase, 2)


# -- where the records come from ---------------------------------------------------------------


def train_picks(events: Sequence[Mapping[str, Any]]) -> list[Pick]:
    """GERMINATE decisions of a training run, "early" (first third of its episodes) and "late" (last third)."""
    decided = [e for e in events if e.get("event") == "decision" and e.get("op") == "GERMINATE" and "legal" in e]
    episodes = sorted({int(e.get("episode") or 0) for e in decided})
    if not episodes:
        return []
    third = max(len(episodes) // 3, 1)
    early, late = set(episodes[:third]), set(episodes[-third:])
    out = picks_of((e for e in decided if int(e.get("episode") or 0) in early), "early")
    return out + picks_of((e for e in decided if int(e.get("episode") or 0) in late), "late")


def eval_picks(journal: Path, policy: str) -> list[Pick]:
    """GERMINATE decisions of ``policy`` in an ``esper eval`` journal (``episodes.jsonl``), phase "eval"."""
    import json

    out: list[Pick] = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill: the eval itself ignores it the same way
        if isinstance(row, dict) and row.get("policy") == policy:
            out += picks_of((row.get("result") or {}).get("germinate") or (), "eval")
    return out


def eval_policies(journal: Path) -> list[str]:
    """Policies in a journal whose episodes recorded GERMINATE decisions, in journal order."""
    import json

    names: list[str] = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and (row.get("result") or {}).get("germinate") and row.get("policy") not in names:
            names.append(str(row["policy"]))
    return names


# -- rendering ----------------------------------------------------------------------------------


def rows(tests: Sequence[ChoiceTest], alpha: float = 0.01) -> list[list[str]]:
    """Table rows: head, grouping, phase, n, counts (expected), chi-square, p, the preferred choice where p < alpha."""
    out = []
    for t in tests:
        counts = ", ".join(f"{c} {t.counts[c]} ({t.expected[c]:.1f})" for c in t.counts)
        where = "all" if t.by == "all" else f"{t.by} {t.group}"
        pref = t.preferred() if t.p_value < alpha else ""
        out.append([t.head, where, t.phase, str(t.n), counts, f"{t.statistic:.1f}", f"{t.p_value:.4f}", pref])
    return out


HEADER = ["head", "decisions", "phase", "n", "picked (expected if uniform over legal)", "chi2", "p", "prefers"]


def markdown(tests: Sequence[ChoiceTest], alpha: float = 0.01) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(tests, alpha)]
    return "\n".join(lines) + "\n"


__all__ = [
    "ChoiceTest",
    "Pick",
    "choice_tests",
    "eval_picks",
    "eval_policies",
    "markdown",
    "picks_of",
    "rows",
    "train_picks",
    "uniform_over_legal",
]
