"""Unsupervised chunk discovery (UCD): chunk embeddings that best explain every state.

Loss L = -(1/B) sum_n max_k cos(c_k, x_n): spherical k-means with hard assignment, so
only the winning chunk of a state gets gradient. Chunks that win no state during an
epoch are dead; with ``reseed_dead`` they restart at the worst-served states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from lucidml.core.progress import track
from lucidml.errors import InputError, ShapeError


def _unit_rows(H) -> torch.Tensor:
    H = torch.as_tensor(H).float()
    if H.ndim != 2:
        raise ShapeError(f"activations must be a (T, d) matrix, got shape {tuple(H.shape)}")
    return F.normalize(H, dim=1)


def best_cosine(X: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_k cos(c_k, x_n), argmax_k) for unit rows X (N, d) and raw centres (K, d)."""
    return (X @ F.normalize(centers, dim=1).T).max(1)


@dataclass
class ChunkModel:
    centers: torch.Tensor  # (K, d), unit rows
    assignments: np.ndarray  # (T,) winning chunk of every training state
    losses: list[float]  # per epoch, training loss
    dead_per_epoch: list[int]  # dead chunks seen in each epoch (before re-seeding)
    reseeded: int = 0
    meta: dict = field(default_factory=dict)

    def assign(self, H) -> np.ndarray:
        return best_cosine(_unit_rows(H), self.centers)[1].numpy()

    def loss(self, H) -> float:
        """Mean over states of -max cosine: the test loss on held-out activity."""
        return float(-best_cosine(_unit_rows(H), self.centers)[0].mean())

    @property
    def live(self) -> np.ndarray:
        """Indices of chunks that win at least one training state."""
        return np.unique(self.assignments)


def fit(
    H,
    n_chunks: int,
    seed: int = 0,
    reseed_dead: bool = True,
    lr: float = 1e-2,
    batch_size: int = 64,
    epochs: int = 100,
    device: str = "cpu",
) -> ChunkModel:
    """Learn ``n_chunks`` chunk embeddings for the rows of ``H`` (T, d) on ``device``.

    The random start and the batch order are drawn on the CPU, so they do not depend
    on the device.
    """
    X = _unit_rows(H).to(device)
    T = len(X)
    if n_chunks < 1 or n_chunks > T:
        raise InputError(f"n_chunks must be in 1..{T} (the number of states), got {n_chunks}")
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(n_chunks, X.shape[1], generator=gen)
    centers = start.to(device).requires_grad_(True)
    opt = torch.optim.Adam([centers], lr=lr)
    losses, dead_log, reseeded = [], [], 0
    for _ in track(range(epochs), f"UCD, {n_chunks} chunks", total=epochs):
        wins = torch.zeros(n_chunks, dtype=torch.bool, device=device)
        total = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for idx in torch.randperm(T, generator=gen).to(device).split(batch_size):
            best, arg = best_cosine(X[idx], centers)
            loss = -best.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            wins[arg] = True
            total += best.detach().sum()
        losses.append(-float(total) / T)
        dead = (~wins).nonzero().flatten()
        dead_log.append(len(dead))
        if reseed_dead and len(dead):
            with torch.no_grad():
                fit_now = best_cosine(X, centers)[0]
                worst = torch.argsort(fit_now)[: len(dead)]
                centers[dead] = X[worst]
            reseeded += len(dead)
    with torch.no_grad():
        final = F.normalize(centers.detach(), dim=1)
        assignments = best_cosine(X, final)[1].cpu().numpy()
    return ChunkModel(final.cpu(), assignments, losses, dead_log, reseeded)


# --- baselines ----------------------------------------------------------------------------


def state_losses(H, centers: torch.Tensor) -> np.ndarray:
    """Per state, -max_k cos(c_k, x): the summands of the UCD loss."""
    return (-best_cosine(_unit_rows(H), centers)[0]).numpy()


def one_chunk(H) -> torch.Tensor:
    """The best single chunk: the mean direction of the unit states, (1, d). Any loss
    below its loss is structure that one direction does not explain."""
    return F.normalize(_unit_rows(H).mean(0, keepdim=True), dim=1)


def kmeans_chunks(H, n_chunks: int, seed: int = 0) -> torch.Tensor:
    """Spherical k-means by the textbook route: sklearn's k-means (k-means++ start) on
    the unit states, centres renormalised, (K, d)."""
    from sklearn.cluster import KMeans

    X = _unit_rows(H).numpy()
    if not 1 <= n_chunks <= len(X):
        raise InputError(f"n_chunks must be in 1..{len(X)} (the number of states), got {n_chunks}")
    km = KMeans(n_clusters=n_chunks, n_init=1, max_iter=100, random_state=seed).fit(X)
    return F.normalize(torch.as_tensor(km.cluster_centers_, dtype=torch.float32), dim=1)
