"""The user's stop (Ctrl-C, SIGTERM) told apart from plugin code raising the same exception.

A plugin may ``raise KeyboardInterrupt`` (or ``Terminated``) itself, at import or in a
hook; treated as the user's stop, it would end the command with no line naming the
plugin. The signal handlers here count the signals that really arrived, so a catch
site reads :func:`stops` before calling plugin code and asks :func:`user_stopped`
afterwards. Where SIGINT is ignored (a background job), no KeyboardInterrupt can be
the user's; where another handler than Esper's is installed (a library caller with its
own), every KeyboardInterrupt is taken as the user's.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from esper_kernel.infra.errors import Terminated

__all__ = ["count_sigints", "counting_sigint", "raise_terminated", "stops", "user_stopped"]

_count = {"SIGINT": 0, "SIGTERM": 0}


def counting_sigint(signum: int, frame: FrameType | None) -> None:
    """The SIGINT handler: Python's own (KeyboardInterrupt where the process is), counted."""
    _count["SIGINT"] += 1
    signal.default_int_handler(signum, frame)


def raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    """The SIGTERM handler: the signal becomes :class:`Terminated` where the process is."""
    _count["SIGTERM"] += 1
    raise Terminated("SIGTERM")


def count_sigints() -> None:
    """Count Ctrl-Cs from now on (main thread, Python's own handler still in place), raising as before."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, counting_sigint)


def stops() -> int:
    """How many stop signals have arrived so far: read it before calling plugin code."""
    return _count["SIGINT"] + _count["SIGTERM"]


def user_stopped(exc: BaseException, before: int) -> bool:
    """Whether ``exc`` is a stop signal that arrived since ``before`` (and not plugin code raising it)."""
    if isinstance(exc, Terminated):
        return stops() != before
    if isinstance(exc, KeyboardInterrupt):
        handler = signal.getsignal(signal.SIGINT)
        if handler == signal.SIG_IGN:
            return False  # SIGINT is ignored (a background job, nohup): no Ctrl-C can have raised this
        return handler is not counting_sigint or stops() != before
    return False
