"""Paired statistics: the evidence format every comparison in Esper uses.

Two policies are compared on the same seeds; the unit of evidence is the
per-seed difference. :func:`paired_difference` turns two aligned lists into
the mean difference, its standard error and a 95% t-interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

__all__ = ["PairedDifference", "mean_se", "paired_difference", "t_critical"]

# Two-sided 95% critical values of Student's t by degrees of freedom; past 30
# the normal value is within 4%, and the table keeps scipy out of the kernel.
_T95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042,
}  # fmt: skip


def t_critical(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.inf
    return _T95.get(df, 1.96 + 2.4 / df)


@attrs.frozen
class PairedDifference:
    """Mean of ``a - b`` over paired seeds, with its standard error and 95% CI."""

    mean: float
    se: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The 95% interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {"mean": self.mean, "se": self.se, "ci95": [self.lo, self.hi], "n": self.n}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """``a - b`` seed by seed: mean, standard error and 95% t-interval.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    if len(a) != len(b):
        raise ValueError(f"paired lists differ in length: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, se = mean_se(diffs)
    half = t_critical(len(diffs) - 1) * se if len(diffs) > 1 else math.inf
    return PairedDifference(mean, se, mean - half, mean + half, len(diffs))
