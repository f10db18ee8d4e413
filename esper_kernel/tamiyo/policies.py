"""The non-learning policies: a heuristic gardener and a uniform random baseline.

Both answer through the same masked sampler as the learned policy, so every
action they take is legal under the composed masks by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import torch

from esper_kernel.compose.stages import Op, Stage
from esper_kernel.episode.loop import Policy as Policy  # the loop's contract; policies live here
from esper_kernel.episode.sampling import Sampled, sample, score, select_masks

if TYPE_CHECKING:
    from esper_kernel.compose.actions import ActionSpace
    from esper_kernel.episode.env import EnvBatch, MorphoEnv


@runtime_checkable
class CarriesRunState(Protocol):
    """A policy whose decisions depend on what it saw earlier in the episode (a generator, a counter).

    ``esper run`` stores :meth:`run_state` in every checkpoint and hands it
    back on ``--resume``, so a resumed run decides as the uninterrupted one.
    A policy without it carries nothing (a learned policy is its file).
    """

    def run_state(self) -> dict[str, Any]: ...

    def load_run_state(self, state: Mapping[str, Any]) -> None: ...


def run_state(policy: Policy) -> dict[str, Any]:
    """What ``policy`` carries into a checkpoint (empty for a policy that carries nothing)."""
    return policy.run_state() if isinstance(policy, CarriesRunState) else {}


def load_run_state(policy: Policy, state: Mapping[str, Any]) -> None:
    if isinstance(policy, CarriesRunState) and state:
        policy.load_run_state(state)


def fallbacks(policy: Policy) -> int:
    """How often ``policy`` could not do what it was told: forced heads' fallbacks, a schedule's skipped steps."""
    own = getattr(policy, "fallbacks", 0)
    base = policy.base if isinstance(policy, ForcedPolicy) else None
    return (own if isinstance(own, int) else 0) + (fallbacks(base) if base is not None else 0)


def decide_rows(space: ActionSpace, rows: Sequence[Mapping[str, str]], masks: torch.Tensor) -> Sampled:
    """Rule-based decisions (head -> choice per env) as a :class:`Sampled`, legal under ``masks``.

    A head a row does not name takes its default; where a lever masks the
    default, or the named choice, the first legal choice of that head instead.
    """
    actions = space.encode(rows)
    op = actions[:, space.op_index]
    sel = select_masks(space, masks, op)
    legal = sel.gather(-1, actions[..., None]).squeeze(-1)
    first = sel.to(torch.int8).argmax(-1)
    actions = torch.where(legal, actions, first)
    relevance = space.relevance(actions)
    actions = torch.where(relevance, actions, space.defaults)
    logits = torch.zeros(actions.shape[0], space.n_heads, space.max_choices)
    log_prob, entropy = score(space, logits, sel, actions, relevance)
    return Sampled(actions, sel, relevance, log_prob, entropy)


class RandomPolicy:
    """Uniform over legal choices, head by head: the baseline every policy must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def run_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        space = envs.registry.space
        logits = torch.zeros(obs.shape[0], space.n_heads, space.max_choices)
        return sample(space, logits, masks, self.generator)


class WaitPolicy:
    """Never grows: WAIT at every step. The control every growth result is paired against."""

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        space = envs.registry.space
        rows: list[dict[str, str]] = [{"op": "wait"} for _ in envs.envs]
        actions = space.encode(rows)
        relevance = space.relevance(actions)
        actions = torch.where(relevance, actions, space.defaults)
        sel = select_masks(space, masks, actions[:, space.op_index])
        logits = torch.zeros(actions.shape[0], space.n_heads, space.max_choices)
        log_prob, entropy = score(space, logits, sel, actions, relevance)
        return Sampled(actions, sel, relevance, log_prob, entropy)


class ForcedPolicy:
    """Another policy with some lever heads pinned to one choice (``esper eval --force``).

    Where the forced choice is illegal in a state, the nearest legal choice of
    that head (by position in its choice list, the lower on a tie) is taken
    instead and counted in :attr:`fallbacks`, so an eval can say how often
    "forced" was not quite forced.
    """

    def __init__(self, base: Policy, forced: dict[str, str]) -> None:
        self.base = base
        self.forced = forced
        self.fallbacks = 0

    def run_state(self) -> dict[str, Any]:
        return {"fallbacks": self.fallbacks, "base": run_state(self.base)}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.fallbacks = int(state["fallbacks"])
        load_run_state(self.base, state["base"])

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        out = self.base.act(obs, masks, envs)
        space = envs.registry.space
        actions = out.actions.clone()
        for head, choice in self.forced.items():
            h = space.names.index(head)
            want = space.choice_index(head, choice)
            for row in range(actions.shape[0]):
                if not bool(out.relevance[row, h]):
                    continue
                legal = out.masks[row, h].nonzero().flatten().tolist()
                pick = min(legal, key=lambda c: (abs(c - want), c))
                self.fallbacks += pick != want
                actions[row, h] = pick
        return attrs.evolve(out, actions=actions)


class HeuristicPolicy:
    """Germinate on a plateau, fossilize seeds that help, cull seeds that hurt.

    Rules, in order, per env:

    1. FOSSILIZE a probationary seed whose counterfactual contribution is
       positive (the mask already requires gate G5);
    2. CULL a blending or probationary seed whose contribution has been
       negative for ``patience`` measured epochs;
    3. GERMINATE in the first dormant slot when validation accuracy has not
       improved for ``plateau`` epochs, after ``warmup`` epochs, cycling
       through blueprints;
    4. otherwise WAIT.

    Lever heads take their default choice, or the first legal one (in the
    head's choice order, see :func:`decide_rows`) when a lever's mask forbids
    the default.
    """

    def __init__(
        self, plateau: int = 1, warmup: int = 2, patience: int = 2, blend: str = "sigmoid", min_left: int = 6
    ) -> None:
        self.plateau = plateau
        self.warmup = warmup
        self.patience = patience
        self.blend = blend
        self.min_left = min_left
        self._next_blueprint = 0

    def run_state(self) -> dict[str, Any]:
        return {"next_blueprint": self._next_blueprint}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self._next_blueprint = int(state["next_blueprint"])

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled:
        space = envs.registry.space
        return decide_rows(space, [self._choose(env, masks[i]) for i, env in enumerate(envs.envs)], masks)

    def _choose(self, env: MorphoEnv, mask: torch.Tensor) -> dict[str, str]:
        space = env.registry.space
        op_legal = mask[0, space.op_index]
        view = env.decision_view()
        if op_legal[Op.FOSSILIZE]:
            for slot, (stage, contribs) in enumerate(zip(view.stages, view.contributions, strict=True)):
                if stage is Stage.PROBATIONARY and contribs and contribs[-1] > 0:
                    return {"op": "fossilize", "slot": f"s{slot}"}
        if op_legal[Op.CULL]:
            for slot, contribs in enumerate(view.contributions):
                recent = contribs[-self.patience :]
                if len(recent) == self.patience and all(c < 0 for c in recent):
                    return {"op": "cull", "slot": f"s{slot}"}
        left = view.epochs - view.epoch
        if (
            op_legal[Op.GERMINATE]
            and view.epoch >= self.warmup
            and view.plateau >= self.plateau
            and left >= self.min_left
        ):
            slot = next(i for i, s in enumerate(view.stages) if s is Stage.DORMANT)
            names = view.blueprints
            blueprint = names[self._next_blueprint % len(names)]
            self._next_blueprint += 1
            blend = self.blend if self.blend in space.head("blend").spec.choices else "linear"
            return {"op": "germinate", "slot": f"s{slot}", "blueprint": blueprint, "blend": blend}
        return {"op": "wait"}
