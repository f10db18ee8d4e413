"""Side-by-side timing: interleaved repeats, medians, and the row every figure prints.

The machine is shared, so absolute times drift with other people's jobs. Each
figure therefore times its candidate and its baseline in the same run, in
alternating order within every repeat, and compares medians: a burst of
load then hits both sides instead of biasing one.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping

import attrs


@attrs.frozen
class Settings:
    """How hard to measure. ``quick`` is a smoke pass: it checks the code runs, its numbers mean little."""

    quick: bool = False
    repeats: int = 9
    #: Seconds each timed sample should last; short samples are dominated by timer and scheduler noise.
    sample_s: float = 0.05

    def heavier(self, repeats: int, sample_s: float) -> Settings:
        """More and longer samples, for figures whose target is a few percent (quick mode keeps its own)."""
        if self.quick:
            return self
        return attrs.evolve(self, repeats=max(self.repeats, repeats), sample_s=max(self.sample_s, sample_s))

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None) -> Settings:
        if quick:
            return cls(quick=True, repeats=repeats or 3, sample_s=0.005)
        return cls(quick=False, repeats=repeats or 9, sample_s=0.05)


@attrs.frozen
class Row:
    """One printed figure: a candidate measured against a baseline, and whether the target holds."""

    key: str
    figure: str
    measured: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None
    notes: tuple[str, ...] = ()
    #: How to print the ratio when "1.234x" would mislead (a fraction of an epoch reads as a percentage).
    ratio_text: str | None = None

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "REPORT"
        return "PASS" if self.passed else "MISS"


def calibrate(fn: Callable[[], object], sample_s: float, max_inner: int = 100_000) -> int:
    """How many calls make one sample last about ``sample_s`` (after one warm-up call)."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= sample_s / 4 or n >= max_inner:
            break
        n *= 4
    per_call = dt / n
    return max(1, min(max_inner, round(sample_s / max(per_call, 1e-9))))


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    settings: Settings,
    inner: int | Mapping[str, int] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every function, one sample per repeat, sides alternating in order.

    Each side gets its own inner-loop count (calibrated unless given) so a
    fast and a slow function both get samples long enough to time.
    """
    names = list(fns)
    if inner is None:
        counts = {k: calibrate(fns[k], settings.sample_s) for k in names}
    elif isinstance(inner, int):
        counts = dict.fromkeys(names, inner)
    else:
        counts = dict(inner)
    out: dict[str, list[float]] = {k: [] for k in names}
    # A collection landing inside one side's sample would be charged to that side alone.
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(settings.repeats):
            order = names if r % 2 == 0 else names[::-1]
            for k in order:
                fn, n = fns[k], counts[k]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                out[k].append((time.perf_counter() - t0) / n)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio_of(samples: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median of the per-repeat ratios: each repeat's pair ran back to back, under the same load."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"
