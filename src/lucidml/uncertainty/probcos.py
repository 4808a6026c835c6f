"""Analytic moments of the cosine similarity of two independent diagonal Gaussians.

g ~ N(mu_g, diag var_g) (an image embedding), h ~ N(mu_h, diag var_h) (a text embedding).
With G = E||g||^2 = sum(mu^2 + var) and mu~ = mu / sqrt(G), the mean is approximated by
m = mu~_g . mu~_h, and the variance by one of

- ``reference``: Var(g.h) / (G_g G_h), where Var(g.h) = sum_d (mu_g^2 + var_g) var_h
  + var_g mu_h^2 is exact; this ignores that normalisation cancels radial noise, so it
  over-estimates by about cos^2 / (1 - cos^2) at small variance.
- ``projected``: the delta-method variance of the normalised product, which keeps only
  noise orthogonal to each mean, plus the second-order var_g var_h term.
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


def cosine_moments(
    mu_img: torch.Tensor,
    var_img: torch.Tensor,
    mu_txt: torch.Tensor,
    var_txt: torch.Tensor,
    variance: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate mean and variance of cos(g, h), each (N, C), for unnormalised means and
    diagonal variances of images (N, D) and texts (C, D)."""
    if variance not in COSINE_VARIANCES:
        raise ConfigError(f"unknown cosine variance '{variance}', expected {COSINE_VARIANCES}")
    g_norm2 = (mu_img**2 + var_img).sum(-1, keepdim=True)  # (N, 1)
    h_norm2 = (mu_txt**2 + var_txt).sum(-1, keepdim=True)  # (C, 1)
    mg, mh = mu_img / g_norm2.sqrt(), mu_txt / h_norm2.sqrt()
    mean = mg @ mh.T
    cross = var_img @ var_txt.T / (g_norm2 * h_norm2.T)
    if variance == "reference":
        _, num = dot_moments(mu_img, var_img, mu_txt, var_txt)
        return mean, num / (g_norm2 * h_norm2.T)
    # sum_d var_g (mh - m mg)^2 / G_g, expanded into matmuls; likewise for the text side.
    img_side = (
        var_img @ (mh**2).T
        - 2 * mean * ((var_img * mg) @ mh.T)
        + mean**2 * (var_img * mg**2).sum(-1, keepdim=True)
    ) / g_norm2
    txt_side = (
        (mg**2) @ var_txt.T
        - 2 * mean * (mg @ (var_txt * mh).T)
        + mean**2 * (var_txt * mh**2).sum(-1, keepdim=True).T
    ) / h_norm2.T
    return mean, (img_side + txt_side + cross).clamp_min(0.0)
