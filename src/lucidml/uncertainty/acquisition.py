"""Acquisition scores and the distance used to map target picks onto the labelled pool.

All functions are pure: probabilities in, scores out. ``probs`` tensors are (S, N, C):
S posterior samples of class probabilities for N inputs. EPIG needs the samples of
candidates and targets to come from the *same* parameter draws.
"""

from __future__ import annotations

import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis; 0 log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD = H[E_s p_s] - E_s H[p_s], (N,)."""
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


def epig(pool_probs: torch.Tensor, target_probs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Expected predictive information gain of each pool item about the targets, (Np,):
    E_{x*}[H p(y|x) + H p(y*|x*) - H p(y, y*|x, x*)], p(y, y*) = E_s p_s(y|x) p_s(y*|x*).
    The joint for a chunk of pool items against all targets is one einsum."""
    S = pool_probs.shape[0]
    h_pool = entropy(pool_probs.mean(0))  # (Np,)
    h_target = entropy(target_probs.mean(0)).mean()  # mean over targets
    out = []
    for start in range(0, pool_probs.shape[1], chunk):
        block = pool_probs[:, start : start + chunk]
        joint = torch.einsum("spc,std->ptcd", block, target_probs) / S
        h_joint = entropy(joint.flatten(-2)).mean(1)  # (chunk,) mean over targets
        out.append(h_joint)
    return h_pool + h_target - torch.cat(out)


def w2_diag_sq(
    mu1: torch.Tensor, var1: torch.Tensor, mu2: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians, all pairs (N1, N2):
    ||mu1 - mu2||^2 + sum var1 + sum var2 - 2 sum sqrt(var1 var2)."""
    mean_part = torch.cdist(mu1, mu2) ** 2
    s1, s2 = var1.sqrt(), var2.sqrt()
    return (
        mean_part + (var1.sum(-1, keepdim=True) + var2.sum(-1)[None, :]) - 2 * s1 @ s2.T
    ).clamp_min(0.0)


def nearest_unused(distances: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Walk targets in ``order`` (best first) and give each its nearest pool item not taken
    yet, until ``k`` pool indices are chosen; distances are (N_targets, N_pool).
    The walk runs on the CPU: it is sequential, one row per step."""
    distances = distances.cpu()
    taken = torch.zeros(distances.shape[1], dtype=torch.bool)
    picks = []
    for t in order.tolist():
        if len(picks) == k:
            break
        d = distances[t].masked_fill(taken, float("inf"))
        j = int(d.argmin())
        if torch.isinf(d[j]):
            break
        taken[j] = True
        picks.append(j)
    return torch.tensor(picks, dtype=torch.long)
