"""Acquisition functions against naive loops and hand-computed values."""

import math

import pytest
import torch

from lucidml.core import metrics
from lucidml.uncertainty.acquisition import bald, entropy, epig, nearest_unused, w2_diag_sq

pytestmark = pytest.mark.usefixtures("float64")


def _probs(s, n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(s, n, c, generator=g), -1)


def _epig_naive(pool, targets):
    S, Np, C = pool.shape
    out = torch.zeros(Np)
    for i in range(Np):
        total = 0.0
        for t in range(targets.shape[1]):
            joint = torch.zeros(C, C)
            for s in range(S):
                joint += torch.outer(pool[s, i], targets[s, t]) / S
            h_joint = -(joint * joint.log()).sum()
            pm, tm = pool[:, i].mean(0), targets[:, t].mean(0)
            total += -(pm * pm.log()).sum() - (tm * tm.log()).sum() - h_joint
        out[i] = total / targets.shape[1]
    return out


def test_epig_vectorised_equals_naive_loops():
    pool, targets = _probs(6, 5, 3, 0), _probs(6, 4, 3, 1)
    torch.testing.assert_close(
        epig(pool, targets, chunk=2), _epig_naive(pool, targets), rtol=0, atol=1e-10
    )


def test_epig_and_bald_are_nonnegative_and_zero_when_samples_agree():
    pool, targets = _probs(30, 20, 4, 2), _probs(30, 15, 4, 3)
    assert epig(pool, targets).min() >= -1e-9
    assert bald(pool).min() >= -1e-9
    same_pool = _probs(1, 20, 4, 4).expand(30, -1, -1)
    same_targets = _probs(1, 15, 4, 5).expand(30, -1, -1)
    assert epig(same_pool, same_targets).abs().max() < 1e-12
    assert bald(same_pool).abs().max() < 1e-12


def test_bald_of_two_confident_disagreeing_samples_is_log_two():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(bald(probs)[0]) == pytest.approx(math.log(2))
    assert float(entropy(torch.tensor([0.25] * 4))) == pytest.approx(math.log(4))


def test_w2_diagonal_distance():
    mu, var = torch.randn(3, 5), torch.rand(3, 5)
    assert w2_diag_sq(mu, var, mu, var).diagonal().abs().max() < 1e-12
    m1, s1, m2, s2 = 0.3, 0.5, -1.2, 2.0
    d = w2_diag_sq(
        torch.tensor([[m1]]), torch.tensor([[s1**2]]), torch.tensor([[m2]]), torch.tensor([[s2**2]])
    )
    assert float(d) == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2)


def test_nearest_unused_gives_duplicates_the_next_neighbour():
    # targets 0 and 1 both sit next to pool item 2; the second takes its runner-up, item 0
    dist = torch.tensor([[5.0, 9.0, 1.0, 7.0], [3.0, 8.0, 0.5, 6.0], [4.0, 0.1, 9.0, 9.0]])
    picks = nearest_unused(dist, torch.tensor([0, 1, 2]), k=3)
    assert picks.tolist() == [2, 0, 1]


def test_ece_on_calibrated_and_overconfident_logits():
    # core metrics with the 20 bins: labels drawn from the softmax are calibrated
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(100_000, 10, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    assert metrics.ece(torch.softmax(logits, 1), labels, 20) < 0.01
    assert 0.17 < metrics.ece(torch.softmax(logits / 0.5, 1), labels, 20) < 0.25
    uniform = torch.full((100, 10), 0.1)
    assert metrics.nll(uniform, labels[:100]) == pytest.approx(math.log(10))
