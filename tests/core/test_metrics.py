import math

import numpy as np
import pytest
import torch

from lucidml.core import metrics
from lucidml.errors import ShapeError

P = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
Y = np.array([0, 1, 1, 1])


def test_accuracy_and_nll_by_hand():
    assert metrics.accuracy(P, Y) == 0.75
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4
    assert metrics.nll(P, Y) == pytest.approx(expected)


def test_brier_by_hand():
    # (0.1^2 + 0.1^2) + (0.6^2 + 0.6^2) + (0.3^2 + 0.3^2) + (0.2^2 + 0.2^2), over 4
    assert metrics.brier(P, Y) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)


def test_ece_by_hand():
    # two bins: (0, .5] empty; (.5, 1]: confidences .9 .6 .7 .8 (mean .75), 3 of 4 correct
    assert metrics.ece(P, Y, n_bins=2) == pytest.approx(0.0)
    # ten bins: .9 correct, .6 wrong, .7 correct, .8 correct -> each bin alone
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert metrics.ece(P, Y, n_bins=10) == pytest.approx(expected)


def test_ece_perfectly_calibrated_is_zero_and_accepts_torch():
    probs = torch.tensor([[0.5, 0.5]] * 4)
    labels = torch.tensor([0, 1, 0, 1])
    assert metrics.ece(probs, labels) == pytest.approx(0.0)


def test_auroc_by_hand_with_ties():
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert metrics.auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert metrics.auroc([3, 2, 1], [0, 1, 1]) == 0.0
    assert metrics.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5


def test_wilson_interval_known_values():
    low, high = metrics.wilson_interval(8, 10)
    # textbook value for 8/10 at 95%: (0.4902, 0.9433)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 10)[0] == 0.0


def test_wilson_intervals_match_the_scalar_form_and_mark_empty_counts():
    k, n = np.array([5, 0, 80, 8, 0]), np.array([10, 10, 100, 10, 0])
    low, high = metrics.wilson_intervals(k, n)
    for i in range(4):
        expected = metrics.wilson_interval(int(k[i]), int(n[i]))
        assert (low[i], high[i]) == pytest.approx(expected, abs=1e-3)  # z 1.96 vs 1.95996
    assert low[1] == 0.0 and np.isnan(low[4]) and np.isnan(high[4])


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    v = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    lo, hi = metrics.bootstrap_ci(v)
    assert lo < v.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)
    assert metrics.bootstrap_ci(v, seed=3) == metrics.bootstrap_ci(v, seed=3)


def test_harmonic_mean_and_mean_std():
    assert metrics.harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean(0, 0) == 0
    assert metrics.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert metrics.mean_std([5.0]) == (5.0, 0.0)


def test_shape_errors_are_user_errors():
    with pytest.raises(ShapeError):
        metrics.accuracy(P, Y[:3])


def test_t_interval_by_hand():
    from lucidml.core.metrics import t_interval

    low, high = t_interval([0.8, 0.9, 1.0])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2 dof) * sd / sqrt(n)
    assert (low, high) == pytest.approx((0.9 - half, 0.9 + half), abs=1e-6)
    assert t_interval([0.5]) is None
