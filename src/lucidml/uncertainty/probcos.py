"""Analytic moments of the cosine similarity of two independent Gaussians.

g ~ N(mu_g, S_g) (an image embedding), h ~ N(mu_h, S_h) (a text embedding). Each
covariance is given by its eigenvalues ``var`` along the columns of an orthonormal
``basis`` (D, D), S = basis diag(var) basis^T; no basis means the standard one, i.e. a
diagonal covariance. A Kronecker posterior gives every embedding of a tower the same
eigenbasis (the output factor's), so the full covariance costs a few (D, D) matmuls.
With G = E||g||^2 = ||mu||^2 + tr S and mu~ = mu / sqrt(G), the mean is approximated by
m = mu~_g . mu~_h, and the variance by one of

- ``reference``: Var(g.h) / (G_g G_h), where Var(g.h) = mu_h^T S_g mu_h + mu_g^T S_h mu_g
  + tr(S_g S_h) is exact; this ignores that normalisation cancels radial noise, so it
  over-estimates by about cos^2 / (1 - cos^2) at small variance.
- ``projected``: the delta-method variance of the normalised product, which keeps only
  noise orthogonal to each mean, plus the second-order tr(S_g S_h) term.

The reference implementation treats the embedding dimensions as independent (the
diagonal of S only). Kronecker posteriors are strongly correlated across dimensions, and
on digits-clip that overshoots the logit variance of joint weight draws 4.6x (median);
with the full covariance the ratio is 0.95-0.99 (docs/uncertainty.md).
"""

from __future__ import annotations

import torch

from lucidml.errors import ConfigError

COSINE_VARIANCES = ("reference", "projected")


def dot_moments(mu_g, var_g, mu_h, var_h) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance of g.h for every pair: inputs (N, D), (N, D), (C, D), (C, D)
    -> two (N, C) tensors."""
    mean = mu_g @ mu_h.T
    var = (mu_g**2 + var_g) @ var_h.T + var_g @ (mu_h**2).T
    return mean, var


def _rotate(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Coordinates of the rows of x in ``basis`` (None: the standard basis)."""
    return x if basis is None else x @ basis.to(x.dtype)


def _basis_overlap(img_basis, txt_basis) -> torch.Tensor | None:
    """(img_basis^T txt_basis)^2: how much each image eigen-direction lies along each text
    one; None when both are the standard basis (the identity)."""
    if img_basis is None and txt_basis is None:
        return None
    if img_basis is None:
        return txt_basis**2
    if txt_basis is None:
        return (img_basis**2).T
    return (img_basis.T @ txt_basis) ** 2


def _side_variance(var, own_mean, other_mean, m, own_norm2) -> torch.Tensor:
    """Delta-method term of one side, sum_j var_j (o_j - m n_j)^2 / G in that side's basis,
    expanded into matmuls: var, own_mean (N, D), other_mean (C, D), m (N, C), G (N, 1)."""
    return (
        var @ (other_mean**2).T
        - 2 * m * ((var * own_mean) @ other_mean.T)
        + m**2 * (var * own_mean**2).sum(-1, keepdim=True)
    ) / own_norm2


def cosine_moments(
    mu_img: torch.Tensor,
    var_img: torch.Tensor,
    mu_txt: torch.Tensor,
    var_txt: torch.Tensor,
    variance: str = "reference",
    img_basis: torch.Tensor | None = None,
    txt_basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate mean and variance of cos(g, h), each (N, C), for unnormalised means of
    images (N, D) and texts (C, D) and covariance eigenvalues ``var_*`` of the same shapes
    along the columns of ``*_basis`` (D, D); without bases the covariances are diagonal."""
    if variance not in COSINE_VARIANCES:
        raise ConfigError(f"unknown cosine variance '{variance}', expected {COSINE_VARIANCES}")
    g_norm2 = (mu_img**2).sum(-1, keepdim=True) + var_img.sum(-1, keepdim=True)  # (N, 1)
    h_norm2 = (mu_txt**2).sum(-1, keepdim=True) + var_txt.sum(-1, keepdim=True)  # (C, 1)
    mg, mh = mu_img / g_norm2.sqrt(), mu_txt / h_norm2.sqrt()
    mean = mg @ mh.T
    overlap = _basis_overlap(img_basis, txt_basis)
    trace = var_img @ (var_txt.T if overlap is None else overlap @ var_txt.T)
    cross = trace / (g_norm2 * h_norm2.T)  # tr(S_g S_h) / (G_g G_h)
    if variance == "reference":
        num = var_img @ (_rotate(mu_txt, img_basis) ** 2).T
        num = num + (_rotate(mu_img, txt_basis) ** 2) @ var_txt.T
        return mean, num / (g_norm2 * h_norm2.T) + cross
    # each side in its own covariance's eigenbasis
    img_side = _side_variance(
        var_img, _rotate(mg, img_basis), _rotate(mh, img_basis), mean, g_norm2
    )
    txt_side = _side_variance(
        var_txt, _rotate(mh, txt_basis), _rotate(mg, txt_basis), mean.T, h_norm2
    ).T
    return mean, (img_side + txt_side + cross).clamp_min(0.0)
