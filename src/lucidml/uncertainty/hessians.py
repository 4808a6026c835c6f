"""Closed-form GGN Hessians of contrastive losses in the *unnormalised* embedding.

The losses read the embedding only through its direction x/||x||, so every Hessian is
sandwiched by the normalisation Jacobian J = I/||x|| - x x^T/||x||^3. The GGN needs no
labels: it is the Fisher of the model's own softmax (InfoNCE) or sigmoids (SigLIP).

``*_ggn`` take one embedding (D,); ``*_ggn_sum`` take a batch (N, D) and return the
sum over its rows, which is what the K-FAC output factor accumulates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalisation_jacobian(x: torch.Tensor) -> torch.Tensor:
    """d(x/||x||)/dx for x (..., D) -> (..., D, D); symmetric."""
    norm = x.norm(dim=-1, keepdim=True)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    outer = x.unsqueeze(-1) * x.unsqueeze(-2)
    return eye / norm.unsqueeze(-1) - outer / norm.unsqueeze(-1) ** 3


def _sandwich(x: torch.Tensor, inner: torch.Tensor, scale2: torch.Tensor | float) -> torch.Tensor:
    jac = normalisation_jacobian(x)
    return scale2 * jac @ inner @ jac


def weighted_second_moment(w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum_c w_c y_c y_c^T for weights w (..., C) and targets (C, D) -> (..., D, D)."""
    C, D = targets.shape
    if C * D * D <= 2**24:  # one matmul against the stacked outer products
        outer = (targets[:, :, None] * targets[:, None, :]).reshape(C, D * D)
        return (w @ outer).reshape(*w.shape[:-1], D, D)
    return (w.unsqueeze(-1) * targets).transpose(-1, -2) @ targets


def infonce_inner(x: torch.Tensor, targets: torch.Tensor, logit_scale) -> torch.Tensor:
    """Softmax covariance of the candidates, sum_c p_c y_c y_c^T - ybar ybar^T, (..., D, D)."""
    p = torch.softmax(logit_scale * F.normalize(x, dim=-1) @ targets.T, dim=-1)
    ybar = p @ targets
    return weighted_second_moment(p, targets) - ybar.unsqueeze(-1) * ybar.unsqueeze(-2)


def sigmoid_inner(x: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
    """sum_j s_j(1-s_j) y_j y_j^T with s_j = sigmoid(scale x^ . y_j + bias), (..., D, D)."""
    z = logit_scale * F.normalize(x, dim=-1) @ targets.T + logit_bias
    s = torch.sigmoid(z)
    return weighted_second_moment(s * (1 - s), targets)


def infonce_ggn(x: torch.Tensor, targets: torch.Tensor, logit_scale) -> torch.Tensor:
    """GGN of the InfoNCE loss at one unnormalised embedding x (D,) against normalised
    candidates ``targets`` (C, D): s^2 J (sum_c p_c y_c y_c^T - ybar ybar^T) J, (D, D)."""
    return _sandwich(x, infonce_inner(x, targets, logit_scale), logit_scale**2)


def sigmoid_ggn(x: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
    """GGN of the SigLIP pairwise sigmoid loss at x (D,) against targets (C, D), (D, D)."""
    return _sandwich(x, sigmoid_inner(x, targets, logit_scale, logit_bias), logit_scale**2)


def infonce_ggn_sum(xs: torch.Tensor, targets: torch.Tensor, logit_scale) -> torch.Tensor:
    """sum_i infonce_ggn(xs[i], targets) for a batch xs (N, D)."""
    return _sandwich(xs, infonce_inner(xs, targets, logit_scale), logit_scale**2).sum(0)


def sigmoid_ggn_sum(
    xs: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias
) -> torch.Tensor:
    """sum_i sigmoid_ggn(xs[i], targets) for a batch xs (N, D)."""
    inner = sigmoid_inner(xs, targets, logit_scale, logit_bias)
    return _sandwich(xs, inner, logit_scale**2).sum(0)


def ggn_sum(
    kind: str, xs: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias=0.0
) -> torch.Tensor:
    """The summed GGN of the loss of model ``kind`` ("clip" or "siglip")."""
    if kind == "siglip":
        return sigmoid_ggn_sum(xs, targets, logit_scale, logit_bias)
    return infonce_ggn_sum(xs, targets, logit_scale)
