"""The episode loop: decide, step, tell the observers. ``esper run``, ``esper eval`` and PPO's evaluation share it.

One loop means one place where the order of things is fixed (masks, then the
decision, then the step, then whoever watches), so a command differs from
another only by what it observes. An :class:`Observer` (SB3's callback habit)
is told before each decision and after each step, and stops the episode by
returning False from :meth:`Observer.on_step` (``esper run --stop-after``).

PPO's training rollout (:func:`esper_kernel.tamiyo.train.collect_rollout`)
keeps a loop of its own: it answers each worker shard as soon as that shard
comes back, in whatever order, rather than stepping every env in lock-step,
so no shard waits for a slower one; a lock-step loop cannot express that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import torch

from esper_kernel.episode.sampling import Sampled

if TYPE_CHECKING:
    from esper_kernel.episode.env import EnvBatch

__all__ = ["Act", "BatchEnvs", "Envs", "Observer", "Policy", "Step", "Transition", "play", "play_batch"]


@attrs.frozen
class Transition:
    """What one step of every env gave back."""

    obs: torch.Tensor  # [B, obs_dim]
    rewards: tuple[float, ...]
    dones: tuple[bool, ...]


@attrs.frozen
class Step:
    """One decision and its outcome, as observers see it."""

    #: Decisions taken before this one in the episode (the epoch it was taken at).
    t: int
    obs: torch.Tensor
    masks: torch.Tensor
    sampled: Sampled
    transition: Transition
    #: Each env's return so far, this step's reward included.
    returns: tuple[float, ...]


class Observer:
    """Hears about an episode as it goes; override what you need."""

    def before_decision(self, t: int) -> None:
        """Right before the masks of decision ``t`` are composed (hook timing starts here)."""

    def on_step(self, step: Step) -> bool:
        """After every step; return False to stop the episode there."""
        return True


class Envs(Protocol):
    """Envs the loop can drive in lock-step: an :class:`EnvBatch` in this process or an :class:`EnvPool`."""

    @property
    def done(self) -> bool: ...

    def masks(self) -> torch.Tensor: ...

    def step(self, actions: torch.Tensor) -> Transition: ...


class BatchEnvs:
    """An :class:`~esper_kernel.episode.env.EnvBatch` stepped in this process."""

    def __init__(self, batch: EnvBatch) -> None:
        self.batch = batch

    @property
    def done(self) -> bool:
        return all(env.done for env in self.batch.envs)

    def masks(self) -> torch.Tensor:
        return self.batch.masks()

    def step(self, actions: torch.Tensor) -> Transition:
        results = self.batch.step(actions)
        return Transition(
            torch.stack([r.obs for r in results]), tuple(r.reward for r in results), tuple(r.done for r in results)
        )


class Policy(Protocol):
    """Anything that maps observations and masks to factored actions (Tamiyo's policies, :mod:`esper_kernel.tamiyo`)."""

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch) -> Sampled: ...


#: ``(observations, masks) -> decisions``.
Act = Callable[[torch.Tensor, torch.Tensor], Sampled]


def play(
    envs: Envs,
    act: Act,
    obs: torch.Tensor,
    observers: Sequence[Observer] = (),
    *,
    t: int = 0,
    returns: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Play ``envs`` from ``obs`` (decision ``t``) to the end, or until an observer stops it; each env's return.

    ``returns`` are the returns so far (a resumed episode's), which each reward is added to in turn.
    """
    total = tuple(returns) if returns is not None else (0.0,) * obs.shape[0]
    while not envs.done:
        for o in observers:
            o.before_decision(t)
        masks = envs.masks()
        with torch.no_grad():
            sampled = act(obs, masks)
        moved = envs.step(sampled.actions)
        total = tuple(a + r for a, r in zip(total, moved.rewards, strict=True))
        step = Step(t, obs, masks, sampled, moved, total)
        obs, t = moved.obs, t + 1
        # Every observer hears of every step, even where an earlier one stops the episode.
        if not all([o.on_step(step) for o in observers]):
            break
    return total


def play_batch(
    batch: EnvBatch,
    policy: Policy,
    obs: torch.Tensor,
    observers: Sequence[Observer] = (),
    *,
    t: int = 0,
    returns: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """:func:`play` for a policy deciding on an :class:`~esper_kernel.episode.env.EnvBatch` in this process."""
    return play(BatchEnvs(batch), lambda o, m: policy.act(o, m, batch), obs, observers, t=t, returns=returns)
