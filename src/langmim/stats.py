"""Statistics over seeds: the Student-t interval of a mean and a paired verdict between two methods.

A benchmark verdict ("RILS beats CLIP on k-NN") is only as good as its spread over seeds, so
these are what ``langmim report --seeds --compare`` prints. Plain Python; scipy's t distribution
is imported on first use, so the report starts fast."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import LangmimError

Verdict = Literal["ahead", "level", "behind", "cannot tell"]


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its two-sided Student-t interval at
    ``confidence``; the half-width is nan for one value (no spread to estimate from)."""

    mean: float
    half_width: float
    n: int
    confidence: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


@dataclass(frozen=True)
class PairedVerdict:
    """A against B over paired seeds: the interval of the mean difference A - B, the paired
    t-test's two-sided p-value (nan under two pairs) and the verdict it supports."""

    difference: Interval
    p_value: float
    verdict: Verdict


def check_values(values: Sequence[float], what: str) -> list[float]:
    """``values`` as floats, refusing none and non-finite ones (a nan metric would silently turn
    every interval into nan)."""
    floats = [float(v) for v in values]
    if not floats:
        raise LangmimError(f"{what} needs at least one value; got none")
    if not all(map(math.isfinite, floats)):
        raise LangmimError(f"{what} needs finite values; got {floats}")
    return floats


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise LangmimError(f"confidence must be between 0 and 1; got {confidence}")


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value: P(|T| <= q) = confidence with ``dof`` degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.5 + confidence / 2))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds and the half-width of its Student-t interval (sample std, n - 1 degrees of
    freedom). One value gives half-width nan; no values raise ``LangmimError``."""
    check_confidence(confidence)
    floats = check_values(values, "mean_interval")
    n = len(floats)
    half_width = math.nan if n == 1 else t_quantile(confidence, n - 1) * statistics.stdev(floats) / math.sqrt(n)
    return Interval(statistics.fmean(floats), half_width, n, confidence)


def paired_verdict(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedVerdict:
    """Paired t-test of A against B, where ``a[k]`` and ``b[k]`` share seed k (same data order
    and masks), so the seed's own luck cancels in the difference. "ahead"/"behind": the interval
    of the mean difference lies above/below 0; "level": it contains 0; "cannot tell": under two
    pairs. Differences without spread are exact: a nonzero constant is a certain ordering (p = 0),
    identical results are level (p = 1). Against a single run (a floor), pass it repeated: the
    test becomes the one-sample interval of a[k] - b, which ignores that run's own noise."""
    a_values, b_values = check_values(a, "paired_verdict's a"), check_values(b, "paired_verdict's b")
    if len(a_values) != len(b_values):
        raise LangmimError(f"paired_verdict pairs seeds one to one; got {len(a_values)} values of a and {len(b_values)} of b")
    differences = [x - y for x, y in zip(a_values, b_values)]
    difference = mean_interval(differences, confidence)
    if difference.n < 2:
        return PairedVerdict(difference, math.nan, "cannot tell")
    verdict: Verdict = "ahead" if difference.low > 0 else "behind" if difference.high < 0 else "level"
    return PairedVerdict(difference, two_sided_p(differences), verdict)


def two_sided_p(differences: list[float]) -> float:
    """The one-sample t-test's p-value for a mean of 0; exact (0 or 1) when the differences do not vary."""
    from scipy.special import stdtr

    spread = statistics.stdev(differences)
    if spread == 0.0:
        return 1.0 if differences[0] == 0.0 else 0.0
    t = statistics.fmean(differences) / (spread / math.sqrt(len(differences)))
    return float(2 * stdtr(len(differences) - 1, -abs(t)))
