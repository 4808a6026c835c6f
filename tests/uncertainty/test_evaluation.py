"""Report statistics with known answers: bootstrap metrics, temperature scaling, seed
intervals."""

import math

import numpy as np
import pytest
import torch

from lucidml.core import metrics
from lucidml.uncertainty import evaluation as ev


def _probs_and_labels(n=300, c=10, seed=0):
    g = np.random.default_rng(seed)
    p = g.dirichlet(np.full(c, 0.3), size=n)
    y = np.array([g.choice(c, p=row) for row in p])
    return p, y


def test_vectorised_bootstrap_equals_the_metrics_on_each_resample():
    p, y = _probs_and_labels()
    idx = np.random.default_rng(1).integers(0, len(y), size=(5, len(y)))
    boots = ev.bootstrap_metrics(p, y, idx, ece_bins=20)
    for row, i in zip(boots, idx, strict=True):
        expected = ev.classification_metrics(p[i], y[i], 20)
        np.testing.assert_allclose(row, [expected[m] for m in ev.METRICS], rtol=1e-12)


def test_bootstrap_interval_of_accuracy_is_close_to_wilsons():
    g = np.random.default_rng(2)
    y = np.zeros(400, dtype=int)
    p = np.full((400, 2), 0.5)
    hit = g.random(400) < 0.7
    p[hit, 0], p[~hit, 1] = 0.9, 0.9  # correct where hit
    p[hit, 1], p[~hit, 0] = 0.1, 0.1
    out = ev.metrics_with_intervals(p, y)
    low, high = metrics.wilson_interval(int(hit.sum()), 400)
    assert out["n"] == 400 and out["acc"] == pytest.approx(hit.mean())
    assert out["ci95"]["acc"] == pytest.approx([low, high], abs=0.01)
    for m in ev.METRICS:
        assert out["ci95"][m][0] <= out[m] <= out["ci95"][m][1]


def test_temperature_scaling_recovers_a_planted_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(20_000, 10, generator=g, dtype=torch.float64)
    true_t = 2.0  # labels drawn from softmax(logits / 2): the fitted T must be about 2
    labels = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=g).squeeze(1)
    fitted = ev.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.03)
    # it is the minimiser of the NLL: a grid (0.5% steps) around it finds nothing lower
    grid = np.exp(np.linspace(math.log(1.5), math.log(2.7), 121))
    best = min(grid, key=lambda t: ev.temperature_nll(logits, labels, t))
    assert ev.temperature_nll(logits, labels, fitted) <= ev.temperature_nll(logits, labels, best)
    assert fitted == pytest.approx(best, rel=5e-3)


def test_mean_interval_is_the_student_t_interval():
    mean, low, high = ev.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * s / sqrt(n)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half), rel=1e-12)
    assert ev.mean_interval([0.4]) == (0.4, 0.4, 0.4)
