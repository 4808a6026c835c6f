"""Kronecker-factored Laplace posterior over one projection layer W (q x p).

Conventions: vec(W) stacks columns (column-major), so for e = W a the Jacobian is
a^T (x) I_q and one data point's GGN is (a a^T) (x) H: the input factor A is on the left.

Everything downstream works in the eigenbases A = U diag(alpha) U^T, B = V diag(beta) V^T.
Both damping schemes then give a posterior covariance (U (x) V) diag(vec M^T) (U (x) V)^T
with a (p, q) table M of eigenvalues, so variances, samples and log-determinants share
one code path:

- ``split-reference`` (the reference): (sqrt(n) A + sqrt(lam) I)^-1 (x) (sqrt(n) B +
  sqrt(lam) I)^-1, M_ij = 1 / ((sqrt(n) alpha_i + sqrt(lam)) (sqrt(n) beta_j + sqrt(lam))).
  It depends on how a scalar is shared between the factors: A and B are only defined up
  to A -> cA, B -> B/c (their product is the GGN), and the damping is not.
- ``split`` (default): the same with the scalar chosen by the data, A -> sA, B -> B/s with
  the s that maximises the Laplace marginal likelihood (it minimises the log-determinant
  of the precision, a convex problem in log s; ``split_scale``). Moving a scalar between
  the stored factors moves s the other way, so the posterior does not depend on it.
- ``eig``: the exact (n A (x) B + lam I)^-1, M_ij = 1 / (n alpha_i beta_j + lam); also
  independent of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lucidml.errors import ConfigError

DAMPINGS = ("split", "split-reference", "eig")


def kron_logdet(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """logdet(A (x) B) = q logdet A + p logdet B for A (p, p), B (q, q) positive definite."""
    p, q = A.shape[0], B.shape[0]
    return (
        q * torch.linalg.cholesky(A).diagonal().log().sum() * 2
        + p * torch.linalg.cholesky(B).diagonal().log().sum() * 2
    )


def with_bias_column(a: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 to each activation row, the input a bias multiplies."""
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


@dataclass
class KronFactors:
    """A = sum a a^T / sqrt(N) and B = sum H / sqrt(N) of one layer, from N data points."""

    A: torch.Tensor
    B: torch.Tensor
    n_data: int

    @classmethod
    def from_sums(cls, sum_aa: torch.Tensor, sum_h: torch.Tensor, n_data: int) -> KronFactors:
        root = math.sqrt(n_data)
        return cls(sum_aa / root, sum_h / root, n_data)


def psd_eigh(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0, round-off can make them slightly negative) and vectors."""
    evals, evecs = torch.linalg.eigh(S.double())
    return evals.clamp_min(0.0), evecs


def _split_logdet(u: float, alpha, beta, n: float, lam: float) -> float:
    """logdet of the split-damped precision with A scaled by e^u and B by e^-u."""
    p, q = len(alpha), len(beta)
    ra = (n**0.5 * math.exp(u) * alpha + lam**0.5).log().sum()
    rb = (n**0.5 * math.exp(-u) * beta + lam**0.5).log().sum()
    return float(q * ra + p * rb)


def split_scale(alpha: torch.Tensor, beta: torch.Tensor, n: float, lam) -> float:
    """The s for which (A s, B / s) under split damping has the largest marginal
    likelihood at (n, lam): the minimiser of the precision's log-determinant (the other
    terms do not depend on s), convex in log s, found by a bounded scalar search around
    the trace balance mean(beta) / mean(alpha)."""
    from scipy.optimize import minimize_scalar

    a, b = alpha.detach().double().cpu(), beta.detach().double().cpu()
    lam = float(lam)
    ma, mb = float(a.mean()), float(b.mean())
    if ma <= 0 or mb <= 0:  # a zero factor: every split gives the same posterior
        return 1.0
    centre = 0.5 * math.log(mb / ma)
    res = minimize_scalar(
        _split_logdet,
        bounds=(centre - 40.0, centre + 40.0),
        args=(a, b, n, lam),
        method="bounded",
        options={"xatol": 1e-10, "maxiter": 500},
    )
    return math.exp(res.x)


def covariance_eigenvalues(
    alpha: torch.Tensor, beta: torch.Tensor, n: float, lam, damping: str = "split"
) -> torch.Tensor:
    """The (p, q) table M of posterior covariance eigenvalues (see the module docstring).
    ``lam`` may be a float or a 0-d tensor that carries gradients (through ``split``'s
    scale it needs none: s minimises the log-determinant, so its own gradient is zero)."""
    if damping in ("split", "split-reference"):
        s = split_scale(alpha, beta, n, lam) if damping == "split" else 1.0
        ra = n**0.5 * s * alpha + lam**0.5
        rb = n**0.5 * beta / s + lam**0.5
        return 1.0 / (ra[:, None] * rb[None, :])
    if damping == "eig":
        return 1.0 / (n * alpha[:, None] * beta[None, :] + lam)
    raise ConfigError(f"unknown damping '{damping}', expected one of {DAMPINGS}")


def precision_logdet(
    alpha, beta, n: float, lam, damping: str = "split", compat: bool = False
) -> torch.Tensor:
    """logdet of the posterior precision. ``compat`` gives the reference's term for split
    damping, p logdet A~ + q logdet B~ (factor sizes swapped relative to the true value)."""
    if compat:
        if damping != "split-reference":
            raise ConfigError("compat logdet is only defined for split-reference damping")
        p, q = len(alpha), len(beta)
        return (
            p * (n**0.5 * alpha + lam**0.5).log().sum() + q * (n**0.5 * beta + lam**0.5).log().sum()
        )
    return -covariance_eigenvalues(alpha, beta, n, lam, damping).log().sum()


def log_marglik(
    lam, alpha, beta, theta_sqnorm: float, n: float, damping: str = "split", compat: bool = False
) -> torch.Tensor:
    """Laplace log marginal likelihood in lam, up to constants:
    -1/2 lam ||theta||^2 + 1/2 P log lam - 1/2 logdet(posterior precision).
    ``compat`` reproduces the reference: its logdet term enters without the 1/2."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    P = len(alpha) * len(beta)
    logdet = precision_logdet(alpha, beta, n, lam, damping, compat)
    weight = 1.0 if compat else 0.5
    return -0.5 * lam * theta_sqnorm + 0.5 * P * lam.log() - weight * logdet


def optimize_prior_precision(
    alpha,
    beta,
    theta_sqnorm: float,
    n: float = 1.0,
    damping: str = "split",
    compat: bool = False,
    solver: str = "brent",
    init: float = 800.0,
    log_bounds: tuple[float, float] = (-5.0, 15.0),
) -> float:
    """The prior precision lam maximising ``log_marglik``: Brent's method on log lam within
    ``log_bounds`` (default), or the reference's 300 Adam steps (lr 1e-2) from ``init``.
    Runs on the CPU whatever the factors' device: it needs only the two eigenvalue
    vectors, and the scalar solver reads one number per step."""
    alpha, beta = alpha.double().cpu(), beta.double().cpu()
    args = (alpha, beta, theta_sqnorm, n, damping, compat)
    if solver == "brent":
        from scipy.optimize import minimize_scalar

        res = minimize_scalar(
            lambda t: -float(log_marglik(math.exp(t), *args)),
            bounds=log_bounds,
            method="bounded",
            options={"xatol": 1e-9, "maxiter": 500},
        )
        return float(math.exp(res.x))
    if solver == "adam":
        log_lam = torch.tensor(math.log(init), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([log_lam], lr=1e-2)
        for _ in range(300):
            loss = -log_marglik(log_lam.exp(), *args)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(log_lam.detach().exp())
    raise ConfigError(f"unknown solver '{solver}', expected brent or adam")


def embedding_spectrum(a: torch.Tensor, U: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of Cov(W a) in the output eigenbasis V, for activations a (N, p): the
    covariance is V diag(w) V^T with w_j = sum_i (u_i.a)^2 M_ij, (N, q). The same V for
    every input, so this is the whole covariance, not an approximation."""
    return ((a.to(U.dtype) @ U) ** 2) @ M


def embedding_variance(
    a: torch.Tensor, U: torch.Tensor, V: torch.Tensor, M: torch.Tensor
) -> torch.Tensor:
    """Diagonal of Cov(W a) for activations a (N, p): sum_ij (u_i.a)^2 V_dj^2 M_ij, (N, q).
    Never forms a^T (x) I (laplace-torch #138)."""
    return embedding_spectrum(a, U, M) @ (V**2).T


def sample_weight_noise(
    U: torch.Tensor,
    V: torch.Tensor,
    M: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draws of W - W_map from the posterior, (S, q, p): V (Z * sqrt(M)^T) U^T.
    Z is drawn on the CPU (where ``generator`` lives), so one seed gives the same draws
    on every device."""
    p, q = M.shape
    z = torch.randn(n_samples, q, p, generator=generator, dtype=U.dtype).to(U.device)
    z = z * M.sqrt().T
    # V z U^T for every draw, as two plain 2-D matmuls (batched broadcasting is slow on CPU)
    left = (V @ z.transpose(0, 1).reshape(q, n_samples * p)).reshape(q, n_samples, p)
    return (left.transpose(0, 1).reshape(n_samples * q, p) @ U.T).reshape(n_samples, q, p)
