"""Training Tamiyo with PPO: one full episode per env per rollout, one update per rollout.

Envs in a rollout train in groups that share one episode seed (task data,
host initialisation and batch order): under the same seed, two episodes
differ only by their decisions, because a seed changes nothing the host
computes until it blends. Each env learns from its reward minus the mean
reward of the other envs of its group at the same step (a leave-one-out
baseline over common random numbers). The other envs' actions do not depend
on this env's, so the baseline leaves the policy gradient unbiased, and it
cancels the accuracy noise of the shared host trajectory, which otherwise
swamps decision effects the size of the parameter rent.

The rollout buffer keeps the masks (already selected for the chosen op) and
the head relevance of every step, and the update replays them exactly: the
probability ratio is computed under the same legality the action was drawn
under, and a mask that changed in between fails loudly (``MaskError``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from esper_kernel.env import EnvBatch, EnvConfig, MorphoEnv, load_task, observation_names
from esper_kernel.registry import Registry
from esper_kernel.tamiyo.policies import Policy
from esper_kernel.tamiyo.ppo import PPOPolicy, save_policy
from esper_kernel.tamiyo.sampling import Sampled


@attrs.frozen
class PPOConfig:
    """PPO's hyperparameters. ``episodes`` counts episodes over all envs."""

    episodes: int = 32
    n_envs: int = 4
    lr: float = 3e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    update_epochs: int = 10
    minibatch_size: int = 8
    entropy_coef: float = 0.003
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    seed: int = 0
    #: Envs of a rollout that share one episode seed and learn relative to each other; 1 turns pairing off.
    group_size: int = 4
    #: Stop an update's passes once the approximate KL over the whole rollout exceeds this; None: never.
    target_kl: float | None = 0.05

    def __attrs_post_init__(self) -> None:
        for name in ("episodes", "n_envs", "update_epochs", "minibatch_size", "hidden", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be at least 1, got {getattr(self, name)}")


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
    ) -> None:
        self.obs[t] = obs
        self.actions[t] = sampled.actions
        self.masks[t] = sampled.masks
        self.relevance[t] = sampled.relevance
        self.log_probs[t] = sampled.log_prob
        self.values[t] = value
        self.rewards[t] = rewards
        self.dones[t] = dones

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


# -- rollouts ------------------------------------------------------------------


def collect_rollout(
    policy: PPOPolicy, envs: EnvBatch, seeds: Sequence[int], episodes: Sequence[int]
) -> tuple[RolloutBuffer, list[float]]:
    """Run one full episode in every env; return the buffer and each env's return."""
    obs = torch.stack([env.reset(s, ep) for env, s, ep in zip(envs.envs, seeds, episodes, strict=True)])
    steps = envs.config.epochs
    space = envs.registry.space
    buf = RolloutBuffer(steps, len(envs.envs), obs.shape[1], space.n_heads, space.max_choices)
    returns = [0.0] * len(envs.envs)
    for t in range(steps):
        sampled, value = policy.act_with_value(obs, envs.masks())
        results = envs.step(sampled.actions)
        rewards = torch.tensor([r.reward for r in results])
        dones = torch.tensor([r.done for r in results])
        buf.add(t, obs, sampled, value, rewards, dones)
        returns = [a + r.reward for a, r in zip(returns, results, strict=True)]
        obs = torch.stack([r.obs for r in results])
    if not bool(buf.dones[-1].all()):
        raise RuntimeError("an episode did not end after config.epochs steps")
    return buf, returns


@attrs.frozen
class TrainSummary:
    episodes: int
    updates: int
    episode_returns: tuple[float, ...]
    policy_path: str
    seconds: float
    last_update: UpdateStats | None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: Called after each rollout with (episodes done, episodes in total, mean return of the rollout).
ProgressFn = Callable[[int, int, float], None]


def _episode_seed(seed: int, episode: int) -> int:
    # Spread training seeds away from the small integers evaluations usually use.
    return 1_000_003 * (seed + 1) + episode


def train_ppo(
    env_config: EnvConfig,
    registry: Registry,
    ppo_config: PPOConfig,
    log: Any,
    out_path: Path | str,
    progress: ProgressFn | None = None,
) -> TrainSummary:
    """Train a :class:`PPOPolicy` for ``ppo_config.episodes`` episodes; save it at ``out_path`` after every update."""
    t0 = time.monotonic()
    cfg = ppo_config
    out_path = Path(out_path)
    names = observation_names(registry, env_config.slots)
    policy = PPOPolicy.for_registry(registry, names, cfg.hidden, hyperparameters=attrs.asdict(cfg), seed=cfg.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    shuffle = torch.Generator().manual_seed(cfg.seed + 2)
    task = load_task(env_config, cfg.seed)
    n_envs = min(cfg.n_envs, cfg.episodes)
    all_envs = [MorphoEnv(env_config, registry, task, log, i) for i in range(n_envs)]
    if all_envs[0].obs_dim != policy.obs_dim:
        raise RuntimeError(f"env observation size {all_envs[0].obs_dim} != schema size {policy.obs_dim}")
    updates = math.ceil(cfg.episodes / n_envs)
    returns: list[float] = []
    stats: UpdateStats | None = None
    scale = AdvantageScale()
    for u in range(updates):
        k = min(n_envs, cfg.episodes - len(returns))
        envs = EnvBatch(all_envs[:k])
        episodes = [len(returns) + i for i in range(k)]
        sizes = group_sizes(k, cfg.group_size)
        # Every env of a group runs the episode seed of the group's first episode.
        seeds = [_episode_seed(cfg.seed, episodes[sum(sizes[:g])]) for g, n in enumerate(sizes) for _ in range(n)]
        buf, ep_returns = collect_rollout(policy, envs, seeds, episodes)
        buf.rewards = relative_rewards(buf.rewards, sizes)
        batch = buf.batch(torch.zeros(k), cfg.gamma, cfg.gae_lambda)
        stats = ppo_update(policy, optimizer, batch, cfg, shuffle, adv_scale=scale.update(batch.advantages))
        # Normalisation statistics move only after the update, so the update
        # scores actions under exactly the normalisation they were drawn with.
        policy.norm.update(buf.obs)
        returns += ep_returns
        mean_ret = sum(ep_returns) / len(ep_returns)
        log.info(
            "ppo.update",
            update=u,
            episodes_done=len(returns),
            policy_loss=stats.policy_loss,
            value_loss=stats.value_loss,
            approx_kl=stats.approx_kl,
            clip_fraction=stats.clip_fraction,
            entropy=stats.entropy,
            head_entropy=stats.head_entropy,
            minibatches=stats.minibatches,
            mean_return=mean_ret,
            episode_returns=ep_returns,
        )
        save_policy(policy, out_path)
        if progress is not None:
            progress(len(returns), cfg.episodes, mean_ret)
    save_policy(policy, out_path)
    return TrainSummary(
        episodes=len(returns),
        updates=updates,
        episode_returns=tuple(returns),
        policy_path=str(out_path),
        seconds=time.monotonic() - t0,
        last_update=stats,
    )


def evaluate_policy(
    policy: Policy, env_config: EnvConfig, registry: Registry, seeds: Sequence[int], log: Any
) -> list[float]:
    """One episode per seed (task data and host both from that seed), all envs stepped together; the returns."""
    envs = EnvBatch([MorphoEnv(env_config, registry, load_task(env_config, s), log, i) for i, s in enumerate(seeds)])
    obs = envs.reset(seeds)
    returns = [0.0] * len(seeds)
    while not envs.envs[0].done:
        sampled = policy.act(obs, envs.masks(), envs)
        results = envs.step(sampled.actions)
        returns = [a + r.reward for a, r in zip(returns, results, strict=True)]
        obs = torch.stack([r.obs for r in results])
    return returns
