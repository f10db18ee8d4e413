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

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.watch import merge_levers
from esper_kernel.episode.env import (
    EnvBatch,
    EnvConfig,
    MorphoEnv,
    env_registries,
    load_task,
    observation_names,
)
from esper_kernel.episode.loop import play, play_batch
from esper_kernel.episode.observation import fresh_reads
from esper_kernel.episode.sampling import Sampled
from esper_kernel.infra import checkpoint
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import PPOConfig as PPOConfig  # re-exported: its old home
from esper_kernel.settings.config import TrainConfig as TrainConfig
from esper_kernel.settings.declare import with_defaults
from esper_kernel.tamiyo.algorithm import (
    AdvantageScale,
    RolloutBuffer,
    UpdateStats,
    group_sizes,
    ppo_update,
    relative_rewards,
)
from esper_kernel.tamiyo.envpool import EnvPool, EnvShard, PoolEnvs
from esper_kernel.tamiyo.policies import Policy
from esper_kernel.tamiyo.ppo import PPOPolicy, load_policy, save_policy, stamped_hyperparameters, trained_on

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
    #: Over every episode, the held-out ones too (as in ``esper run``'s summary): seconds per lever and
    #: hook, each quarantine with its env, episode (-1: held-out) and epoch, and the ``--compile`` counts.
    hook_seconds: dict[str, dict[str, float]] = attrs.Factory(dict)
    quarantined: tuple[dict[str, Any], ...] = ()
    compile: dict[str, Any] | None = None

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
    #: Told each line a person should see from an env (a lever quarantined, a slow lever), wherever it ran.
    on_warning: Callable[[str], None] | None = None


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
    env_config: EnvConfig,
    registry: Registry,
    task_seed: int,
    n_envs: int,
    log: Any,
    opts: TrainOptions,
    tasks: Sequence[EnvConfig] = (),
) -> EnvPool:
    if tasks:
        if opts.ray is not None:
            raise EsperError("--ray-address: training over several tasks runs its envs in local worker processes")
        selection = opts.selection or Selection(only=registry.names)
        return EnvPool.of_tasks(tasks, registry, selection, task_seed, n_envs, opts.workers, log)
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
    names = policy.obs_names  # what the fresh policy reads, which the start must have read too
    try:
        # Checked first: a policy that reads contributions otherwise would be refused for its observation size.
        reads = with_defaults(PPOConfig, stamped_hyperparameters(path))["contribution"]
        if reads != policy.hyperparameters["contribution"]:
            msg = f"{str(path)!r} reads contributions as {reads}, this run as {policy.hyperparameters['contribution']}"
            raise TrainStateError(f"{msg} (ppo.contribution must match)")
        start = load_policy(path, registry, len(names), names, trained_on=trained_on(env_config), extend=False)
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
    #: Training over several tasks: each task's env (``env_config`` is the first); empty: one task.
    tasks: tuple[EnvConfig, ...] = ()
    scale: AdvantageScale = attrs.Factory(AdvantageScale)
    returns: list[float] = attrs.Factory(list)
    first: int = 0
    best: tuple[float, int] | None = None
    prior_seconds: float = 0.0
    started: float = attrs.Factory(time.monotonic)
    #: What the levers did over every episode so far (:func:`~esper_kernel.compose.watch.merge_levers`).
    levers: dict[str, Any] = attrs.Factory(lambda: merge_levers([]))

    @classmethod
    def start(
        cls, env_config: EnvConfig, registry: Registry, cfg: PPOConfig, tasks: Sequence[EnvConfig] = ()
    ) -> _Trainer:
        names = observation_names(registry, env_config.slots)
        policy = PPOPolicy.for_registry(
            registry,
            names,
            cfg.hidden,
            hyperparameters=attrs.asdict(cfg),
            seed=cfg.seed,
            pinned=lever_defaults(registry) if cfg.fix_levers else None,
            trained_on=trained_on(env_config, tasks),
            reads=fresh_reads(names, several_tasks=bool(tasks), contribution=cfg.contribution),
        )
        if cfg.init_policy is not None:
            if tasks:
                raise TrainStateError("ppo.init_policy: not with tasks (a policy over several tasks starts fresh)")
            _start_from(policy, Path(cfg.init_policy), registry, env_config)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        shuffle = torch.Generator().manual_seed(cfg.seed + 2)
        return cls(env_config, cfg, registry, policy, optimizer, shuffle, tasks=tuple(tasks))

    def env_record(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The env settings a resume must share: the one task's, or every task's."""
        return [attrs.asdict(t) for t in self.tasks] if self.tasks else attrs.asdict(self.env_config)

    def seconds(self) -> float:
        return self.prior_seconds + time.monotonic() - self.started

    def restore(self, path: Path, log: Any) -> None:
        state = load_train_state(path)
        saved = with_defaults(PPOConfig, state["ppo_config"])
        same_but_length = {**saved, "episodes": self.cfg.episodes} == attrs.asdict(self.cfg)
        if state["env_config"] != self.env_record() or not same_but_length:
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
        self.levers = dict(state.get("lever_reports") or merge_levers([]))
        log.info("train.resumed", updates_done=self.first, episodes_done=len(self.returns))

    def save(self, path: Path, updates_done: int, meta: dict[str, Any], events_bytes: int | None = None) -> None:
        _save_state(
            path,
            {
                "events_bytes": events_bytes,
                "env_config": self.env_record(),
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
                "lever_reports": self.levers,
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
        self.policy.norm.update(self.policy.own_obs(buf.obs))
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
    tasks: Sequence[EnvConfig] = (),
) -> TrainSummary:
    """Train a :class:`PPOPolicy` for ``ppo_config.episodes`` episodes; save it at ``out_path`` after every update.

    With ``tasks`` (``TrainConfig.task_envs``, ``env_config`` the first; ``registry`` built with their
    :func:`~esper_kernel.episode.env.union_catalogue`), one policy trains over all of them: every rollout
    holds ``n_envs / len(tasks)`` envs of each task, in groups of ``group_size``, and the policy reads the
    scaled twins of the loss and accuracy features only (:data:`~esper_kernel.episode.observation.ABSOLUTE`).

    Beside ``out_path``, ``train_state.pt`` (policy, optimizer, normaliser,
    every random state and the episode counter) is written atomically after
    every update, so a run killed at any point continues with
    ``options.resume`` to the weights an uninterrupted run ends with; and
    ``best_policy.pt`` keeps the policy with the best held-out return.
    """
    opts = options or TrainOptions()
    cfg = ppo_config
    out_path = Path(out_path)
    tasks = tuple(tasks) if len(tasks) > 1 else ()
    tr = _Trainer.start(env_config, registry, cfg, tasks)
    if opts.resume is not None:
        tr.restore(opts.resume, log)
    n_envs = min(cfg.n_envs, cfg.episodes)
    updates = math.ceil(cfg.episodes / n_envs)
    stats: UpdateStats | None = None
    with _make_pool(env_config, registry, cfg.seed, n_envs, log, opts, tasks) as pool:
        pool.on_warning = opts.on_warning
        for u in range(tr.first, updates):
            stats, ep_returns = tr.update(pool, u, n_envs, log)
            if opts.eval_every > 0 and opts.eval_seeds and ((u + 1) % opts.eval_every == 0 or u + 1 == updates):
                tr.evaluate(pool, u, opts.eval_seeds, out_path.with_name(BEST_POLICY), log)
            tr.levers = merge_levers([tr.levers, *pool.take_levers()])
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
        hook_seconds=tr.levers["hook_seconds"],
        quarantined=tuple(tr.levers["quarantined"]),
        compile=tr.levers["compile"],
    )


def evaluate_policy(
    policy: Policy, env_config: EnvConfig, registry: Registry, seeds: Sequence[int], log: Any
) -> list[float]:
    """One episode per seed (task data and host both from that seed), all envs stepped together; the returns."""
    regs = env_registries(registry, len(seeds))
    pairs = enumerate(zip(regs, seeds, strict=True))
    envs = EnvBatch([MorphoEnv(env_config, r, load_task(env_config, s), log, i) for i, (r, s) in pairs])
    return list(play_batch(envs, policy, envs.reset(seeds)))
