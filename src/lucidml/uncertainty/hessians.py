"""Closed-form GGN Hessians of contrastive losses in the *unnormalised* embedding.

The losses read the embedding only through its direction x^ = x/||x||, so every Hessian
is sandwiched by the normalisation Jacobian J = I/||x|| - x x^T/||x||^3 = P/||x|| with the
projector P = I - x^ x^^T. The GGN needs no labels: it is the Fisher of the model's own
softmax (InfoNCE) or sigmoids (SigLIP). In both cases the inner matrix has the form
M = Y^T diag(w) Y - ybar ybar^T over the candidates Y (C, D): softmax weights w = p with
ybar = p Y, or sigmoid weights w = s(1-s) with ybar = 0.

``*_ggn`` take one embedding (D,) and build the D x D matrices literally; ``*_ggn_sum``
take a batch (N, D) and return the sum over its rows (what the K-FAC output factor
accumulates) by expanding sum_n P_n M_n P_n / ||x_n||^2 into a few matmuls, so no
(N, D, D) or (N, C, D) tensor is ever formed.
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


def _infonce_weights(xs, targets, logit_scale):
    p = torch.softmax(logit_scale * F.normalize(xs, dim=-1) @ targets.T, dim=-1)
    return p, p @ targets


def _sigmoid_weights(xs, targets, logit_scale, logit_bias):
    s = torch.sigmoid(logit_scale * F.normalize(xs, dim=-1) @ targets.T + logit_bias)
    return s * (1 - s), torch.zeros_like(xs)


def _inner(w: torch.Tensor, ybar: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """M = Y^T diag(w) Y - ybar ybar^T for one embedding, (D, D)."""
    return (w[:, None] * targets).T @ targets - torch.outer(ybar, ybar)


def _summed_sandwich(xs, w, ybar, targets, logit_scale) -> torch.Tensor:
    """sum_n J_n M_n J_n for M_n = Y^T diag(w_n) Y - ybar_n ybar_n^T, using
    P M P = M - x^ u^T - u x^^T + c x^ x^^T with u = M x^ and c = x^^T M x^."""
    inv = 1.0 / (xs**2).sum(-1, keepdim=True)  # (N, 1): 1/||x||^2
    xh = F.normalize(xs, dim=-1)
    cos = xh @ targets.T  # (N, C)
    ybar_x = (ybar * xh).sum(-1, keepdim=True)  # (N, 1)
    u = (w * cos) @ targets - ybar * ybar_x  # (N, D)
    c = (w * cos**2).sum(-1, keepdim=True) - ybar_x**2  # (N, 1)
    m_sum = (targets * (w * inv).sum(0)[:, None]).T @ targets - (ybar * inv).T @ ybar
    cross = (xh * inv).T @ u
    return logit_scale**2 * (m_sum - cross - cross.T + (xh * c * inv).T @ xh)


def infonce_ggn(x: torch.Tensor, targets: torch.Tensor, logit_scale) -> torch.Tensor:
    """GGN of the InfoNCE loss at one unnormalised embedding x (D,) against normalised
    candidates ``targets`` (C, D): s^2 J (sum_c p_c y_c y_c^T - ybar ybar^T) J, (D, D)."""
    jac = normalisation_jacobian(x)
    p, ybar = _infonce_weights(x, targets, logit_scale)
    return logit_scale**2 * jac @ _inner(p, ybar, targets) @ jac


def sigmoid_ggn(x: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
    """GGN of the SigLIP pairwise sigmoid loss at x (D,) against targets (C, D):
    s^2 J (sum_j s_j (1 - s_j) y_j y_j^T) J, (D, D)."""
    jac = normalisation_jacobian(x)
    w, ybar = _sigmoid_weights(x, targets, logit_scale, logit_bias)
    return logit_scale**2 * jac @ _inner(w, ybar, targets) @ jac


def infonce_ggn_sum(xs: torch.Tensor, targets: torch.Tensor, logit_scale) -> torch.Tensor:
    """sum_i infonce_ggn(xs[i], targets) for a batch xs (N, D)."""
    p, ybar = _infonce_weights(xs, targets, logit_scale)
    return _summed_sandwich(xs, p, ybar, targets, logit_scale)


def sigmoid_ggn_sum(
    xs: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias
) -> torch.Tensor:
    """sum_i sigmoid_ggn(xs[i], targets) for a batch xs (N, D)."""
    w, ybar = _sigmoid_weights(xs, targets, logit_scale, logit_bias)
    return _summed_sandwich(xs, w, ybar, targets, logit_scale)


def ggn_sum(
    kind: str, xs: torch.Tensor, targets: torch.Tensor, logit_scale, logit_bias=0.0
) -> torch.Tensor:
    """The summed GGN of the loss of model ``kind`` ("clip" or "siglip")."""
    if kind == "siglip":
        return sigmoid_ggn_sum(xs, targets, logit_scale, logit_bias)
    return infonce_ggn_sum(xs, targets, logit_scale)
