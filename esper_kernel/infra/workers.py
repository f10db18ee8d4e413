"""Worker processes: one small pool every command shares, and thread hygiene.

Esper's hosts are tiny (tens of thousands of parameters), so torch's
intra-op thread pool buys little and, on a shared machine, costs a lot: an
op's parallel region waits for its slowest thread, and a descheduled thread
costs a whole timeslice (the default ``esper run`` took 344 s with torch's
default threads against 55 s with one while another process was busy).
Parallelism comes from running several envs or jobs in processes instead,
each with one intra-op thread.

Two entry points:

- :func:`map_jobs` runs independent jobs (eval cells, seeds of ``esper run``,
  sweep trials) and returns their results in order.
- :class:`ProcessActor` keeps one object alive in a worker process and calls
  its methods (the env shards of ``esper train --workers``).

Processes are forked from the command itself where that is safe (Linux, one
Python thread, one intra-op thread, no CUDA: see :func:`fork_is_safe`), so a
worker starts in milliseconds with everything already imported; otherwise
they come from a fork server that has imported torch and the kernel but never
run an op (forking a process whose OpenMP pool has already run can deadlock
the child); where there is no fork server, ``spawn``. ``ESPER_START_METHOD``
set to ``forkserver`` or ``spawn`` forbids the first. Either way a
child inherits ``sys.path``, so levers installed beside the parent's are
found in the child too.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.memory import keep_freed_memory
from esper_kernel.infra.stops import count_sigints

J = TypeVar("J")
R = TypeVar("R")

#: The environment variable torch (OpenMP) reads its intra-op thread count from.
OMP_ENV = "OMP_NUM_THREADS"


class WorkerError(EsperError):
    """A job or worker process failed; the message names the job and the original error."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def resolve_threads(threads: int | None) -> int | None:
    """The intra-op thread count a command should use.

    An explicit ``threads`` wins (0 means torch's own default, returned as
    None); otherwise ``OMP_NUM_THREADS`` when set (torch already read it);
    otherwise 1, the count that does not collapse on a shared machine.
    """
    if threads is not None:
        if threads < 0:
            raise EsperError(f"--threads must be 0 (torch's default) or a positive count, got {threads}")
        return threads or None
    if os.environ.get(OMP_ENV, "").strip():
        try:
            return max(int(os.environ[OMP_ENV]), 1)
        except ValueError:
            raise EsperError(f"{OMP_ENV}={os.environ[OMP_ENV]!r} is not a whole number") from None
    return 1


def configure_threads(threads: int | None) -> int:
    """Apply :func:`resolve_threads` to this process; returns torch's intra-op thread count after."""
    import torch

    count = resolve_threads(threads)
    if count is not None:
        torch.set_num_threads(count)
        # Worker processes spawned later read the same count at their own torch import.
        os.environ[OMP_ENV] = str(count)
    return int(torch.get_num_threads())


#: Set to ``forkserver`` or ``spawn`` to keep workers from being forked from the command itself.
START_ENV = "ESPER_START_METHOD"

#: Imported once by the fork server, so no worker imports them itself (see esper_kernel.preload).
_PRELOAD = ["esper_kernel.preload"]


def fork_is_safe() -> bool:
    """Whether a worker can be forked from this process itself rather than from the fork server.

    Forking the parent skips the fork server's own import of torch and
    ``torch._dynamo`` (about 3 s of CPU, the whole of a pool's start-up), and
    is what torch's DataLoader does. It is safe only where nothing the child
    needs can be held by another thread or an OpenMP pool at the fork: Linux,
    one Python thread, one intra-op thread, and CUDA never initialised.
    """
    if sys.platform != "linux" or os.environ.get(START_ENV, "") not in ("", "fork"):
        return False
    if threading.active_count() != 1:
        return False
    torch = sys.modules.get("torch")
    if torch is None:
        return True
    return bool(torch.get_num_threads() == 1 and not torch.cuda.is_initialized())


def _context() -> Any:
    global _helpers_stopped_at_exit
    if not _helpers_stopped_at_exit:
        atexit.register(stop_helpers)
        _helpers_stopped_at_exit = True
    if fork_is_safe():
        # What the fork server would have imported, imported here once, so every child inherits it.
        importlib.import_module(_PRELOAD[0])
        return mp.get_context("fork")
    if "forkserver" in mp.get_all_start_methods() and os.environ.get(START_ENV) != "spawn":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


_helpers_stopped_at_exit = False


def stop_helpers() -> None:
    """Stop multiprocessing's fork server and resource tracker, and wait until they are gone.

    Left alone they exit only once they notice their parent has, so for a
    moment after ``esper`` returns they are still in its process group, where
    a shell's job control or a CI's cleanup finds them. Stopping them is best
    effort: a helper that is already gone is not an error at exit.
    """
    from multiprocessing import forkserver, resource_tracker

    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(helper, "_stop", None)
        if stop is None:
            continue
        with contextlib.suppress(OSError, ChildProcessError, AttributeError):
            stop()


def _init_worker(threads: int) -> None:
    import torch

    # A child forked from the command inherits its handlers (SIGTERM writes the run's final event):
    # a worker takes the defaults, as a fork server's children do.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    count_sigints()
    keep_freed_memory()  # a spawned or forkserver child starts with glibc's defaults again

    os.environ[OMP_ENV] = str(threads)
    torch.set_num_threads(threads)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _call(fn: Callable[[Any], Any], job: Any) -> tuple[bool, Any]:
    # Exceptions come back as text: a plugin's exception class may not unpickle in the parent.
    try:
        return True, fn(job)
    except BaseException as exc:
        return False, _one_line(exc)


def _label(job: Any) -> str:
    text = repr(job)
    return text if len(text) <= 80 else text[:77] + "..."


def map_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    workers: int = 1,
    *,
    threads: int = 1,
    names: Sequence[str] | None = None,
) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``workers`` processes, results in the order of ``jobs``.

    ``fn`` must be a module-level function and every job and result picklable.
    ``workers=1`` (or a single job) runs in this process, with no pickling.
    Each worker process runs torch with ``threads`` intra-op threads. A job
    that raises stops the map: the remaining jobs are cancelled and a
    :class:`WorkerError` names the job (``names[i]``, else its repr) and the
    original exception in one line.
    """
    return list(iter_jobs(fn, jobs, workers, threads=threads, names=names))


def iter_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    workers: int = 1,
    *,
    threads: int = 1,
    names: Sequence[str] | None = None,
) -> Iterator[R]:
    """:func:`map_jobs` as a generator: each result as soon as it and those before it are done.

    For callers that save results as they come (``esper eval`` journals every
    episode), so a stopped map loses only the jobs still running.
    """
    if workers < 1:
        raise EsperError(f"workers must be at least 1, got {workers}")
    if names is not None and len(names) != len(jobs):
        raise ValueError(f"{len(names)} names for {len(jobs)} jobs")
    labels = list(names) if names is not None else [_label(j) for j in jobs]
    if workers == 1 or len(jobs) <= 1:
        for job, label in zip(jobs, labels, strict=True):
            try:
                value = fn(job)
            except Exception as exc:
                raise WorkerError(f"job {label} failed: {_one_line(exc)}") from exc
            yield value
        return
    ctx = _context()
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=(threads,)
    )
    try:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        for fut, label in zip(futures, labels, strict=True):
            try:
                ok, value = fut.result()
            except BrokenProcessPool:
                raise WorkerError(f"job {label} failed: its worker process died (killed or out of memory)") from None
            except Exception as exc:  # the job or its result could not be pickled
                raise WorkerError(f"job {label} failed: {_one_line(exc)}") from None
            if not ok:
                raise WorkerError(f"job {label} failed: {value}")
            yield value
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- persistent workers ----------------------------------------------------------


def _actor_main(conn: Connection, factory: Callable[..., Any], args: tuple[Any, ...], threads: int) -> None:
    _init_worker(threads)
    try:
        obj = factory(*args)
    except BaseException as exc:
        conn.send((False, _one_line(exc), traceback.format_exc()))
        return
    conn.send((True, None, ""))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        method, margs = msg
        try:
            conn.send((True, getattr(obj, method)(*margs), ""))
        except BaseException as exc:
            conn.send((False, _one_line(exc), traceback.format_exc()))


class ProcessActor:
    """``factory(*args)`` built and kept in a worker process; its methods called by name.

    :meth:`send` then :meth:`recv` lets a caller start several actors'
    calls before waiting on any, so they run in parallel. A failure in the
    worker (in ``factory`` or a method) raises :class:`WorkerError` naming
    the actor and the original exception.
    """

    def __init__(self, factory: Callable[..., Any], *args: Any, name: str = "worker", threads: int = 1) -> None:
        self.name = name
        ctx = _context()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_actor_main, args=(child, factory, args, threads), daemon=True, name=name)
        self._proc.start()
        child.close()
        self._pending = True  # the factory's answer

    def _answer(self) -> Any:
        try:
            ok, value, _tb = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._proc.join(timeout=5)
            raise WorkerError(f"{self.name} died (exit code {self._proc.exitcode})") from None
        if not ok:
            raise WorkerError(f"{self.name} failed: {value}")
        return value

    def wait_ready(self) -> None:
        """Block until the worker has built its object (raising what the factory raised)."""
        if self._pending:
            self._pending = False
            self._answer()

    def send(self, method: str, *args: Any) -> None:
        self.wait_ready()
        self._conn.send((method, args))

    def recv(self) -> Any:
        return self._answer()

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before it started)."""
        pid: int | None = self._proc.pid
        return pid

    @staticmethod
    def ready(actors: Sequence[ProcessActor]) -> list[int]:
        """Indices of ``actors`` with an answer waiting, blocking until there is at least one."""
        conns = [a._conn for a in actors]
        came = set(wait(conns))  # a dead worker's pipe reads as ready too: recv then names it
        return [i for i, c in enumerate(conns) if c in came]

    def call(self, method: str, *args: Any) -> Any:
        self.send(method, *args)
        return self.recv()

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(None)
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()
