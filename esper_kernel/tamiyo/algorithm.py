"""PPO itself: the rollout buffer, advantages (GAE, group-relative rewards) and the clipped update.

CleanRL's ``ppo.py`` habit: the hyperparameters are :class:`~esper_kernel.settings.config.PPOConfig`,
declared once; this module is the algorithm and nothing else. Rollouts and the
training loop that calls it are :mod:`esper_kernel.tamiyo.train`; the network
and the policy file are :mod:`esper_kernel.tamiyo.ppo`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch import nn

from esper_kernel.episode.sampling import Sampled
from esper_kernel.settings.config import PPOConfig
from esper_kernel.tamiyo.ppo import PPOPolicy


class RolloutBuffer:
    """``T`` steps of ``B`` envs, preallocated; index ``[t, b]``."""

    def __init__(self, steps: int, n_envs: int, obs_dim: int, n_heads: int, max_choices: int) -> None:
        t, b = steps, n_envs
        self.steps = steps
        self.n_envs = n_envs
        self.obs = torch.zeros(t, b, obs_dim)
        self.actions = torch.zeros(t, b, n_heads, dtype=torch.long)
        self.masks = torch.zeros(t, b, n_heads, max_choices, dtype=torch.bool)
        self.relevance = torch.zeros(t, b, n_heads, dtype=torch.bool)
        self.log_probs = torch.zeros(t, b)
        self.values = torch.zeros(t, b)
        self.rewards = torch.zeros(t, b)
        self.dones = torch.zeros(t, b, dtype=torch.bool)

    def add(
        self,
        t: int,
        obs: torch.Tensor,
        sampled: Sampled,
        value: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        rows: slice = slice(None),
    ) -> None:
        self.obs[t, rows] = obs
        self.actions[t, rows] = sampled.actions
        self.masks[t, rows] = sampled.masks
        self.relevance[t, rows] = sampled.relevance
        self.log_probs[t, rows] = sampled.log_prob
        self.values[t, rows] = value
        self.rewards[t, rows] = rewards
        self.dones[t, rows] = dones

    def batch(self, last_value: torch.Tensor, gamma: float, gae_lambda: float) -> Batch:
        """Flatten to ``T * B`` rows with GAE advantages and returns."""
        adv, ret = compute_gae(self.rewards, self.values, self.dones, last_value, gamma, gae_lambda)
        n = self.steps * self.n_envs
        return Batch(
            obs=self.obs.reshape(n, -1),
            actions=self.actions.reshape(n, -1),
            masks=self.masks.reshape(n, *self.masks.shape[2:]),
            relevance=self.relevance.reshape(n, -1),
            log_probs=self.log_probs.reshape(n),
            values=self.values.reshape(n),
            advantages=adv.reshape(n),
            returns=ret.reshape(n),
        )


@attrs.frozen
class Batch:
    """Flat transitions for an update; ``masks`` are ``[N, H, C]`` as recorded."""

    obs: torch.Tensor
    actions: torch.Tensor
    masks: torch.Tensor
    relevance: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def rows(self, idx: torch.Tensor) -> Batch:
        return Batch(*(getattr(self, f.name)[idx] for f in attrs.fields(Batch)))


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over ``[T, B]``.

    ``dones[t]`` means the episode ended with step ``t``: nothing after it is
    bootstrapped. ``last_value`` ``[B]`` is the value of the state after the
    last step, used only where that step did not end the episode.
    """
    steps = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        live = (~dones[t]).to(rewards.dtype)
        next_value = last_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * gae_lambda * live * running
        adv[t] = running
    return adv, adv + values


def group_sizes(n_envs: int, group_size: int) -> list[int]:
    """Split ``n_envs`` consecutive envs into groups of ``group_size``; a short last group joins the one before.

    A group of one has nothing to pair with, so it is merged rather than left alone.
    """
    sizes = [group_size] * (n_envs // group_size)
    rest = n_envs - sum(sizes)
    if rest and sizes:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return sizes


def relative_rewards(rewards: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``[T, B]`` rewards minus, per env and step, the mean reward of the other envs of its group.

    ``sizes`` partitions the ``B`` envs into consecutive groups; a group of one keeps its rewards.
    """
    out = rewards.clone()
    start = 0
    for size in sizes:
        if size > 1:
            part = rewards[:, start : start + size]
            others = (part.sum(1, keepdim=True) - part) / (size - 1)
            out[:, start : start + size] = part - others
        start += size
    return out


class AdvantageScale:
    """Running RMS of the advantages of every rollout so far: the unit advantages are divided by.

    Dividing by a running scale instead of each minibatch's own spread keeps a
    rollout without signal (say, every env of a group doing the same thing,
    so relative rewards are zero) from being blown up into unit-size noise.
    """

    def __init__(self) -> None:
        self.sum_sq = 0.0
        self.count = 0

    def update(self, adv: torch.Tensor) -> float:
        """Merge ``adv`` and return the scale, never below a tiny floor."""
        self.sum_sq += float(adv.double().pow(2).sum())
        self.count += adv.numel()
        return max(math.sqrt(self.sum_sq / max(self.count, 1)), 1e-8)


@attrs.frozen
class UpdateStats:
    policy_loss: float
    value_loss: float
    approx_kl: float
    clip_fraction: float
    entropy: float
    #: Mean entropy of each head over the rows where it was relevant; None where it never was.
    head_entropy: dict[str, float | None]
    #: Minibatch steps taken (fewer than planned when ``target_kl`` stopped the update early).
    minibatches: int = 0


def head_entropy(policy: PPOPolicy, batch: Batch) -> dict[str, float | None]:
    with torch.no_grad():
        _, ent, _ = policy.evaluate(batch.obs, batch.actions, batch.masks, batch.relevance)
    rel = batch.relevance
    counts = rel.sum(0)
    sums = (ent * rel).sum(0)
    return {
        name: (float(sums[i] / counts[i]) if int(counts[i]) > 0 else None) for i, name in enumerate(policy.space.names)
    }


def _batch_kl(policy: PPOPolicy, batch: Batch) -> float:
    """Approximate KL from the rollout's policy to the current one, over the whole batch."""
    with torch.no_grad():
        log_prob, _, _ = policy.evaluate(batch.obs, batch.actions, batch.masks, batch.relevance)
        log_ratio = log_prob - batch.log_probs
        return float(((log_ratio.exp() - 1) - log_ratio).mean())


def ppo_update(
    policy: PPOPolicy,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: PPOConfig,
    generator: torch.Generator | None = None,
    adv_scale: float | None = None,
) -> UpdateStats:
    """Clipped-surrogate PPO on ``batch`` for ``config.update_epochs`` passes over shuffled minibatches.

    Advantages are centred per minibatch and divided by ``adv_scale`` when
    given (see :class:`AdvantageScale`), else by the minibatch's own spread.
    """
    heads = head_entropy(policy, batch)
    n = len(batch)
    mb = min(config.minibatch_size, n)
    totals = {"pg": 0.0, "v": 0.0, "kl": 0.0, "clip": 0.0, "ent": 0.0}
    steps = 0
    for _ in range(config.update_epochs):
        if config.target_kl is not None and steps > 0 and _batch_kl(policy, batch) > config.target_kl:
            break
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, mb):
            part = batch.rows(perm[start : start + mb])
            log_prob, entropy, value = policy.evaluate(part.obs, part.actions, part.masks, part.relevance)
            adv = part.advantages
            if adv.numel() > 1:
                adv = adv - adv.mean()
                adv = adv / (adv_scale if adv_scale is not None else adv.std() + 1e-8)
            elif adv_scale is not None:
                adv = adv / adv_scale
            log_ratio = log_prob - part.log_probs
            ratio = log_ratio.exp()
            pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv).mean()
            v_loss = 0.5 * (part.returns - value).pow(2).mean()
            ent = entropy.sum(-1).mean()
            loss = pg_loss + config.value_coef * v_loss - config.entropy_coef * ent
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                totals["pg"] += float(pg_loss)
                totals["v"] += float(v_loss)
                totals["kl"] += float(((ratio - 1) - log_ratio).mean())
                totals["clip"] += float(((ratio - 1).abs() > config.clip).float().mean())
                totals["ent"] += float(ent)
            steps += 1
    div = max(steps, 1)
    return UpdateStats(
        policy_loss=totals["pg"] / div,
        value_loss=totals["v"] / div,
        approx_kl=totals["kl"] / div,
        clip_fraction=totals["clip"] / div,
        entropy=totals["ent"] / div,
        head_entropy=heads,
        minibatches=steps,
    )
