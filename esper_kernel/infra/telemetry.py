"""The structlog event stream: JSON lines for machines, a short console view for people.

No global structlog configuration is touched: each run wraps its own logger,
so several runs (or tests) in one process never share sinks.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import IO, Any

import structlog

from esper_kernel.infra.errors import Terminated
from esper_kernel.infra.stops import raise_terminated

#: Events shown on the console; everything goes to the JSON file.
CONSOLE_EVENTS = frozenset(
    {"run.started", "run.finished", "run.failed", "ppo.update", "plugin.failed", "telemetry.invalid"}
)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "name") and hasattr(obj, "value"):  # enums
        return obj.name
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf; a plugin's bad number must not corrupt the stream.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class JsonLinesSink:
    """Writes each event as one JSON line and flushes, so a crash loses nothing written."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        #: The epoch and episode of the latest events that had one: where a run that stops now stopped.
        self.epoch: Any = None
        self.episode: Any = None

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("epoch") is not None:
            self.epoch = event_dict["epoch"]
        if event_dict.get("episode") is not None:
            self.episode = event_dict["episode"]
        line = json.dumps(_finite(dict(event_dict)), default=_json_default, sort_keys=False)
        self.stream.write(line + "\n")
        self.stream.flush()
        return event_dict


class ConsoleFilter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self.enabled or (event_dict.get("event") not in CONSOLE_EVENTS and method not in ("warning", "error")):
            raise structlog.DropEvent
        return event_dict


def _timestamp(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("ts", round(time.time(), 3))
    return event_dict


class Telemetry:
    """Owns the event file of one run and hands out bound loggers.

    Every event carries ``event``, ``run_id``, ``env``, ``episode`` and
    ``epoch`` (None where not applicable); see ``docs/telemetry.md``.
    ``sinks`` are further structlog processors that see every event the file
    gets (e.g. :class:`~esper_kernel.infra.tensorboard.TensorBoardSink`); those with
    a ``close()`` are closed with the telemetry.
    """

    def __init__(
        self,
        path: Path | None,
        run_id: str,
        console: bool = True,
        append: bool = False,
        sinks: Sequence[Any] = (),
    ) -> None:
        self.path = path
        self.run_id = run_id
        self._file: IO[str] | None = None
        self._sink: JsonLinesSink | None = None
        self._sinks = tuple(sinks)
        self._sigterm: Any = None
        #: The epoch being played, set by the run (:meth:`at`); else the latest event's.
        self.epoch: int | None = None
        processors: list[Any] = [structlog.processors.add_log_level, _timestamp]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a" if append else "w", encoding="utf-8")
            self._sink = JsonLinesSink(self._file)
            processors.append(self._sink)
        processors.extend(self._sinks)
        processors.append(ConsoleFilter(console))
        processors.append(structlog.dev.ConsoleRenderer(colors=False, sort_keys=False))
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=processors,
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=False,
        ).bind(run_id=run_id, env=None, episode=None, epoch=None)

    def at(self, epoch: int) -> None:
        """The run is now playing ``epoch``: a stop from here on is recorded as in it."""
        self.epoch = epoch

    def _where(self) -> dict[str, Any]:
        sink = self._sink
        epoch = self.epoch if self.epoch is not None else (sink.epoch if sink is not None else None)
        episode = sink.episode if sink is not None else None
        return {"epoch": epoch} if episode is None else {"epoch": epoch, "episode": episode}

    def position(self) -> int | None:
        """Bytes written to the event file so far (None without a file)."""
        if self._file is None:
            return None
        self._file.flush()
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
        self._sinks = ()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Telemetry:
        # SIGTERM (kill, timeout, a scheduler) becomes an exception where the run is, so it
        # ends the stream like Ctrl-C does. Only the main thread may set a signal handler.
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, raise_terminated)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        # A stream that just stops cannot be told from one still being written:
        # a run that stops on an error says so, and why, and in which epoch, as its last event.
        try:
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None
            if exc is not None and self._file is not None:
                where = self._where()
                if isinstance(exc, KeyboardInterrupt | Terminated):
                    reason = "SIGTERM" if isinstance(exc, Terminated) else "KeyboardInterrupt"
                    self.log.warning("run.interrupted", reason=reason, **where)
                else:
                    self.log.error("run.failed", error=one_line(exc), error_type=type(exc).__name__, **where)
        finally:
            self.close()


def one_line(exc: BaseException) -> str:
    """An exception as the single line a user is shown."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _drop(_logger: Any, _method: str, _event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    raise structlog.DropEvent


def null_log() -> Any:
    """A bound logger that drops every event: for tests and tools that check state, not the stream."""
    return structlog.wrap_logger(structlog.ReturnLogger(), processors=[_drop]).bind()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Parse an ``events.jsonl`` file (for tests, notebooks and scripts)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
