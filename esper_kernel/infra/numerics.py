"""What a run's numbers depend on beyond its config and seed: torch's build and the CPU kernels it picked.

The same config and seed on the same kind of machine give the same numbers, bit for bit, whatever the
worker count or hash seed (``tests/test_multitask.py``). On another CPU torch may pick other vector
kernels (AVX2 against AVX-512, or oneDNN's own choice per CPU), whose sums round differently: an
episode then ends a few validation samples apart, and a policy trained there drifts further.
Every record of a run carries :func:`numerics`, so a difference of that kind is told from a bug.

Not in it, though they change floats too: the intra-op thread count (the run's own ``--threads``,
one by default), a CUDA device's model, and the machines of Ray workers on other nodes.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from collections.abc import Mapping
from pathlib import Path

__all__ = ["KEYS", "describe", "differs", "kind", "numerics", "recorded"]

#: The entries that decide the numbers: oneDNN picks kernels by the CPU's feature flags, not its name.
KEYS = ("torch", "cpu_kernels", "cpu", "cpu_flags")


def _cpu() -> tuple[str, str]:
    """The CPU's model name and a short digest of its feature flags (from ``/proc/cpuinfo`` on Linux)."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12] if flags else "unknown"
    return model or platform.processor() or platform.machine() or "unknown", digest


@functools.cache
def _here() -> tuple[tuple[str, str], ...]:
    import torch  # here, not at import: `esper compare` reads records without loading torch

    model, flags = _cpu()
    return (
        ("torch", torch.__version__),
        ("cpu_kernels", torch.backends.cpu.get_cpu_capability()),
        ("cpu", model),
        ("cpu_flags", flags),
    )


def numerics() -> dict[str, str]:
    """This process's torch version, ATen CPU kernel level (``ATEN_CPU_CAPABILITY``), CPU model and flags."""
    return dict(_here())  # a fresh dict: records that hold it may be changed without changing the others


def recorded(record: Mapping[str, object]) -> dict[str, str] | None:
    """The ``numerics`` a summary or document holds (None: written before it was kept, or not a mapping)."""
    found = record.get("numerics")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else None


def kind(recorded: Mapping[str, object]) -> tuple[str, ...]:
    """The entries of ``recorded`` that decide the numbers, to tell two kinds of machine apart."""
    return tuple(str(recorded.get(k)) for k in KEYS)


def differs(recorded: Mapping[str, object] | None) -> bool:
    """Whether numbers recorded with ``recorded`` may differ from this process's at the float level
    (False where nothing was recorded: files written before it was).

    Only the entries ``recorded`` holds are compared: a file written before an entry was kept (the CPU
    flags came after the rest) says nothing of it, so it is not taken for another machine on that account.
    """
    if not recorded:
        return False
    here = numerics()
    return any(str(recorded[k]) != here[k] for k in KEYS if k in recorded)


def describe(recorded: Mapping[str, object]) -> str:
    """``torch 2.13.0+cpu, AVX512 kernels, AMD EPYC (flags 0123456789ab)``: a record in one phrase."""
    flags = recorded.get("cpu_flags", "not recorded")
    return (
        f"torch {recorded.get('torch')}, {recorded.get('cpu_kernels')} kernels, {recorded.get('cpu')} (flags {flags})"
    )
