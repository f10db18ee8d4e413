"""The ``heuristic`` policy: the growth rule a practitioner would write, picking blueprints by evidence.

Per env, each decision, in order:

1. **FOSSILIZE** a seed on probation whose recent counterfactual contribution
   is positive (where the masks allow it in that slot);
2. **CULL** a seed that hurts: contribution below zero for ``patience``
   measured epochs, or not above zero once on probation (it will never be
   fossilized, and its slot is worth more free);
3. **GERMINATE** in the first free slot while the episode leaves time for a
   seed to be fossilized and then pay off (the quickest seed's timeline plus
   ``payoff`` epochs), choosing the blueprint by evidence:

   * the blueprint whose seeds have helped most so far (mean measured
     contribution above zero), if any has;
   * otherwise the next blueprint not yet tried, the largest module first
     (a module that cannot help at its largest will not help smaller), so
     each blueprint is probed once, in parallel across the free slots;
   * never the blueprint just culled in that very slot;
   * once every blueprint was tried and none helped, nothing more is grown.

4. otherwise **WAIT**.

Lever heads take, at GERMINATE, the choice that brings a seed to fossilization
soonest (each timing head's quickest; every other head its default), so a
seed pays off within short episodes and has the most epochs to do so in long
ones. Everything it reads is in the env's :class:`~esper_kernel.episode.env.DecisionView`,
so it carries no state of its own: a resumed run decides as the uninterrupted one.

The previous rule (catalogue order, on a plateau, default levers) is kept as
``heuristic-v1`` (:class:`~esper_kernel.tamiyo.policies.HeuristicPolicy`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.episode.sampling import Sampled
from esper_kernel.tamiyo.policies import decide_rows

if TYPE_CHECKING:
    from esper_kernel.compose.actions import ActionSpace
    from esper_kernel.episode.env import DecisionView, EnvBatch, MorphoEnv

__all__ = ["EvidenceHeuristic", "probe_order"]


@functools.cache
def probe_order(topology: str, names: tuple[str, ...], dim: int = 16) -> tuple[str, ...]:
    """``names``, the blueprint with the most parameters at width ``dim`` first (ties: catalogue order)."""
    from esper_kernel.grow.blueprints import build_seed, param_count

    # Building a module draws its initial weights from the global RNG: fork it, or the first episode
    # of a process (the one that fills this cache) would train on other random numbers than the rest.
    with torch.random.fork_rng(devices=[]):
        size = {n: param_count(build_seed(topology, n, dim)) for n in names}
    return tuple(sorted(names, key=lambda n: (-size[n], names.index(n))))


def _mean(xs: tuple[float, ...], last: int) -> float | None:
    tail = xs[-last:]
    return sum(tail) / len(tail) if tail else None


class EvidenceHeuristic:
    """See the module docstring. ``patience``: measured epochs of harm before a cull; ``payoff``: epochs a
    fossilized seed should have left to help (None: an eighth of the episode, at least 2)."""

    def __init__(
        self,
        patience: int = 2,
        payoff: int | None = None,
        blend: str = "sigmoid",
        evidence: int = 2,
        max_live: int = 1,
        regrow_plateau: int = 2,
    ) -> None:
        self.patience = patience
        self.payoff = payoff
        self.blend = blend
        #: How many of a seed's last measured contributions are its evidence.
        self.evidence = evidence
        #: Seeds growing at once: one, so each seed's contribution is measured against a settled host.
        self.max_live = max_live
        #: Epochs without a new best accuracy before a blueprint that helped is grown again.
        self.regrow_plateau = regrow_plateau

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        space = envs.registry.space
        return decide_rows(space, [self._choose(env, masks[i]) for i, env in enumerate(envs.envs)], masks)

    def _choose(self, env: MorphoEnv, mask: torch.Tensor) -> dict[str, str]:
        space = env.registry.space
        view = env.decision_view()
        slot_i = space.names.index("slot")
        fossilizable = mask[Op.FOSSILIZE, slot_i]
        for slot, (stage, contribs) in enumerate(zip(view.stages, view.contributions, strict=True)):
            recent = _mean(contribs, 1)
            if stage is Stage.PROBATIONARY and recent is not None and recent > 0 and bool(fossilizable[slot]):
                return {"op": "fossilize", "slot": f"s{slot}"}
        cullable = mask[Op.CULL, slot_i]
        for slot, (stage, contribs) in enumerate(zip(view.stages, view.contributions, strict=True)):
            if not bool(cullable[slot]) or not bool(mask[0, space.op_index, Op.CULL]):
                continue
            harm = len(contribs) >= self.patience and all(c < 0 for c in contribs[-self.patience :])
            stuck = stage is Stage.PROBATIONARY and bool(contribs) and contribs[-1] <= 0
            if harm or stuck:
                return {"op": "cull", "slot": f"s{slot}"}
        if bool(mask[0, space.op_index, Op.GERMINATE]) and self._time_to_grow(view, space):
            row = self._germinate(env, view, mask[Op.GERMINATE])
            if row is not None:
                return row
        return {"op": "wait"}

    def _time_to_grow(self, view: DecisionView, space: ActionSpace) -> bool:
        payoff = self.payoff if self.payoff is not None else max(3, view.epochs // 5)
        ready = space.timeline(view.epochs, {}).at(Stage.FOSSILIZED)
        return bool(view.epochs - view.epoch >= ready + payoff)

    def _germinate(self, env: MorphoEnv, view: DecisionView, sel: torch.Tensor) -> dict[str, str] | None:
        space = env.registry.space
        slot_i, bp_i = space.names.index("slot"), space.names.index("blueprint")
        free = [i for i, s in enumerate(view.stages) if s is Stage.DORMANT and bool(sel[slot_i, i])]
        if not free or sum(bp is not None for bp in view.live_blueprints) >= self.max_live:
            return None
        slot = free[0]
        legal = [b for b in view.blueprints if bool(sel[bp_i, space.choice_index("blueprint", b)])]
        just_culled = next((bp for s, bp, kept, _ in reversed(view.past) if s == slot and not kept), None)
        choice = self._pick(env, view, [b for b in legal if b != just_culled])
        if choice is None:
            return None
        row = {"op": "germinate", "slot": f"s{slot}", "blueprint": choice}
        blends = space.head("blend").spec
        row["blend"] = self.blend if self.blend in blends.choices else blends.default
        for head in space.heads:
            if head.name not in CORE_HEADS and Op.GERMINATE in head.spec.ops:
                quick = space.soonest_choice(head.name, Stage.FOSSILIZED, view.epochs, {})
                row[head.name] = head.spec.choices[quick]
        return row

    def _pick(self, env: MorphoEnv, view: DecisionView, legal: list[str]) -> str | None:
        """The blueprint with the best positive evidence, else the largest untried one, else None."""
        scores: dict[str, list[float]] = {}
        for _, bp, _, contribs in view.past:
            m = _mean(contribs, self.evidence)
            if m is not None:
                scores.setdefault(bp, []).append(m)
        for live, contribs in zip(view.live_blueprints, view.contributions, strict=False):
            m = _mean(contribs, self.evidence)
            if live is not None and m is not None:
                scores.setdefault(live, []).append(m)
        helped = {bp: sum(v) / len(v) for bp, v in scores.items() if bp in legal and sum(v) > 0}
        if helped:
            # Grow more of what helped only once the network has stopped improving with it.
            return max(helped, key=lambda bp: helped[bp]) if view.plateau >= self.regrow_plateau else None
        tried = {bp for _, bp, _, _ in view.past} | {bp for bp in view.live_blueprints if bp is not None}
        untried = [bp for bp in probe_order(env.config.topology, view.blueprints) if bp in legal and bp not in tried]
        return untried[0] if untried else None
