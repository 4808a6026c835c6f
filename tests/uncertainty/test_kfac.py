"""Kronecker algebra: log-determinants, marginal likelihood, variances and samples."""

import math

import pytest
import torch

from lucidml.uncertainty import kfac

pytestmark = pytest.mark.usefixtures("float64")


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n + 2, generator=g)
    return m @ m.T / n


def _dense_covariance(A, B, n, lam, damping, scale=None):
    """The posterior covariance built densely; ``split`` takes the factor split s by a
    brute-force grid search on the dense log-determinant (independent of split_scale)."""
    p, q = A.shape[0], B.shape[0]
    if damping == "split" and scale is None:
        grid = torch.linspace(-6, 6, 24001).exp()
        dets = [-torch.logdet(_dense_covariance(A, B, n, lam, "split", float(c))) for c in grid]
        scale = float(grid[int(torch.stack(dets).argmin())])
    if damping in ("split", "split-reference"):
        s = 1.0 if scale is None else scale
        At = math.sqrt(n) * s * A + math.sqrt(lam) * torch.eye(p)
        Bt = math.sqrt(n) * B / s + math.sqrt(lam) * torch.eye(q)
        return torch.linalg.inv(torch.kron(At, Bt))
    return torch.linalg.inv(n * torch.kron(A, B) + lam * torch.eye(p * q))


def test_kron_logdet_matches_dense_for_non_square_sizes():
    A, B = _spd(3, 0), _spd(4, 1)
    torch.testing.assert_close(kfac.kron_logdet(A, B), torch.logdet(torch.kron(A, B)))


@pytest.mark.parametrize("damping", ["split-reference", "eig"])
def test_precision_logdet_matches_dense(damping):
    A, B, n, lam = _spd(3, 2), _spd(4, 3), 2.5, 0.7
    (alpha, _), (beta, _) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    dense = -torch.logdet(_dense_covariance(A, B, n, lam, damping))
    torch.testing.assert_close(kfac.precision_logdet(alpha, beta, n, lam, damping), dense)


def test_split_scale_minimises_the_dense_logdet():
    # A made 30x larger than B: the reference's split (s = 1) is far from the best one
    A, B, n, lam = _spd(3, 2) * 30, _spd(4, 3), 2.5, 0.7
    (alpha, _), (beta, _) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    best = -torch.logdet(_dense_covariance(A, B, n, lam, "split"))  # grid search
    ours = kfac.precision_logdet(alpha, beta, n, lam, "split")
    assert float(ours) == pytest.approx(float(best), abs=1e-6)
    reference = kfac.precision_logdet(alpha, beta, n, lam, "split-reference")
    assert float(reference) > float(ours) + 0.5  # a smaller marginal likelihood


@pytest.mark.parametrize("damping", ["split", "eig"])
@pytest.mark.parametrize("c", [1e-3, 0.37, 25.0])
def test_the_posterior_does_not_depend_on_how_the_factors_share_a_scalar(damping, c):
    A, B, n, lam = _spd(3, 2), _spd(4, 3), 2.5, 0.7
    (alpha, _), (beta, _) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    base = kfac.covariance_eigenvalues(alpha, beta, n, lam, damping)
    moved = kfac.covariance_eigenvalues(alpha * c, beta / c, n, lam, damping)
    torch.testing.assert_close(moved, base, rtol=1e-8, atol=0)
    ref = kfac.covariance_eigenvalues(alpha, beta, n, lam, "split-reference")
    ref_moved = kfac.covariance_eigenvalues(alpha * c, beta / c, n, lam, "split-reference")
    assert not torch.allclose(ref, ref_moved, rtol=1e-3)  # the convention-dependent one
    theta2 = 5.0
    lam_base = kfac.optimize_prior_precision(alpha, beta, theta2, n=n, damping=damping)
    lam_moved = kfac.optimize_prior_precision(alpha * c, beta / c, theta2, n=n, damping=damping)
    assert lam_moved == pytest.approx(lam_base, rel=1e-6)


def test_compat_logdet_swaps_the_factor_sizes():
    A, B, n, lam = _spd(3, 2), _spd(4, 3), 1.0, 0.7
    (alpha, _), (beta, _) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    At, Bt = A + math.sqrt(lam) * torch.eye(3), B + math.sqrt(lam) * torch.eye(4)
    compat = kfac.precision_logdet(alpha, beta, n, lam, "split-reference", compat=True)
    torch.testing.assert_close(compat, 3 * torch.logdet(At) + 4 * torch.logdet(Bt))
    assert abs(compat - kfac.precision_logdet(alpha, beta, n, lam, "split-reference")) > 0.1


def test_brent_finds_the_closed_form_prior_precision():
    p, q, a, b, n, theta2 = 3, 4, 2.0, 0.5, 3.0, 5.0
    alpha, beta = torch.full((p,), a), torch.full((q,), b)
    c, P = n * a * b, p * q
    expected = (-c + math.sqrt(c**2 + 4 * P * c / theta2)) / 2
    found = kfac.optimize_prior_precision(alpha, beta, theta2, n=n, damping="eig")
    assert found == pytest.approx(expected, rel=1e-6)
    adam = kfac.optimize_prior_precision(
        alpha, beta, theta2, n=n, damping="eig", solver="adam", init=expected * 1.2
    )
    assert adam == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("damping", ["split", "split-reference", "eig"])
def test_embedding_covariance_in_the_output_eigenbasis_is_the_dense_covariance(damping):
    p, q, n, lam = 3, 4, 10.0, 0.3
    A, B = _spd(p, 4), _spd(q, 5)
    (alpha, U), (beta, V) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    M = kfac.covariance_eigenvalues(alpha, beta, n, lam, damping)
    a = torch.randn(6, p)
    scale = kfac.split_scale(alpha, beta, n, lam) if damping == "split" else None
    cov = _dense_covariance(A, B, n, lam, damping, scale)
    jac = torch.stack([torch.kron(ai[None, :], torch.eye(q)) for ai in a])  # (N, q, pq)
    dense = torch.einsum("nip,pr,njr->nij", jac, cov, jac)  # (N, q, q), off-diagonals too
    torch.testing.assert_close(kfac.embedding_variance(a, U, V, M), dense.diagonal(dim1=1, dim2=2))
    w = kfac.embedding_spectrum(a, U, M)
    torch.testing.assert_close(V @ torch.diag_embed(w) @ V.T, dense)
    assert (dense - torch.diag_embed(dense.diagonal(dim1=1, dim2=2))).abs().max() > 1e-3


def test_matrix_normal_samples_reproduce_the_split_variance():
    # W = L_B Z L_A^T with Ã^-1 = L_A L_A^T, B~^-1 = L_B L_B^T: an independent sampler
    p, q, n, lam = 5, 4, 1.0, 0.5
    A, B = _spd(p, 6), _spd(q, 7)
    At = math.sqrt(n) * A + math.sqrt(lam) * torch.eye(p)
    Bt = math.sqrt(n) * B + math.sqrt(lam) * torch.eye(q)
    LA = torch.linalg.cholesky(torch.linalg.inv(At))
    LB = torch.linalg.cholesky(torch.linalg.inv(Bt))
    a = torch.randn(p)
    z = torch.randn(200_000, q, p)
    mc = ((LB @ z @ LA.T) @ a).var(0)
    (alpha, U), (beta, V) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    M = kfac.covariance_eigenvalues(alpha, beta, n, lam, "split-reference")
    analytic = kfac.embedding_variance(a[None], U, V, M)[0]
    assert ((mc - analytic).abs() / analytic).max() < 0.03
    # the closed form equals (a^T Ã^-1 a) [B~^-1]_dd
    torch.testing.assert_close(
        analytic, (a @ torch.linalg.solve(At, a)) * torch.linalg.inv(Bt).diagonal()
    )


@pytest.mark.parametrize("damping", ["split", "split-reference", "eig"])
def test_weight_samples_have_the_posterior_covariance(damping):
    p, q, n, lam = 3, 2, 4.0, 0.8
    A, B = _spd(p, 8), _spd(q, 9)
    (alpha, U), (beta, V) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    M = kfac.covariance_eigenvalues(alpha, beta, n, lam, damping)
    draws = kfac.sample_weight_noise(U, V, M, 200_000, torch.Generator().manual_seed(0))
    vec = draws.transpose(1, 2).reshape(len(draws), -1)  # column-major vec
    emp = vec.T @ vec / len(vec)
    scale = kfac.split_scale(alpha, beta, n, lam) if damping == "split" else None
    dense = _dense_covariance(A, B, n, lam, damping, scale)
    assert (emp - dense).abs().max() < 0.03 * dense.diagonal().max()


def test_off_subspace_inputs_get_larger_variance():
    # activations spanning 4 of 16 dims: A is blind to the other 12, so the prior rules there
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    train = torch.randn(500, 4, generator=g) @ basis[:, :4].T
    A = train.T @ train / math.sqrt(500)
    B = _spd(8, 10) * 20
    (alpha, U), (beta, V) = kfac.psd_eigh(A), kfac.psd_eigh(B)
    M = kfac.covariance_eigenvalues(alpha, beta, 10.0, 1.0, "split")
    inside = torch.randn(50, 4, generator=g) @ basis[:, :4].T
    outside = torch.randn(50, 12, generator=g) @ basis[:, 4:].T
    inside, outside = [x / x.norm(dim=1, keepdim=True) for x in (inside, outside)]
    v_in = kfac.embedding_variance(inside, U, V, M).sum(1)
    v_out = kfac.embedding_variance(outside, U, V, M).sum(1)
    assert v_out.min() > v_in.max()
