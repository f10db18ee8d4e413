"""Env shards as Ray actors: ``esper train --ray [ADDRESS]``.

Ray is an optional extra (``pip install "esper-kernel[ray]"``), imported
only here and only when asked for. Each actor holds one
:class:`~esper_kernel.tamiyo.envpool.EnvShard`, built in the actor from the
same levers as the main process, so a pool of Ray actors returns the same
numbers as a pool of local worker processes for the same seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvConfig
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.workers import WorkerError
from esper_kernel.tamiyo.envpool import EnvPool, EnvShard, shard_sizes

RAY_EXTRA = 'pip install "esper-kernel[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise EsperError(f"Ray is not installed; install the extra with: {RAY_EXTRA}") from None
    return ray


def init_ray(address: str | None, num_cpus: int | None = None) -> Any:
    """Connect to ``address`` (``""``/None: ``RAY_ADDRESS`` or a new local instance), once per process."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        target = address or os.environ.get("RAY_ADDRESS") or None
        if target is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(address=target, **kwargs)
        except Exception as exc:
            raise EsperError(f"cannot start or reach Ray at {target or 'a new local instance'}: {exc}") from exc
    return ray


class ShardActor:
    """The body of a Ray actor: one env shard, one intra-op thread."""

    def __init__(
        self, config: EnvConfig, selection: Selection, heads: tuple[str, ...], task_seed: int, indices: tuple[int, ...]
    ) -> None:
        import torch

        torch.set_num_threads(1)
        self.shard = EnvShard.in_worker(config, selection, heads, task_seed, indices)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.shard, method)(*args)


class RayHandle:
    """A Ray actor behind the send/recv an :class:`EnvPool` drives."""

    def __init__(self, ray: Any, actor: Any, name: str) -> None:
        self.ray = ray
        self.actor = actor
        self.name = name
        self._ref: Any = None

    def send(self, method: str, *args: Any) -> None:
        self._ref = self.actor.call.remote(method, *args)

    def recv(self) -> Any:
        ref, self._ref = self._ref, None
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            text = " ".join(str(cause).split())
            raise WorkerError(f"{self.name} failed: {type(cause).__name__}: {text[:500]}") from None

    @staticmethod
    def ready(handles: Sequence[RayHandle]) -> list[int]:
        """Indices of ``handles`` whose call has finished, blocking until one has."""
        refs = [h._ref for h in handles]
        ray = handles[0].ray
        done, rest = ray.wait(refs, num_returns=1)
        if rest:  # take every other call that has finished too, without waiting
            done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [i for i, r in enumerate(refs) if r in done]

    def close(self) -> None:
        self.ray.kill(self.actor)


def ray_pool(
    config: EnvConfig,
    registry: Registry,
    selection: Selection,
    task_seed: int,
    n_envs: int,
    workers: int,
    log: Any,
    address: str | None,
) -> EnvPool:
    """``n_envs`` envs in ``min(workers, n_envs)`` Ray actors of one CPU each."""
    ray = init_ray(address)
    remote = ray.remote(num_cpus=1)(ShardActor)
    sizes = shard_sizes(n_envs, workers)
    handles = []
    start = 0
    for w, size in enumerate(sizes):
        idx = tuple(range(start, start + size))
        actor = remote.remote(config, selection, registry.space.names, task_seed, idx)
        handles.append(RayHandle(ray, actor, f"env actor {w} (envs {idx[0]}-{idx[-1]})"))
        start += size
    return EnvPool(handles, sizes, config.epochs, log)
