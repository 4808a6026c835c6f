"""Cosine moments against Monte Carlo draws of two independent Gaussians (diagonal or full)."""

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


def _correlated_pair(cos: float, seed: int = 0):
    """Full covariances in random eigenbases whose eigenvalues span three decades, with
    both means in the span of the weakest directions, as on digits-clip (the means sit
    where the posterior is most certain): the diagonal of each covariance then
    misplaces most of the noise."""
    g = torch.Generator().manual_seed(seed)
    Vg = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    Vh = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    w_g = 1e-3 * torch.logspace(-3, 0, D)  # ascending: the first columns are the weakest
    w_h = 1e-3 * torch.logspace(-3, 0, D)
    weak = torch.linalg.qr(torch.cat([Vg[:, :8], Vh[:, :8]], 1))[0]
    e1, e2 = weak[:, 0], weak[:, 1]
    mu_g, mu_h = e1, cos * e1 + math.sqrt(1 - cos**2) * e2
    return mu_g, w_g, Vg, mu_h, w_h, Vh


def test_full_covariance_moments_match_monte_carlo_where_the_diagonal_overshoots():
    mu_g, w_g, Vg, mu_h, w_h, Vh = _correlated_pair(0.5)
    g = torch.Generator().manual_seed(1)
    coss = []
    for _ in range(DRAWS // 10_000):
        x = mu_g + (w_g.sqrt() * torch.randn(10_000, D, generator=g)) @ Vg.T
        y = mu_h + (w_h.sqrt() * torch.randn(10_000, D, generator=g)) @ Vh.T
        coss.append(F.cosine_similarity(x, y, dim=1))
    mc = torch.cat(coss)
    args = (mu_g[None], w_g[None], mu_h[None], w_h[None])
    m, proj = cosine_moments(*args, "projected", img_basis=Vg, txt_basis=Vh)
    _, ref = cosine_moments(*args, "reference", img_basis=Vg, txt_basis=Vh)
    assert float(m) == pytest.approx(float(mc.mean()), rel=1e-2)
    assert float(proj) == pytest.approx(float(mc.var()), rel=0.05)
    # reference's radial excess, about 1 + cos^2 / (1 - cos^2) = 1.33 at cos 0.5
    assert 1.2 < float(ref) / float(mc.var()) < 1.5
    # what the reference computes: each covariance's diagonal alone, 1.95x too wide here
    diag_g = ((Vg**2) @ w_g)[None]
    diag_h = ((Vh**2) @ w_h)[None]
    _, diag = cosine_moments(mu_g[None], diag_g, mu_h[None], diag_h, "projected")
    assert float(diag) / float(mc.var()) > 1.5


def test_the_standard_basis_is_the_diagonal_path():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
    va, vb = torch.rand(5, 8, generator=g), torch.rand(3, 8, generator=g)
    eye = torch.eye(8)
    for variance in ("reference", "projected"):
        expected = cosine_moments(a, va, b, vb, variance)
        for bases in ((eye, eye), (eye, None), (None, eye)):
            got = cosine_moments(a, va, b, vb, variance, *bases)
            torch.testing.assert_close(got, expected)
