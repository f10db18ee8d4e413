"""A TensorBoard stream fed from the structlog events (``--tensorboard DIR``).

:class:`TensorBoardSink` is one more structlog processor in a run's
:class:`~esper_kernel.infra.telemetry.Telemetry` chain: it sees exactly the events
written to ``events.jsonl`` and turns their numbers into scalars, so there is
no second bookkeeping. Scalars are flushed every couple of seconds, so
``tensorboard --logdir DIR`` shows a run while it trains.

Tags (see docs/report.md):

- ``host/train_loss``, ``host/train_accuracy``, ``host/val_loss``,
  ``host/val_accuracy``, ``host/params`` from ``epoch.completed``; step:
  ``episode * epochs_per_episode + epoch`` (the epoch, for ``esper run``);
- ``lever/<lever>.<field>/slot<k>``: each lever telemetry value that applies;
- ``ppo/<stat>`` and ``ppo/entropy/<head>`` from ``ppo.update``; step: the update;
- ``run/final_val_accuracy``, ``run/best_val_accuracy``, ``run/return``,
  ``run/params`` from ``run.finished``.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from esper_kernel.infra.errors import EsperError

INSTALL_HINT = "pip install 'esper-kernel[tensorboard]'"

_HOST = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "params")
_PPO = ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "entropy", "mean_return", "env_steps_per_s")
_RUN = ("final_val_accuracy", "best_val_accuracy", "return", "params")


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class TensorBoardSink:
    """A structlog processor that writes each event's numbers as TensorBoard scalars, then passes it on."""

    def __init__(self, logdir: Path, flush_secs: int = 2) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            msg = f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}"
            raise EsperError(msg) from exc
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir), flush_secs=flush_secs)
        self.epochs_per_episode = 0

    def _add(self, tag: str, value: Any, step: int) -> None:
        v = _scalar(value)
        if v is not None:
            self.writer.add_scalar(tag, v, step)

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        name = event_dict.get("event")
        if name == "run.started":
            env = event_dict.get("env_config") or (event_dict.get("config") or {}).get("env") or {}
            self.epochs_per_episode = int(env.get("epochs") or 0)
        elif name == "epoch.completed":
            step = int(event_dict.get("episode") or 0) * self.epochs_per_episode + int(event_dict.get("epoch") or 0)
            for key in _HOST:
                self._add(f"host/{key}", event_dict.get(key), step)
            for key, values in event_dict.items():
                if "." in key and isinstance(values, list):
                    for slot, v in enumerate(values):
                        self._add(f"lever/{key}/slot{slot}", v, step)
        elif name == "ppo.update":
            step = int(event_dict.get("update") or 0)
            for key in _PPO:
                self._add(f"ppo/{key}", event_dict.get(key), step)
            for head, v in (event_dict.get("head_entropy") or {}).items():
                self._add(f"ppo/entropy/{head}", v, step)
        elif name == "run.finished":
            step = int(event_dict.get("epochs") or event_dict.get("updates") or 0)
            for key in _RUN:
                self._add(f"run/{key}", event_dict.get(key), step)
            self.writer.flush()
        return event_dict

    def close(self) -> None:
        self.writer.close()
