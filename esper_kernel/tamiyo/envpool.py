"""A rollout's envs, in this process or spread over worker processes (or Ray actors).

The envs are cut into *shards* of consecutive envs. A shard steps its envs
and composes their masks for the next decision; the policy stays in the main
process. :meth:`EnvPool.step` steps every shard at once and waits for all;
:meth:`EnvPool.start` hands each shard's answer over as it comes, so a
rollout can step a shard again without waiting for the others. Where a shard
lives does not change any number it returns:

- every env keeps its own torch random state (seeded by ``reset``), swapped
  in around its step, so an env draws the same numbers whether it shares a
  process with other envs or not;
- masks are a per-env function of each env's state, so composing them per
  shard gives the rows composing them for the whole batch gives.

A shard in a worker builds its own registry from the same selection and
checks it composes the same heads; its events are recorded and replayed
into the main process's event stream, so ``events.jsonl`` holds them all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, Protocol

import attrs
import structlog
import torch

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, env_registries, load_task
from esper_kernel.episode.heads import blueprints_of
from esper_kernel.episode.loop import Transition
from esper_kernel.infra.devices import rng_states, set_rng_states
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.workers import ProcessActor


@attrs.frozen
class ShardStep:
    """What a shard answers after a reset (no rewards) or a step."""

    obs: torch.Tensor
    masks: torch.Tensor | None
    rewards: tuple[float, ...] = ()
    dones: tuple[bool, ...] = ()
    #: ``(method, event_dict)`` of every event logged in a worker, to replay in the main process.
    events: tuple[tuple[str, dict[str, Any]], ...] = ()
    #: :meth:`~esper_kernel.episode.env.MorphoEnv.lever_report` of every env whose episode ended in this step.
    levers: tuple[dict[str, Any], ...] = ()
    #: The lines the shard's envs would have shown a person (a quarantine, a slow lever), for the main process.
    said: tuple[str, ...] = ()


class _Recorder:
    """A structlog processor that keeps events instead of writing them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("ts", round(time.time(), 3))
        self.events.append((method, dict(event_dict)))
        raise structlog.DropEvent

    def take(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        out = tuple(self.events)
        self.events.clear()
        return out


class EnvShard:
    """Some consecutive envs of a rollout, stepped together."""

    def __init__(self, envs: Sequence[MorphoEnv], recorder: _Recorder | None = None) -> None:
        self.envs = list(envs)
        self.recorder = recorder
        self.active: list[MorphoEnv] = []
        self.rng: list[dict[str, Any]] = []
        self.said: list[str] = []
        for env in self.envs:
            env.warn = self.said.append

    @classmethod
    def build(
        cls, config: EnvConfig, registry: Registry, task_seed: int, indices: Sequence[int], log: Any | None = None
    ) -> EnvShard:
        """Envs ``indices`` on the task of ``task_seed``; ``log`` None records events for replay elsewhere."""
        recorder = None
        if log is None:
            recorder = _Recorder()
            log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[recorder]).bind()
        task = load_task(config, task_seed)
        registries = env_registries(registry, len(indices))
        return cls([MorphoEnv(config, reg, task, log, i) for reg, i in zip(registries, indices, strict=True)], recorder)

    @classmethod
    def in_worker(
        cls,
        config: EnvConfig,
        selection: Selection,
        heads: tuple[str, ...],
        task_seed: int,
        indices: Sequence[int],
        catalogue: tuple[str, ...] | None = None,
    ) -> EnvShard:
        """Build a shard in a worker process: its own registry, which must compose the main process's heads."""
        registry = build_registry(config, selection, catalogue)
        if registry.space.names != heads:
            raise EsperError(
                f"the worker's levers compose heads {list(registry.space.names)}, the main process's {list(heads)}; "
                "install the same lever packages where the workers run"
            )
        return cls.build(config, registry, task_seed, indices)

    @property
    def obs_dim(self) -> int:
        return self.envs[0].obs_dim

    def _answer(
        self, obs: list[torch.Tensor], rewards: tuple[float, ...] = (), dones: tuple[bool, ...] = ()
    ) -> ShardStep:
        done = all(dones) if dones else False
        masks = None if done else EnvBatch(self.active).masks()
        events = self.recorder.take() if self.recorder is not None else ()
        ended = tuple(env.lever_report() for env, d in zip(self.active, dones, strict=True) if d) if dones else ()
        said, self.said[:] = tuple(self.said), []
        return ShardStep(torch.stack(obs), masks, rewards, dones, events, ended, said)

    def reset(self, seeds: Sequence[int], episodes: Sequence[int]) -> ShardStep:
        """Start an episode in the first ``len(seeds)`` envs; the others sit this rollout out."""
        if len(seeds) > len(self.envs):
            raise ValueError(f"{len(seeds)} seeds for a shard of {len(self.envs)} envs")
        self.active = self.envs[: len(seeds)]
        obs, self.rng = [], []
        for env, seed, episode in zip(self.active, seeds, episodes, strict=True):
            obs.append(env.reset(seed, episode))
            self.rng.append(rng_states())
        return self._answer(obs)

    def step(self, actions: torch.Tensor) -> ShardStep:
        obs, rewards, dones = [], [], []
        outer = rng_states()
        try:
            for i, env in enumerate(self.active):
                set_rng_states(self.rng[i])
                result = env.step(actions[i])
                self.rng[i] = rng_states()
                obs.append(result.obs)
                rewards.append(result.reward)
                dones.append(result.done)
        finally:
            set_rng_states(outer)
        return self._answer(obs, tuple(rewards), tuple(dones))


class _Handle(Protocol):
    def send(self, method: str, *args: Any) -> None: ...

    def recv(self) -> Any: ...

    def close(self) -> None: ...

    # Indices of the handles (all of this class) whose answer is in, blocking until one is.
    @staticmethod
    def ready(handles: Sequence[Any]) -> list[int]: ...


class _Local:
    """A shard in this process behind the same send/recv a worker has."""

    def __init__(self, shard: EnvShard) -> None:
        self.shard = shard
        self._result: Any = None

    def send(self, method: str, *args: Any) -> None:
        self._result = getattr(self.shard, method)(*args)

    def recv(self) -> Any:
        out, self._result = self._result, None
        return out

    def close(self) -> None:
        pass

    @staticmethod
    def ready(handles: Sequence[_Local]) -> list[int]:
        return list(range(len(handles)))  # send already did the work


@attrs.frozen
class PoolStep:
    obs: torch.Tensor
    masks: torch.Tensor | None
    rewards: tuple[float, ...]
    dones: tuple[bool, ...]


@attrs.frozen
class Arrival:
    """One shard's answer, as soon as it came: its rows of the pool and the steps it has taken."""

    shard: int
    rows: slice
    t: int
    answer: ShardStep


class EnvPool:
    """``n_envs`` envs in ``len(handles)`` shards; resets and steps run in every shard at once."""

    def __init__(self, handles: Sequence[_Handle], sizes: Sequence[int], epochs: int, log: Any) -> None:
        self.handles = list(handles)
        self.sizes = list(sizes)
        self.n_envs = sum(sizes)
        self.epochs = epochs
        self.log = log
        self._parts: list[int] = []
        self._waiting: set[int] = set()
        #: The lever reports of the episodes ended since :meth:`take_levers` last took them.
        self.levers: list[dict[str, Any]] = []
        #: Told every line a shard's envs would show a person, as the shard's answer comes in.
        self.on_warning: Callable[[str], None] | None = None

    @classmethod
    def local(
        cls, config: EnvConfig, registry: Registry, task_seed: int, n_envs: int, log: Any, first: int = 0
    ) -> EnvPool:
        """Every env in this process, in one shard (env indices from ``first``)."""
        return cls.of(EnvShard.build(config, registry, task_seed, range(first, first + n_envs), log), log)

    @classmethod
    def of_tasks(
        cls,
        tasks: Sequence[EnvConfig],
        registry: Registry,
        selection: Selection,
        task_seed: int,
        n_envs: int,
        workers: int,
        log: Any,
    ) -> EnvPool:
        """Several tasks' envs as one pool: ``n_envs / len(tasks)`` consecutive envs each, in the order given.

        With ``workers`` > 1 every task has ``max(1, workers // len(tasks))`` processes of its own (a shard
        holds one task's data); ``registry`` holds the tasks' union blueprint catalogue.
        """
        catalogue = blueprints_of(registry)
        per = n_envs // len(tasks)
        pools: list[EnvPool] = []
        try:
            for i, env in enumerate(tasks):
                if workers > 1:
                    own = max(1, workers // len(tasks))
                    pools.append(cls.processes(env, registry, selection, task_seed, per, own, log, i * per, catalogue))
                else:
                    reg = build_registry(env, selection, catalogue)
                    pools.append(cls.local(env, reg, task_seed, per, log, first=i * per))
            return cls.joined(pools, log)
        except BaseException:
            for sub in pools:
                sub.close()
            raise

    @classmethod
    def joined(cls, pools: Sequence[EnvPool], log: Any) -> EnvPool:
        """One pool of several pools' shards, in order (several tasks' envs, one rollout)."""
        epochs = {p.epochs for p in pools}
        if len(epochs) != 1:
            raise ValueError(f"pools of {sorted(epochs)} epochs cannot step as one")
        return cls([h for p in pools for h in p.handles], [n for p in pools for n in p.sizes], epochs.pop(), log)

    @classmethod
    def of(cls, shard: EnvShard, log: Any) -> EnvPool:
        """A pool of one shard in this process."""
        return cls([_Local(shard)], [len(shard.envs)], shard.envs[0].config.epochs, log)

    @classmethod
    def processes(
        cls,
        config: EnvConfig,
        registry: Registry,
        selection: Selection,
        task_seed: int,
        n_envs: int,
        workers: int,
        log: Any,
        first: int = 0,
        catalogue: tuple[str, ...] | None = None,
    ) -> EnvPool:
        """The envs in ``min(workers, n_envs)`` worker processes, one intra-op thread each (env indices from
        ``first``; ``catalogue``: the blueprint head of several tasks, as :func:`build_registry` takes it)."""
        sizes = shard_sizes(n_envs, workers)
        handles: list[ProcessActor] = []
        start = first
        try:
            for w, size in enumerate(sizes):
                idx = tuple(range(start, start + size))
                handles.append(
                    ProcessActor(
                        EnvShard.in_worker,
                        config,
                        selection,
                        registry.space.names,
                        task_seed,
                        idx,
                        catalogue,
                        name=f"env worker {w} (envs {idx[0]}-{idx[-1]})",
                    )
                )
                start += size
            for h in handles:
                h.wait_ready()  # so a rollout's timing never includes worker start-up
        except BaseException:
            for h in handles:
                h.close()
            raise
        return cls(handles, sizes, config.epochs, log)

    def _replay(self, answer: ShardStep) -> None:
        for method_name, event in answer.events:
            getattr(self.log, method_name)(**event)
        self.levers += answer.levers
        for line in answer.said:
            if self.on_warning is not None:
                self.on_warning(line)

    def take_levers(self) -> list[dict[str, Any]]:
        """The lever reports of every episode ended since the last call (in whatever process it ran)."""
        out, self.levers = self.levers, []
        return out

    def _gather(self, method: str, per_shard: Sequence[tuple[Any, ...]]) -> PoolStep:
        used = [i for i, args in enumerate(per_shard) if args is not None]
        for i in used:
            self.handles[i].send(method, *per_shard[i])
        answers: list[ShardStep] = [self.handles[i].recv() for i in used]
        for ans in answers:
            self._replay(ans)
        masks = [a.masks for a in answers]
        return PoolStep(
            obs=torch.cat([a.obs for a in answers]),
            masks=None if any(m is None for m in masks) else torch.cat([m for m in masks if m is not None]),
            rewards=tuple(r for a in answers for r in a.rewards),
            dones=tuple(d for a in answers for d in a.dones),
        )

    def _reset_args(self, seeds: Sequence[int], episodes: Sequence[int]) -> list[Any]:
        if len(seeds) > self.n_envs:
            raise ValueError(f"{len(seeds)} seeds for a pool of {self.n_envs} envs")
        self._parts = []
        args: list[Any] = []
        start = 0
        for size in self.sizes:
            k = max(0, min(size, len(seeds) - start))
            self._parts.append(k)
            args.append((list(seeds[start : start + k]), list(episodes[start : start + k])) if k else None)
            start += size
        return args

    def reset(self, seeds: Sequence[int], episodes: Sequence[int]) -> PoolStep:
        """Start episodes in the first ``len(seeds)`` envs."""
        return self._gather("reset", self._reset_args(seeds, episodes))

    def start(self, seeds: Sequence[int], episodes: Sequence[int]) -> Iterator[Arrival]:
        """Start episodes in the first ``len(seeds)`` envs; yield each shard's answer as it comes.

        Answer an arrival with :meth:`send_step` to have that shard step on at
        once, without waiting for the others: a shard whose envs are slower
        this epoch (a seed to train, a counterfactual to score) no longer
        holds every other shard back at each step. The iterator ends when no
        shard has a call outstanding.
        """
        args = self._reset_args(seeds, episodes)
        rows, waiting, steps = {}, set(), {}
        first = 0
        for i, (k, a) in enumerate(zip(self._parts, args, strict=True)):
            if a is not None:
                self.handles[i].send("reset", *a)
                rows[i], steps[i] = slice(first, first + k), 0
                waiting.add(i)
            first += k
        self._waiting = waiting
        try:
            while waiting:
                pending = sorted(waiting)
                handles = [self.handles[i] for i in pending]
                for j in type(handles[0]).ready(handles):
                    i = pending[j]
                    waiting.discard(i)
                    answer: ShardStep = self.handles[i].recv()
                    self._replay(answer)
                    yield Arrival(i, rows[i], steps[i], answer)
                    steps[i] += 1
        finally:
            # Left early (an error, or the caller stopped): take the answers still owed, so
            # the next call to a worker does not read a stale one.
            for i in sorted(waiting):
                with contextlib.suppress(Exception):
                    self.handles[i].recv()
            waiting.clear()

    def send_step(self, arrival: Arrival, actions: torch.Tensor) -> None:
        """Step the shard of ``arrival`` with ``actions`` (one row per env of that shard)."""
        self.handles[arrival.shard].send("step", actions)
        self._waiting.add(arrival.shard)

    def step(self, actions: torch.Tensor) -> PoolStep:
        args: list[Any] = []
        start = 0
        for k in self._parts:
            args.append((actions[start : start + k],) if k else None)
            start += k
        return self._gather("step", args)

    def close(self) -> None:
        for h in self.handles:
            h.close()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_sizes(n_envs: int, workers: int) -> list[int]:
    """Consecutive shard sizes for ``n_envs`` envs over at most ``workers`` shards, as even as possible."""
    w = max(1, min(workers, n_envs))
    per = math.ceil(n_envs / w)
    sizes = []
    left = n_envs
    while left > 0:
        sizes.append(min(per, left))
        left -= sizes[-1]
    return sizes


class PoolEnvs:
    """An :class:`~esper_kernel.tamiyo.envpool.EnvPool` stepped in lock-step, from the answer to its reset."""

    def __init__(self, pool: EnvPool, first: PoolStep) -> None:
        self.pool = pool
        self.last = first

    @property
    def done(self) -> bool:
        return self.last.masks is None

    def masks(self) -> torch.Tensor:
        if self.last.masks is None:
            raise RuntimeError("the pool's episodes are over")
        return self.last.masks

    def step(self, actions: torch.Tensor) -> Transition:
        self.last = self.pool.step(actions)
        return Transition(self.last.obs, self.last.rewards, self.last.dones)
