"""What a run's numbers depend on beyond its config and seed: torch's build and the CPU kernels it picked.

The same config and seed on the same kind of machine give the same numbers, bit for bit, whatever the
worker count or hash seed (``tests/test_multitask.py``). On another CPU torch may pick other vector
kernels (AVX2 against AVX-512, or oneDNN's own choice per CPU model), whose sums round differently:
an episode then ends a few validation samples apart, and a policy trained there drifts further.
Every record of a run carries :func:`numerics`, so a difference of that kind is told from a bug.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["describe", "differs", "numerics"]

#: The entries that decide the numbers; ``cpu`` is there because oneDNN picks kernels per CPU model.
KEYS = ("torch", "cpu_kernels", "cpu")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def numerics() -> dict[str, str]:
    """This process's torch version, ATen CPU kernel level (``ATEN_CPU_CAPABILITY``) and CPU model."""
    return {
        "torch": torch.__version__,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "cpu": _cpu_model(),
    }


def differs(recorded: Mapping[str, object] | None) -> bool:
    """Whether numbers recorded with ``recorded`` may differ from this process's at the float level
    (False where nothing was recorded: files written before it was)."""
    if not recorded:
        return False
    here = numerics()
    return any(recorded.get(k) != here[k] for k in KEYS)


def describe(recorded: Mapping[str, object]) -> str:
    """``torch 2.13.0, AVX512 kernels, AMD EPYC``: a record in one phrase."""
    return f"torch {recorded.get('torch')}, {recorded.get('cpu_kernels')} kernels, {recorded.get('cpu')}"
