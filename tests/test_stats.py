"""langmim.stats: Student-t intervals over seeds and paired verdicts, against by-hand numbers."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from langmim.errors import LangmimError
from langmim.stats import mean_interval, paired_verdict

T_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446}  # Student-t 97.5% quantiles from a printed table, by degrees of freedom


def test_mean_interval_is_the_student_t_interval():
    values = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, sample variance 5/3
    interval = mean_interval(values)
    assert interval.mean == 2.5 and interval.n == 4
    assert interval.half_width == pytest.approx(T_975[3] * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert (interval.low, interval.high) == pytest.approx((2.5 - interval.half_width, 2.5 + interval.half_width))
    pair = mean_interval([10.0, 12.0])  # std sqrt(2), n = 2: the half-width is the t quantile itself
    assert pair.half_width == pytest.approx(T_975[1], rel=1e-6)
    assert mean_interval(values, confidence=0.5).half_width < interval.half_width


def test_one_value_has_no_width_and_none_is_an_error():
    single = mean_interval([80.5])
    assert single.mean == 80.5 and single.n == 1 and math.isnan(single.half_width)
    with pytest.raises(LangmimError, match="at least one value"):
        mean_interval([])
    with pytest.raises(LangmimError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(LangmimError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=95)


def test_identical_seeds_are_level_with_zero_difference():
    scores = [80.12, 81.3, 79.87]
    verdict = paired_verdict(scores, list(scores))
    assert verdict.verdict == "level" and verdict.p_value == 1.0
    assert verdict.difference.mean == 0.0 and verdict.difference.half_width == 0.0


@pytest.mark.parametrize("shift, expected", [(2.0, "ahead"), (-2.0, "behind")])
def test_a_constant_shift_is_a_certain_ordering(shift, expected):
    b = [80.0, 81.5, 79.25]  # exact in binary: the differences are exactly constant, with no spread
    verdict = paired_verdict([x + shift for x in b], b)
    assert verdict.verdict == expected and verdict.p_value == 0.0
    assert verdict.difference.mean == shift and verdict.difference.half_width == 0.0


@pytest.mark.parametrize("sign, expected", [(1, "ahead"), (-1, "behind")])
def test_a_shift_larger_than_the_noise_is_ahead_or_behind(sign, expected):
    from scipy.stats import ttest_rel

    b = [80.1, 83.4, 78.9, 81.7]  # seed-to-seed spread of several points, shared by both methods
    a = [x + sign * d for x, d in zip(b, (1.0, 1.3, 0.8, 1.1))]
    verdict = paired_verdict(a, b)
    differences = [sign * d for d in (1.0, 1.3, 0.8, 1.1)]
    sd = math.sqrt(sum((d - sign * 1.05) ** 2 for d in differences) / 3)
    assert verdict.verdict == expected
    assert verdict.difference.mean == pytest.approx(sign * 1.05)
    assert verdict.difference.half_width == pytest.approx(T_975[3] * sd / 2, rel=1e-6)
    assert verdict.p_value == pytest.approx(ttest_rel(a, b).pvalue) and verdict.p_value < 0.05
    assert mean_interval(a).low < mean_interval(b).high  # unpaired, the two intervals overlap: pairing is what tells


def test_a_shift_within_the_noise_is_level():
    b = [80.0, 81.0, 82.0]
    verdict = paired_verdict([81.0, 80.5, 82.8], b)  # differences 1.0, -0.5, 0.8
    assert verdict.verdict == "level"
    assert verdict.difference.low < 0 < verdict.difference.high and verdict.p_value > 0.05


def test_under_two_pairs_cannot_tell_and_unpaired_lengths_are_refused():
    verdict = paired_verdict([85.0], [80.0])
    assert verdict.verdict == "cannot tell" and verdict.difference.mean == 5.0 and math.isnan(verdict.p_value)
    with pytest.raises(LangmimError, match="2 values of a and 3 of b"):
        paired_verdict([1.0, 2.0], [1.0, 2.0, 3.0])


def test_stats_imports_neither_torch_nor_numpy_nor_scipy():
    code = "import sys, langmim.stats; print(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
