"""Keep the memory a process frees, so the next epoch's tensors do not page-fault it back in.

glibc's malloc hands a freed block back to the kernel once it sits at the top
of the heap past the trim threshold, or when it was big enough to get its own
mapping; the next allocation of that size then faults every page in again.
An epoch allocates and frees the same activation tensors batch after batch,
so a default run spent 0.1-0.8 CPU s of kernel time per 5 s episode in page
faults (200,000-330,000 minor faults; ``bench/RESULTS.md``, sixth pass), and
which episode paid it was luck. With the thresholds fixed, freed blocks stay
in the heap for reuse: faults drop to a few hundred and the kernel time to
zero. The process keeps its peak memory instead of shrinking after it, which
a run that comes back to that peak every batch never did anyway.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "OPT_OUT", "TRIM_THRESHOLD", "keep_freed_memory"]

#: glibc's ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to 32 MiB (glibc's largest allowed threshold on 64-bit) come from the heap, not their own mapping.
MMAP_THRESHOLD = 32 << 20
#: The heap gives memory back only once 256 MiB lie free at its top.
TRIM_THRESHOLD = 256 << 20
#: Set to ``0`` to leave the allocator alone. glibc's own ``MALLOC_*_THRESHOLD_`` variables also win.
OPT_OUT = "ESPER_KEEP_FREED_MEMORY"
_USER_SET = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds for this process; whether they were set.

    Nothing happens off Linux, on a C library without ``mallopt``, when
    ``ESPER_KEEP_FREED_MEMORY=0``, or when the user tuned glibc themselves.
    """
    if sys.platform != "linux" or os.environ.get(OPT_OUT) == "0" or any(v in os.environ for v in _USER_SET):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both must hold, or a half-set allocator would trim what it keeps.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
