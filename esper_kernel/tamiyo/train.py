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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, load_task, observation_names
from esper_kernel.episode.loop import play, play_batch
from esper_kernel.episode.sampling import Sampled
from esper_kernel.infra import checkpoint
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import PPOConfig as PPOConfig  # re-exported: its old home
from esper_kernel.settings.config import TrainConfig as TrainConfig
from esper_kernel.tamiyo.envpool import EnvPool, EnvShard, PoolEnvs
from esper_kernel.tamiyo.policies import Policy
from esper_kernel.tamiyo.ppo import PPOPolicy, load_policy, save_policy, trained_on


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


# -- rollouts ------------------------------------------------------------------


def collect_rollout(
    policy: PPOPolicy,
    envs: EnvPool | EnvBatch,
    seeds: Sequence[int],
    episodes: Sequence[int],
    steps: int | None = None,
) -> tuple[RolloutBuffer, list[float]]:
    """Run an episode in each of the first ``len(seeds)`` envs (only its first ``steps`` epochs where
    given); return the buffer and each env's return.

    Each shard steps on as soon as the policy has decided for its envs, never
    waiting for a slower shard. The policy decides on every row at once (rows
    of other shards hold what they last showed, and their draws are dropped),
    with each env's noise for its own step drawn in advance: every row's
    decision is the one a lock-step rollout makes, so where the envs run
    changes no number.
    """
    pool = envs if isinstance(envs, EnvPool) else EnvPool.of(EnvShard(envs.envs), None)
    steps = pool.epochs if steps is None else steps
    space = policy.space
    k = len(seeds)
    noise = policy.draw_noise(steps, k)
    buf: RolloutBuffer | None = None
    obs = masks = torch.empty(0)
    taken: dict[int, tuple[torch.Tensor, Sampled, torch.Tensor]] = {}
    returns = [0.0] * k
    for arrival in pool.start(seeds, episodes):
        rows, t, answer = arrival.rows, arrival.t, arrival.answer
        if buf is None:
            buf = RolloutBuffer(steps, k, answer.obs.shape[1], space.n_heads, space.max_choices)
            obs = answer.obs.new_zeros(k, answer.obs.shape[1])
        if t > 0:
            seen, sampled, value = taken.pop(arrival.shard)
            buf.add(t - 1, seen, sampled, value, torch.tensor(answer.rewards), torch.tensor(answer.dones), rows)
            returns[rows] = [a + r for a, r in zip(returns[rows], answer.rewards, strict=True)]
        if t == steps:
            continue
        if answer.masks is None:
            raise RuntimeError(f"every episode ended after {t} of {steps} steps")
        if masks.numel() == 0:
            masks = answer.masks.new_zeros((k, *answer.masks.shape[1:]))
        obs[rows], masks[rows] = answer.obs, answer.masks
        sampled, value = policy.act_with_value(obs, masks, None if noise is None else noise[t])
        taken[arrival.shard] = (answer.obs, sampled.rows(rows), value[rows])
        pool.send_step(arrival, sampled.actions[rows])
    if buf is None or (steps == pool.epochs and not bool(buf.dones[-1].all())):
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
    #: Best mean held-out return seen by the periodic evaluation (None: it never ran) and its update.
    best_eval_return: float | None = None
    best_eval_update: int | None = None
    #: Update index the run resumed after (None: started fresh).
    resumed_from_update: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: Called after each rollout with (episodes done, episodes in total, mean return of the rollout).
ProgressFn = Callable[[int, int, float], None]

STATE_FORMAT = "esper.train-state/1"
STATE_FILE = "train_state.pt"
BEST_POLICY = "best_policy.pt"


class TrainStateError(EsperError):
    """A training state file that is missing, unreadable or does not fit this training run."""


def lever_defaults(registry: Registry) -> dict[str, str]:
    """Every lever head (not op, slot, blueprint or blend) with its default choice."""
    return {h.name: h.spec.default for h in registry.space.heads if h.name not in CORE_HEADS}


def _episode_seed(seed: int, episode: int) -> int:
    # Spread training seeds away from the small integers evaluations usually use.
    return 1_000_003 * (seed + 1) + episode


@attrs.frozen
class TrainOptions:
    """How (not what) to train: where envs run, how often to evaluate, where to resume from."""

    #: Env worker processes; 1 steps every env in this process.
    workers: int = 1
    #: Levers the workers load (they rebuild the registry); None: exactly the main registry's levers.
    selection: Selection | None = None
    #: Evaluate the greedy policy on ``eval_seeds`` after every ``eval_every`` updates and the last; 0: never.
    eval_every: int = 0
    #: Held-out episode seeds (training seeds are spread far from small integers, so these are never trained on).
    eval_seeds: tuple[int, ...] = (0, 1)
    #: A state saved by an interrupted run with the same configs, to continue to the same result.
    resume: Path | None = None
    #: Ray cluster address for env workers as Ray actors ("": RAY_ADDRESS or a local instance); None: no Ray.
    ray: str | None = None
    #: Plain data stored in the training state as is (the CLI keeps its config and run id there).
    meta: dict[str, Any] = attrs.field(factory=dict)
    #: Bytes of the event stream written so far, stored with each state so a resume can cut the
    #: events a killed rollout wrote after it (see :func:`esper_kernel.commands.run.truncate_events`).
    events_position: Callable[[], int | None] | None = None


def _save_state(path: Path, data: dict[str, Any]) -> None:
    checkpoint.save_atomic({"format": STATE_FORMAT, **data}, path)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read ``train_state.pt`` written by :func:`train_ppo` (tensors and plain data only)."""
    missing = f"no training state at {path}: nothing to resume (was it written by esper train?)"
    return checkpoint.read_state(path, STATE_FORMAT, TrainStateError, missing=missing, what="train state")


def extension_problem(saved: Mapping[str, Any], done: int, episodes: int) -> str | None:
    """Why a run saved with PPO settings ``saved``, ``done`` episodes in, cannot go on to ``episodes`` (None: it can).

    Going on to the saved count is a plain resume. Going on to another count is
    the longer run itself only if every rollout so far was one a longer run has too.
    """
    n_envs, planned = int(saved["n_envs"]), int(saved["episodes"])
    if episodes == planned:
        return None
    if episodes <= done:
        return f"cannot train to {episodes} episodes: the run has already done {done}; ask for more"
    if planned < n_envs:
        return (
            f"cannot train further: the run planned {planned} episodes, fewer than its {n_envs} envs, "
            "so it ran fewer envs than a longer run would"
        )
    if done % n_envs:
        return (
            f"cannot train further: the run's last rollout was a short one ({done} episodes is not "
            f"a multiple of its {n_envs} envs), which a longer run would not have had"
        )
    return None


def _make_pool(
    env_config: EnvConfig, registry: Registry, task_seed: int, n_envs: int, log: Any, opts: TrainOptions
) -> EnvPool:
    selection = opts.selection or Selection(only=registry.names)
    if opts.ray is not None:
        from esper_kernel.tamiyo.raypool import ray_pool

        return ray_pool(env_config, registry, selection, task_seed, n_envs, opts.workers, log, opts.ray)
    if opts.workers > 1 and n_envs > 1:
        return EnvPool.processes(env_config, registry, selection, task_seed, n_envs, opts.workers, log)
    return EnvPool.local(env_config, registry, task_seed, n_envs, log)


def evaluate_on_pool(policy: PPOPolicy, pool: EnvPool, seeds: Sequence[int]) -> list[float]:
    """Greedy episodes on ``seeds`` (at most the pool's size at a time); the returns.

    The policy's sampling generator is left as it was, so evaluating never
    changes the actions training draws next.
    """
    greedy, gen_state = policy.greedy, policy.generator.get_state()
    policy.greedy = True
    out: list[float] = []
    try:
        for start in range(0, len(seeds), pool.n_envs):
            chunk = list(seeds[start : start + pool.n_envs])
            first = pool.reset(chunk, [-1] * len(chunk))
            act = lambda o, m: policy.act_with_value(o, m)[0]  # noqa: E731
            out += play(PoolEnvs(pool, first), act, first.obs)
    finally:
        policy.greedy = greedy
        policy.generator.set_state(gen_state)
    return out


def _start_from(policy: PPOPolicy, path: Path, registry: Registry, env_config: EnvConfig) -> None:
    """Load ``path``'s weights and observation statistics into the fresh ``policy``, or say what does not fit."""
    names = observation_names(registry, env_config.slots)
    try:
        start = load_policy(path, registry, len(names), names, trained_on=trained_on(env_config))
    except EsperError as exc:
        raise TrainStateError(f"ppo.init_policy: {exc}") from None
    if dict(start.pinned) != dict(policy.pinned):
        raise TrainStateError(
            f"ppo.init_policy: {str(path)!r} holds heads {dict(start.pinned) or 'none'} fixed, "
            f"this run {dict(policy.pinned) or 'none'} (fix_levers must match)"
        )
    if start.hidden != policy.hidden:
        raise TrainStateError(f"ppo.init_policy: {str(path)!r} has hidden {start.hidden}, this run {policy.hidden}")
    policy.load_state_dict(start.state_dict())


@attrs.define
class _Trainer:
    """What a training run carries from one update to the next, and saves for ``--resume``."""

    env_config: EnvConfig
    cfg: PPOConfig
    registry: Registry
    policy: PPOPolicy
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    scale: AdvantageScale = attrs.Factory(AdvantageScale)
    returns: list[float] = attrs.Factory(list)
    first: int = 0
    best: tuple[float, int] | None = None
    prior_seconds: float = 0.0
    started: float = attrs.Factory(time.monotonic)

    @classmethod
    def start(cls, env_config: EnvConfig, registry: Registry, cfg: PPOConfig) -> _Trainer:
        policy = PPOPolicy.for_registry(
            registry,
            observation_names(registry, env_config.slots),
            cfg.hidden,
            hyperparameters=attrs.asdict(cfg),
            seed=cfg.seed,
            pinned=lever_defaults(registry) if cfg.fix_levers else None,
            trained_on=trained_on(env_config),
        )
        if cfg.init_policy is not None:
            _start_from(policy, Path(cfg.init_policy), registry, env_config)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        return cls(env_config, cfg, registry, policy, optimizer, torch.Generator().manual_seed(cfg.seed + 2))

    def seconds(self) -> float:
        return self.prior_seconds + time.monotonic() - self.started

    def restore(self, path: Path, log: Any) -> None:
        state = load_train_state(path)
        saved = dict(state["ppo_config"])
        same_but_length = {**saved, "episodes": self.cfg.episodes} == attrs.asdict(self.cfg)
        if state["env_config"] != attrs.asdict(self.env_config) or not same_but_length:
            raise TrainStateError(f"{path} was written by a run with other settings; resume it with its own")
        problem = extension_problem(saved, len(state["returns"]), self.cfg.episodes)
        if problem is not None:
            raise TrainStateError(f"{path}: {problem}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["shuffle"])
        self.policy.generator.set_state(state["sampler"])
        torch.set_rng_state(state["rng"])
        self.scale.sum_sq, self.scale.count = float(state["adv_sum_sq"]), int(state["adv_count"])
        self.returns = [float(r) for r in state["returns"]]
        self.first = int(state["updates_done"])
        self.best = None if state["best"] is None else (float(state["best"][0]), int(state["best"][1]))
        self.prior_seconds = float(state["seconds"])
        log.info("train.resumed", updates_done=self.first, episodes_done=len(self.returns))

    def save(self, path: Path, updates_done: int, meta: dict[str, Any], events_bytes: int | None = None) -> None:
        _save_state(
            path,
            {
                "events_bytes": events_bytes,
                "env_config": attrs.asdict(self.env_config),
                "ppo_config": attrs.asdict(self.cfg),
                "levers": list(self.registry.names),
                "policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "shuffle": self.shuffle.get_state(),
                "sampler": self.policy.generator.get_state(),
                "rng": torch.get_rng_state(),
                "adv_sum_sq": self.scale.sum_sq,
                "adv_count": self.scale.count,
                "returns": list(self.returns),
                "updates_done": updates_done,
                "best": None if self.best is None else [self.best[0], self.best[1]],
                "seconds": self.seconds(),
                "meta": meta,
            },
        )

    def update(self, pool: EnvPool, u: int, n_envs: int, log: Any) -> tuple[UpdateStats, list[float]]:
        """One rollout (a group of envs per episode seed) and one PPO update on it, logged as ``ppo.update``."""
        cfg = self.cfg
        k = min(n_envs, cfg.episodes - len(self.returns))
        episodes = [len(self.returns) + i for i in range(k)]
        sizes = group_sizes(k, cfg.group_size)
        # Every env of a group runs the episode seed of the group's first episode.
        seeds = [_episode_seed(cfg.seed, episodes[sum(sizes[:g])]) for g, n in enumerate(sizes) for _ in range(n)]
        t_roll = time.monotonic()
        buf, ep_returns = collect_rollout(self.policy, pool, seeds, episodes)
        rollout_s = time.monotonic() - t_roll
        t_upd = time.monotonic()
        buf.rewards = relative_rewards(buf.rewards, sizes)
        batch = buf.batch(torch.zeros(k), cfg.gamma, cfg.gae_lambda)
        adv_scale = self.scale.update(batch.advantages)
        stats = ppo_update(self.policy, self.optimizer, batch, cfg, self.shuffle, adv_scale=adv_scale)
        # Normalisation statistics move only after the update, so the update
        # scores actions under exactly the normalisation they were drawn with.
        self.policy.norm.update(buf.obs)
        self.returns += ep_returns
        steps = k * self.env_config.epochs
        log.info(
            "ppo.update",
            update=u,
            episodes_done=len(self.returns),
            **{f.name: getattr(stats, f.name) for f in attrs.fields(UpdateStats)},
            mean_return=sum(ep_returns) / len(ep_returns),
            episode_returns=ep_returns,
            env_steps=steps,
            env_steps_per_s=steps / max(rollout_s, 1e-9),
            rollout_seconds=rollout_s,
            update_seconds=time.monotonic() - t_upd,
            wall_seconds=self.seconds(),
        )
        return stats, ep_returns

    def evaluate(self, pool: EnvPool, u: int, seeds: Sequence[int], best_path: Path, log: Any) -> None:
        """Greedy held-out episodes; ``best_path`` keeps the policy with the best mean return so far."""
        held_out = evaluate_on_pool(self.policy, pool, seeds)
        mean_eval = sum(held_out) / len(held_out)
        improved = self.best is None or mean_eval > self.best[0]
        if improved:
            self.best = (mean_eval, u)
            save_policy(self.policy, best_path)
        log.info("ppo.eval", update=u, seeds=list(seeds), returns=held_out, mean_return=mean_eval, best=improved)


def train_ppo(
    env_config: EnvConfig,
    registry: Registry,
    ppo_config: PPOConfig,
    log: Any,
    out_path: Path | str,
    progress: ProgressFn | None = None,
    options: TrainOptions | None = None,
) -> TrainSummary:
    """Train a :class:`PPOPolicy` for ``ppo_config.episodes`` episodes; save it at ``out_path`` after every update.

    Beside ``out_path``, ``train_state.pt`` (policy, optimizer, normaliser,
    every random state and the episode counter) is written atomically after
    every update, so a run killed at any point continues with
    ``options.resume`` to the weights an uninterrupted run ends with; and
    ``best_policy.pt`` keeps the policy with the best held-out return.
    """
    opts = options or TrainOptions()
    cfg = ppo_config
    out_path = Path(out_path)
    tr = _Trainer.start(env_config, registry, cfg)
    if opts.resume is not None:
        tr.restore(opts.resume, log)
    n_envs = min(cfg.n_envs, cfg.episodes)
    updates = math.ceil(cfg.episodes / n_envs)
    stats: UpdateStats | None = None
    with _make_pool(env_config, registry, cfg.seed, n_envs, log, opts) as pool:
        for u in range(tr.first, updates):
            stats, ep_returns = tr.update(pool, u, n_envs, log)
            if opts.eval_every > 0 and opts.eval_seeds and ((u + 1) % opts.eval_every == 0 or u + 1 == updates):
                tr.evaluate(pool, u, opts.eval_seeds, out_path.with_name(BEST_POLICY), log)
            save_policy(tr.policy, out_path)
            position = opts.events_position() if opts.events_position is not None else None
            tr.save(out_path.with_name(STATE_FILE), u + 1, opts.meta, position)
            if progress is not None:
                progress(len(tr.returns), cfg.episodes, sum(ep_returns) / len(ep_returns))
    save_policy(tr.policy, out_path)
    return TrainSummary(
        episodes=len(tr.returns),
        updates=updates,
        episode_returns=tuple(tr.returns),
        policy_path=str(out_path),
        seconds=tr.seconds(),
        last_update=stats,
        best_eval_return=None if tr.best is None else tr.best[0],
        best_eval_update=None if tr.best is None else tr.best[1],
        resumed_from_update=tr.first if opts.resume is not None else None,
    )


def evaluate_policy(
    policy: Policy, env_config: EnvConfig, registry: Registry, seeds: Sequence[int], log: Any
) -> list[float]:
    """One episode per seed (task data and host both from that seed), all envs stepped together; the returns."""
    envs = EnvBatch([MorphoEnv(env_config, registry, load_task(env_config, s), log, i) for i, s in enumerate(seeds)])
    return list(play_batch(envs, policy, envs.reset(seeds)))
