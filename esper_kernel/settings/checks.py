"""Checks of config values that ranges alone do not catch: names that must exist, numbers that must be
finite, and the ``[[tasks]]`` tables of a train config.

Each returns or raises words naming the key, which :mod:`esper_kernel.settings.config` reports as one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["check_tasks", "checked_device_name", "env_problems", "finite_problems", "lay_tasks"]


def env_problems(env: Any, prefix: str = "env.") -> list[str]:
    """What an episode's config (an ``EnvConfig``) names that does not exist, as ``env.key: what is wrong``.

    Ranges are the settings' own (:func:`esper_kernel.settings.declare.range_problems`).
    """
    from esper_kernel.data.taskplugins import task_names

    problems: list[str] = []
    if env.task not in (names := task_names()):
        problems.append(f"{prefix}task: unknown task {env.task!r}; installed tasks: {', '.join(names)}")
    if env.data_dir is not None and not env.data_dir.strip():
        problems.append(f"{prefix}data_dir: is empty; leave it out for the generated tasks")
    return problems


def finite_problems(**values: float | None) -> list[str]:
    """``name: must be a finite number`` for every NaN or infinite value given (None is skipped)."""
    return [
        f"{k}: must be a finite number, got {v}" for k, v in values.items() if v is not None and not math.isfinite(v)
    ]


def check_tasks(n_tasks: int, n_envs: int, group_size: int, episodes: int, eval_every: int) -> None:
    """What ``[[tasks]]`` requires of the rest of a train config, as a ValueError naming the key."""
    if n_tasks == 1:
        raise ValueError("tasks: one [[tasks]] table is one task: put its keys in [env] instead")
    per_task, rest = divmod(n_envs, n_tasks)
    if rest or per_task % group_size:
        raise ValueError(
            f"ppo.n_envs: {n_tasks} tasks, each its own groups of ppo.group_size {group_size}, "
            f"need n_envs a multiple of {n_tasks * group_size}, got {n_envs}"
        )
    if episodes % n_envs:
        raise ValueError(
            f"ppo.episodes: with tasks, every rollout holds each task's envs, so episodes must be a "
            f"multiple of n_envs {n_envs}, got {episodes}"
        )
    if eval_every:
        raise ValueError("eval_every: with tasks, set 0 (evaluate each task with esper eval instead)")


def lay_tasks(
    tables: Sequence[Any], base: dict[str, Any], known: set[str], build: Callable[[dict[str, Any], str], Any]
) -> tuple[Any, ...]:
    """Each ``[[tasks]]`` table's keys over ``base`` (``[env]``), built by ``build(data, where)``."""
    out = []
    for i, table in enumerate(tables):
        where = f"tasks[{i}]"
        if not isinstance(table, dict) or "task" not in table:
            raise ValueError(f"{where}: a table of [env] keys naming its task, got {table!r}")
        if unknown := sorted(set(table) - known):
            raise ValueError(f"{where}.{unknown[0]}: unknown key (keys: those of [env])")
        if shared := sorted(set(table) & {"epochs", "slots"}):
            raise ValueError(f"{where}.{shared[0]}: set it in [env]: every task trains with the same one")
        out.append(build({**base, **table}, where))
    if len({e.task for e in out}) != len(out):
        raise ValueError(f"tasks: each task once, got {[e.task for e in out]}")
    return tuple(out)


def checked_device_name(name: str) -> str:
    # Imported here: devices imports torch, and reading a config must not.
    from esper_kernel.infra.devices import check_device_name

    return check_device_name(name)
