"""Per-image latent activations streamed from a store, and the scores built on them.

A store can hold several rows per image (random_k or all tokens). Scores are per image:
an image's activation of a latent is the mean over its rows (for CLS or pooled stores,
the row itself). Rows of one image are contiguous in a store; chunks end on image
boundaries, so MS, the top images and firing counts need two streaming passes and never
the (images x latents) matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.core.metrics import bootstrap_ci
from lucidml.errors import InputError
from lucidml.sae import metrics


def image_groups(image_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start row of each image's run of rows, and that image's index, in store order."""
    if len(image_index) == 0:
        raise InputError("the activation store has no rows")
    starts = np.r_[0, np.flatnonzero(np.diff(image_index)) + 1]
    order = image_index[starts]
    if len(np.unique(order)) != len(order):
        raise InputError("the store's rows of one image are not contiguous; re-extract it")
    return starts, order


def pooled_chunks(
    store,
    transform: Callable[[torch.Tensor], torch.Tensor],
    chunk_rows: int = 65_536,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (image indices, per-image mean of transform(rows), per-image max), by chunk."""
    starts, order = image_groups(np.asarray(store.image_index))
    ends = np.r_[starts[1:], len(store)]
    first = 0
    while first < len(starts):
        last = first + 1  # at least one image; then add images while under chunk_rows
        while last < len(starts) and ends[last] - starts[first] <= chunk_rows:
            last += 1
        rows = store.rows(np.arange(starts[first], ends[last - 1]))
        with torch.no_grad():
            values = transform(rows).float()
        counts = torch.as_tensor(ends[first:last] - starts[first:last])
        segment = torch.repeat_interleave(torch.arange(last - first), counts)
        n = last - first
        pooled = torch.zeros(n, values.shape[1]).index_add_(0, segment, values)
        peak = torch.full((n, values.shape[1]), -torch.inf).scatter_reduce_(
            0, segment[:, None].expand_as(values), values, reduce="amax"
        )
        yield order[first:last], pooled / counts[:, None], peak
        first = last


@dataclass
class LatentScores:
    """Scores of one set of latents (SAE latents or raw neurons) on one image set."""

    ms: dict[str, np.ndarray]  # per embedding model, (K,); NaN for dead or single-image latents
    top_images: np.ndarray  # (K, hai_k) image indices (into the image set), best first
    top_values: np.ndarray  # (K, hai_k)
    firing: np.ndarray  # (K,) images on which the latent's pooled activation is > 0
    row_max: np.ndarray  # (K,) largest activation on any row

    def live(self, hai_k: int) -> np.ndarray:
        """Latents that fire on at least hai_k images (fewer: sparse; none: dead)."""
        return self.firing >= hai_k


def score_latents(
    store,
    transform: Callable[[torch.Tensor], torch.Tensor],
    embeddings: dict[str, np.ndarray],
    hai_k: int = 16,
    chunk_rows: int = 65_536,
) -> LatentScores:
    """MS against each of ``embeddings`` (name -> one row per image of the set the store
    indexes), top images, firing counts: pass 1 for min, max, firing and the running
    top-k; pass 2 (``transform`` runs again) for MS."""
    accs = {name: metrics.MonosemanticityAccumulator() for name in embeddings}
    state: dict[str, np.ndarray] = {}
    images_in_order: list[np.ndarray] = []

    def first_pass():
        position = 0
        for images, pooled, peak in pooled_chunks(store, transform, chunk_rows):
            a = pooled.numpy()
            for acc in accs.values():
                acc.observe_range(a)
            fired, top = (a > 0).sum(0), peak.numpy().max(0)
            state["firing"] = state.get("firing", 0) + fired
            state["row_max"] = np.maximum(state.get("row_max", -np.inf), top)
            images_in_order.append(images)
            yield position, a
            position += len(a)

    positions, values = metrics.top_activating(first_pass(), k=hai_k)
    top_images = np.concatenate(images_in_order)[positions]
    for images, pooled, _ in pooled_chunks(store, transform, chunk_rows) if accs else ():
        for name, acc in accs.items():
            acc.add(pooled.numpy(), embeddings[name][images])
    ms = {name: acc.result() for name, acc in accs.items()}
    return LatentScores(ms, top_images, values, state["firing"], state["row_max"])


def summary(values: np.ndarray, seed: int = 0) -> dict:
    """Mean, sd, n and a 95% bootstrap interval over the finite values; the NaN count."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_nan": int(v.size - finite.size)}
    if finite.size == 0:
        return out | {"mean": None, "sd": None, "ci": None}
    ci = bootstrap_ci(finite, seed=seed) if finite.size > 1 else (finite[0], finite[0])
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return out | {"mean": float(finite.mean()), "sd": sd, "ci": [float(ci[0]), float(ci[1])]}


def random_set_depth(paths: list[str], k: int, n_sets: int = 2000, seed: int = 0) -> dict:
    """The depth a latent gets from k images drawn at random: the hierarchy yardstick."""
    rng = np.random.default_rng(seed)
    sets = np.stack([rng.choice(len(paths), size=k, replace=False) for _ in range(n_sets)])
    return summary(metrics.hierarchy_depth(sets, paths), seed)
