"""The learned policy kinds' loaders: a file, ``pretrained``, ``transfer:`` and ``family:`` (catalogue registers them).

Each loads the policy file under the active levers, task and slot count, as
:func:`esper_kernel.tamiyo.ppo.load_policy` fits it, and seeds its sampler
from the episode seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from esper_kernel.compose.registry import Registry
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import EnvConfig

if TYPE_CHECKING:
    from esper_kernel.tamiyo.ppo import PPOPolicy

__all__ = ["FAMILY", "TRANSFER", "build", "check", "check_transfer", "load", "policy_path"]

TRANSFER = "transfer"
FAMILY = "family"


def policy_path(arg: str, task: str, transfer: bool) -> Path:
    """``pretrained`` (this task's shipped policy), with ``transfer:`` a task name (that task's), or a file."""
    from esper_kernel.tamiyo.ppo import PRETRAINED, pretrained_path

    if arg == "pretrained":
        return pretrained_path(task)  # its error names --policy pretrained
    if transfer and arg in PRETRAINED and not Path(arg).exists():
        return pretrained_path(arg)
    return Path(arg)


def load(
    arg: str, registry: Registry, env: EnvConfig, obs_dim: int | None, transfer: bool, families: bool = False
) -> PPOPolicy:
    from esper_kernel.episode.env import observation_names
    from esper_kernel.tamiyo.ppo import load_policy, trained_on

    names = observation_names(registry, env.slots)
    # Levers the policy never saw take their defaults (tamiyo/fit.py); the commands say so once.
    obs_names = names if obs_dim is None or len(names) == obs_dim else None
    path = policy_path(arg, env.task, transfer)
    return load_policy(
        path, registry, len(names) if obs_dim is None else obs_dim, obs_names, trained_on=trained_on(env),
        transfer=transfer, families=families,
    )  # fmt: skip


def build(
    arg: str, registry: Registry, env: EnvConfig, obs_dim: int, seed: int, greedy: bool, transfer: bool, families: bool
) -> PPOPolicy:
    """The learned policy for an episode of ``seed`` (catalogue's ``BuildContext``, unpacked)."""
    policy = load(arg, registry, env, obs_dim, transfer, families)
    policy.greedy = greedy
    # Sampling noise comes from the episode seed: seeds differ, and a rerun of a seed is identical.
    policy.reseed(seed)
    return policy


def check(
    arg: str, where: str, registry: Registry, env: EnvConfig, transfer: bool = False, families: bool = False
) -> None:
    """The policy file loads under these levers, task and slot count (a one-line error naming what does not)."""
    from esper_kernel.tamiyo.ppo import PolicyLoadError

    try:
        load(arg, registry, env, None, transfer, families)
    except PolicyLoadError as exc:
        raise PolicyLoadError(f"{where}: {exc}") from None


def check_transfer(arg: str, where: str, registry: Registry, env: EnvConfig, families: bool = False) -> None:
    if not arg:
        kind = FAMILY if families else TRANSFER
        raise EsperError(f"{where}: name a policy file, or a task whose shipped policy to play, after {kind}:")
    if not policy_path(arg, env.task, True).exists():
        from esper_kernel.tamiyo.ppo import PRETRAINED

        shipped = ", ".join(PRETRAINED)
        raise EsperError(f"{where}: {arg!r} is neither a policy file nor a task with a shipped policy ({shipped})")
    check(arg, where, registry, env, transfer=True, families=families)
