"""Cosine moments against Monte Carlo draws of two independent diagonal Gaussians."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from lucidml.uncertainty.probcos import cosine_moments, dot_moments

pytestmark = pytest.mark.usefixtures("float64")
D, DRAWS = 256, 100_000


def _pair(cos: float, scale: float, seed: int = 0):
    """Unit means at the given cosine, heterogeneous per-dimension variances ~ scale."""
    g = torch.Generator().manual_seed(seed)
    e1, e2 = torch.linalg.qr(torch.randn(D, 2, generator=g))[0].T
    mu_g, mu_h = e1, cos * e1 + math.sqrt(1 - cos**2) * e2
    var_g = scale * (0.5 + torch.rand(D, generator=g))
    var_h = scale * (0.5 + torch.rand(D, generator=g))
    return mu_g, var_g, mu_h, var_h


@functools.cache
def _monte_carlo(cos: float, scale: float):
    """Draws of g.h and cos(g, h) for ``_pair(cos, scale)``, cached across tests."""
    mu_g, var_g, mu_h, var_h = _pair(cos, scale)
    g = torch.Generator().manual_seed(1)
    dots, coss = [], []
    for _ in range(DRAWS // 10_000):
        x = mu_g + var_g.sqrt() * torch.randn(10_000, D, generator=g, dtype=torch.float32)
        y = mu_h + var_h.sqrt() * torch.randn(10_000, D, generator=g, dtype=torch.float32)
        dots.append((x * y).sum(1))
        coss.append(F.cosine_similarity(x, y, dim=1))
    return torch.cat(dots), torch.cat(coss)


def _moments(mu_g, var_g, mu_h, var_h, variance):
    m, v = cosine_moments(mu_g[None], var_g[None], mu_h[None], var_h[None], variance)
    return float(m), float(v)


def test_dot_product_moments_are_exact():
    mu_g, var_g, mu_h, var_h = _pair(0.6, 2e-3)
    dots, _ = _monte_carlo(0.6, 2e-3)
    mean, var = dot_moments(mu_g[None], var_g[None], mu_h[None], var_h[None])
    assert abs(dots.mean() - mean) < 4 * math.sqrt(float(var) / DRAWS)
    assert float(dots.var()) == pytest.approx(float(var), rel=1e-2)


def test_cosine_mean_within_one_percent():
    for cos in (0.3, 0.6):
        mu_g, var_g, mu_h, var_h = _pair(cos, 1e-4)
        _, coss = _monte_carlo(cos, 1e-4)
        m, _ = _moments(mu_g, var_g, mu_h, var_h, "reference")
        assert m == pytest.approx(float(coss.mean()), rel=1e-2)


def test_reference_variance_overshoots_and_projected_matches():
    # reference over-estimates by about 1 + cos^2/(1 - cos^2) = 1.5625 at cos 0.6
    mu_g, var_g, mu_h, var_h = _pair(0.6, 1e-4)
    _, coss = _monte_carlo(0.6, 1e-4)
    mc = float(coss.var())
    _, ref = _moments(mu_g, var_g, mu_h, var_h, "reference")
    _, proj = _moments(mu_g, var_g, mu_h, var_h, "projected")
    assert 1.4 < ref / mc < 1.7
    assert proj == pytest.approx(mc, rel=0.05)


def test_projected_variance_within_five_percent_up_to_cos_06():
    for cos in (0.0, 0.3, 0.6):
        mu_g, var_g, mu_h, var_h = _pair(cos, 1e-4)
        _, coss = _monte_carlo(cos, 1e-4)
        _, proj = _moments(mu_g, var_g, mu_h, var_h, "projected")
        assert proj == pytest.approx(float(coss.var()), rel=0.05)


def test_zero_variance_gives_the_exact_cosine_and_no_spread():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 8, generator=g), 3 * torch.randn(4, 8, generator=g)
    for variance in ("reference", "projected"):
        m, v = cosine_moments(a, torch.zeros_like(a), b, torch.zeros_like(b), variance)
        torch.testing.assert_close(m, F.normalize(a, dim=1) @ F.normalize(b, dim=1).T)
        assert v.abs().max() < 1e-15


def test_shapes_follow_the_contract():
    a, b = torch.randn(5, 8), torch.randn(3, 8)
    m, v = cosine_moments(a, a.abs(), b, b.abs())
    assert m.shape == v.shape == (5, 3)
