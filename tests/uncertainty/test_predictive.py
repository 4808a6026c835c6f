"""Probit approximation against Gauss-Hermite quadrature and Monte Carlo."""

import numpy as np
import pytest
import torch

from lucidml.uncertainty.predictive import ProbabilisticLogits, probit_sigmoid, probit_softmax

pytestmark = pytest.mark.usefixtures("float64")


def test_binary_probit_is_within_002_of_quadrature():
    nodes, weights = np.polynomial.hermite.hermgauss(120)
    mu = torch.linspace(-8, 8, 41)[:, None]
    var = torch.linspace(0.01, 16, 40)[None, :]
    z = mu.numpy()[..., None] + np.sqrt(2 * var.numpy())[..., None] * nodes
    exact = (weights / np.sqrt(np.pi) * (1 / (1 + np.exp(-z)))).sum(-1)
    approx = probit_sigmoid(mu.expand(-1, 40), var.expand(41, -1)).numpy()
    assert np.abs(approx - exact).max() < 0.02


def test_probit_softmax_matches_monte_carlo_at_small_variance():
    g = torch.Generator().manual_seed(0)
    mean = 3 * torch.randn(20, 10, generator=g)
    var = 0.1 * torch.rand(20, 10, generator=g)
    draws = mean + var.sqrt() * torch.randn(100_000, 20, 10, generator=g, dtype=torch.float32)
    mc = torch.softmax(draws, -1).mean(0)
    assert (probit_softmax(mean, var) - mc).abs().max() < 0.03


def test_mc_predictive_agrees_with_probit_and_keeps_the_argmax():
    g = torch.Generator().manual_seed(1)
    logits = ProbabilisticLogits(
        4 * torch.randn(50, 10, generator=g), 0.05 * torch.rand(50, 10, generator=g)
    )
    probit, mc = logits.probs("probit"), logits.probs("mc", n_samples=4000)
    assert (probit - mc).abs().max() < 0.03
    assert torch.equal(probit.argmax(1), logits.mean.argmax(1))


def test_equal_variance_keeps_the_argmax_and_softens():
    g = torch.Generator().manual_seed(2)
    mean = 5 * torch.randn(100, 7, generator=g)
    var = torch.full_like(mean, 9.0)
    p = probit_softmax(mean, var)
    assert torch.equal(p.argmax(1), mean.argmax(1))
    assert (p.max(1).values <= torch.softmax(mean, 1).max(1).values + 1e-12).all()


def test_zero_variance_is_the_plain_softmax():
    mean = torch.randn(4, 3)
    torch.testing.assert_close(probit_softmax(mean, torch.zeros_like(mean)), torch.softmax(mean, 1))


def test_sigmoid_probs_shrink_towards_one_half():
    logits = ProbabilisticLogits(torch.tensor([[-3.0, 0.0, 3.0]]), torch.tensor([[4.0] * 3]))
    torch.testing.assert_close(
        ProbabilisticLogits(logits.mean, torch.zeros(1, 3)).sigmoid_probs(),
        torch.sigmoid(logits.mean),
    )
    p = logits.sigmoid_probs()[0]
    assert p[1] == 0.5 and 0.5 < p[2] < torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(p[0] + p[2], torch.tensor(1.0))
