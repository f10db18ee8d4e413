"""The shared process pool: order, in-process path, errors naming the job, thread counts."""

from __future__ import annotations

import os

import pytest

from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.stops import counting_sigint
from esper_kernel.infra.workers import START_ENV, ProcessActor, WorkerError, fork_is_safe, map_jobs, resolve_threads


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is\nnot allowed ({x})")
    return x


def torch_threads(_x: int) -> int:
    import torch

    return int(torch.get_num_threads())


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def add(self, k: int) -> int:
        self.value += k
        return self.value

    def boom(self) -> None:
        raise RuntimeError("boom")


def test_map_jobs_in_processes_keeps_order_and_uses_other_processes() -> None:
    out = map_jobs(square_and_pid, list(range(6)), workers=2)
    assert [v for v, _ in out] == [0, 1, 4, 9, 16, 25]
    assert all(pid != os.getpid() for _, pid in out)


def test_map_jobs_with_one_worker_runs_in_this_process() -> None:
    out = map_jobs(square_and_pid, [2, 3], workers=1)
    assert out == [(4, os.getpid()), (9, os.getpid())]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_is_one_line_naming_the_job(workers: int) -> None:
    with pytest.raises(WorkerError) as info:
        map_jobs(fail_on_three, [1, 2, 3, 4], workers=workers, names=["a", "b", "c", "d"])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("job c failed: ValueError: three is not allowed (3)")


def test_workers_run_the_thread_count_asked_for() -> None:
    assert map_jobs(torch_threads, [0, 1], workers=2, threads=1) == [1, 1]
    assert map_jobs(torch_threads, [0, 1], workers=2, threads=2) == [2, 2]


def test_bad_worker_count_is_an_error() -> None:
    with pytest.raises(EsperError, match="workers must be at least 1"):
        map_jobs(square_and_pid, [1], workers=0)


def test_resolve_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == 1  # the shared-machine default
    assert resolve_threads(3) == 3
    assert resolve_threads(0) is None  # torch's own choice
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(None) == 2
    assert resolve_threads(4) == 4  # the flag wins
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(EsperError, match="OMP_NUM_THREADS='many'"):
        resolve_threads(None)


def test_process_actor_keeps_state_and_reports_errors() -> None:
    actor = ProcessActor(Counter, 10, name="counter")
    try:
        assert actor.call("add", 1) == 11
        actor.send("add", 5)
        assert actor.recv() == 16
        with pytest.raises(WorkerError, match=r"^counter failed: RuntimeError: boom$"):
            actor.call("boom")
        assert actor.call("add", 0) == 16
    finally:
        actor.close()


def test_process_actor_factory_failure_is_reported() -> None:
    actor = ProcessActor(Counter, "x", name="bad")  # __init__ works; add then fails on str + int
    try:
        with pytest.raises(WorkerError, match="bad failed: TypeError"):
            actor.call("add", 1)
    finally:
        actor.close()


def test_the_fork_server_preload_imports_what_workers_need() -> None:
    # multiprocessing's fork server skips a preload module that fails to import, silently: check it here.
    import subprocess
    import sys

    from esper_kernel.infra import workers

    code = (
        f"import sys; [__import__(m) for m in {workers._PRELOAD!r}]; "
        "print(all(m in sys.modules for m in "
        "('torch._dynamo', 'esper_kernel.episode.env', 'esper_levers_builtin.tempo')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


class Signals:
    def handlers(self) -> tuple[object, object]:
        import signal

        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_a_worker_forked_from_the_command_takes_the_default_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command's SIGTERM handler writes its run's final event; a worker that ran it would write one too.
    import signal

    from esper_kernel.infra import workers

    # Other tests may leave a thread behind (Ray, TensorBoard), which rules the fork out: force it here.
    monkeypatch.setattr(workers, "fork_is_safe", lambda: True)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        actor = ProcessActor(Signals)
        try:
            term, intr = actor.call("handlers")
        finally:
            actor.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert term == signal.SIG_DFL
    # Python's own KeyboardInterrupt, counted, so a plugin raising one in the worker is still told from Ctrl-C.
    assert intr is counting_sigint


def test_workers_are_not_forked_from_a_command_with_other_threads_or_when_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    monkeypatch.delenv(START_ENV, raising=False)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not fork_is_safe()  # a thread may hold a lock the child would need
    finally:
        stop.set()
        other.join()
    if threading.active_count() == 1:  # other tests may have left threads of their own
        assert fork_is_safe()
    monkeypatch.setenv(START_ENV, "forkserver")
    assert not fork_is_safe()
    assert map_jobs(square_and_pid, [1, 2, 3], workers=2)[0][0] == 1  # and the fork server still serves
