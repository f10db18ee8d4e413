"""What a policy file says it was trained on, and what a run must share with it: its stamp, and the shipped ones.

The task must match (``transfer:`` lifts that), and so must the slot count;
a policy trained over several tasks runs on any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import EnvConfig

if TYPE_CHECKING:
    from esper_kernel.compose.actions import ActionSpace
    from esper_kernel.compose.registry import Registry

__all__ = [
    "MUST_MATCH",
    "PRETRAINED",
    "HeadStamp",
    "LeverStamp",
    "PolicyLoadError",
    "PolicyMismatchError",
    "check_stamp",
    "head_stamps",
    "lever_stamps",
    "pretrained_path",
    "trained_on",
]


class PolicyLoadError(EsperError):
    """A policy file is missing, unreadable or not an Esper policy."""


class PolicyMismatchError(PolicyLoadError):
    """A policy was trained for other heads, choices or observations than the active registry's."""


def trained_on(env: EnvConfig, tasks: Sequence[EnvConfig] = ()) -> dict[str, Any]:
    """The stamp a policy carries: what it was trained on, and so must be run on (``tasks``: every task of a
    policy trained over several; ``env`` is the first)."""
    stamp: dict[str, Any] = {"task": env.task, "epochs": env.epochs, "slots": env.slots}
    if tasks:
        stamp["tasks"] = [t.task for t in tasks]
    return stamp


#: Stamp entries a run must share with the policy it drives.
MUST_MATCH = ("task",)

#: Policies shipped in the package, by the task they play (``--policy pretrained``): for each, the one that scored
#: best there on held-out seeds (docs/tamiyo.md). ``text.pt`` was trained over pairs and text together.
PRETRAINED: dict[str, str] = {"pairs": "pairs.pt", "text": "text.pt"}


def pretrained_path(task: str) -> Path:
    """The shipped policy for ``task``; a clear error where none ships."""
    from importlib.resources import files

    name = PRETRAINED.get(task)
    path = Path(str(files("esper_kernel") / "pretrained" / name)) if name else None
    if path is None or not path.is_file():
        have = ", ".join(
            t for t, f in PRETRAINED.items() if (Path(str(files("esper_kernel"))) / "pretrained" / f).is_file()
        )
        raise PolicyLoadError(
            f"--policy pretrained: no pretrained policy ships for task {task!r} (there is one for: {have or 'none'})"
            + (f"; transfer:{have.split(', ')[0]} plays that one on {task!r}" if have else "")
        )
    return path


def check_stamp(path: Path, stamp: Mapping[str, Any], run: Mapping[str, Any], transfer: bool = False) -> None:
    """The task must match (unless asked to ``transfer``); so must the slot count, which the observation
    lays out slot by slot."""
    # The observation carries the epoch as a fraction of the episode, so a policy runs on another episode length.
    must: tuple[str, ...] = () if transfer else MUST_MATCH
    tasks = stamp.get("tasks")
    if tasks and not transfer:
        # Trained over several tasks: any of them is its own.
        must = tuple(k for k in must if k != "task")
        if run.get("task") not in tasks:
            raise PolicyMismatchError(
                f"policy {str(path)!r} was trained on tasks {', '.join(map(repr, tasks))}, not {run.get('task')!r}; "
                "transfer:POLICY plays it on another task"
            )
    differ = [f"{k} {stamp[k]!r} (this run: {run[k]!r})" for k in must if stamp.get(k) != run.get(k)]
    if differ:
        raise PolicyMismatchError(
            f"policy {str(path)!r} was trained on another setting: {', '.join(differ)}"
            + ("; transfer:POLICY plays it on another task" if "task" in must and stamp.get("task") else "")
        )
    slots, given = stamp.get("slots"), run.get("slots")
    if slots is not None and given is not None and slots != given:
        raise PolicyMismatchError(
            f"--slots {given}: policy {str(path)!r} was trained on {slots} slots and reads each slot's features "
            f"at a fixed place in its observation, so it runs only with --slots {slots}"
        )


@attrs.frozen
class LeverStamp:
    """Which lever, from which distribution and version, a policy was trained with."""

    name: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} ({self.distribution} {self.version})"


@attrs.frozen
class HeadStamp:
    name: str
    choices: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.choices)


def lever_stamps(registry: Registry) -> tuple[LeverStamp, ...]:
    return tuple(LeverStamp(lv.name, lv.distribution, lv.version) for lv in registry.levers)


def head_stamps(space: ActionSpace) -> tuple[HeadStamp, ...]:
    return tuple(HeadStamp(h.name, h.spec.choices) for h in space.heads)
