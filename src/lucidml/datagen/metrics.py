"""Fidelity and diversity of a synthetic image set, measured on encoder features.

Each metric is a pure function of feature matrices (one row per image, from any
encoder): the Fréchet distance, precision / recall / density / coverage (Naeem et al.
2020, "Reliable Fidelity and Diversity Metrics for Generative Models") and the
near-duplicate rate. ``fidelity_report`` runs them per class and pooled, next to the
simplest baseline (the real shots scored as if they were the synthetic set).

All arithmetic is float64. Pairwise distances are exact (no approximate neighbours)
and computed in row chunks of bounded memory, so 20,000 x 20,000 sets fit in RAM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from lucidml.core.metrics import wilson_interval
from lucidml.errors import InputError, ShapeError

# Memory for one chunk of a distance matrix (float64); 64 MiB is 838 rows x 10,000 columns.
CHUNK_BYTES = 64 * 2**20


def _features(x, name: str, min_rows: int = 2) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise ShapeError(f"{name} must be a (rows, features) matrix, got shape {tuple(t.shape)}")
    if len(t) < min_rows:
        raise InputError(f"{name} needs at least {min_rows} rows, got {len(t)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return t


def _check_widths(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ShapeError(
            f"{name_a} has {a.shape[1]} features per row but {name_b} has {b.shape[1]}"
        )


def _distance_chunks(x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, ||x[start:stop] - y||) for consecutive row blocks of x."""
    rows = max(1, CHUNK_BYTES // (8 * len(y)))
    for start in range(0, len(x), rows):
        yield start, torch.cdist(x[start : start + rows], y)


def kth_neighbour_distances(x: torch.Tensor, k: int) -> torch.Tensor:
    """NND_k: each row's distance to its k-th nearest other row of ``x`` (itself excluded)."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start, d in _distance_chunks(x, x):
        rows = torch.arange(len(d), device=x.device)
        d[rows, start + rows] = float("inf")
        # topk is several times faster than kthvalue on CPU for small k.
        out[start : start + len(d)] = d.topk(k, dim=1, largest=False).values[:, -1]
    return out


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix; rounding's tiny negative
    eigenvalues are clamped to 0 (scipy's sqrtm turns them into complex parts instead)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    c = x - mu
    return mu, c.T @ c / (len(x) - 1)


def frechet_distance(feats_a, feats_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between the Gaussians
    fitted to two feature sets (sample covariance, ddof 1)."""
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    _check_widths(a, b, "feats_a", "feats_b")
    mu_a, cov_a = _mean_cov(a)
    mu_b, cov_b = _mean_cov(b)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    # Tr(M^1/2) of the PSD matrix M is the sum of the square roots of its eigenvalues.
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(float(fd), 0.0)  # FD >= 0; a tiny negative is rounding


def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` (M rows) against ``real`` (N rows).

    With B(x, r) the closed ball and NND_k the k-th neighbour distance within a point's
    own set: precision = share of fake inside some real ball B(X_i, NND_k(X_i)); recall =
    share of real inside some fake ball; density = (1/kM) * the number of (fake, real ball)
    memberships; coverage = share of real balls holding at least one fake point.
    """
    x, y = _features(real, "real"), _features(fake, "fake")
    _check_widths(x, y, "real", "fake")
    if not 1 <= k < min(len(x), len(y)):
        raise InputError(
            f"k = {k} needs 1 <= k < the rows of each set (real has {len(x)}, fake {len(y)})"
        )
    radius_real, radius_fake = kth_neighbour_distances(x, k), kth_neighbour_distances(y, k)
    precise = torch.zeros(len(y), dtype=torch.bool)
    memberships = 0
    covered = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    recalled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for start, d in _distance_chunks(y, x):  # d[j, i] = ||Y_j - X_i||
        inside_real = d <= radius_real[None, :]
        precise[start : start + len(d)] = inside_real.any(1).cpu()
        memberships += int(inside_real.sum())
        covered |= inside_real.any(0)
        recalled |= (d <= radius_fake[start : start + len(d), None]).any(0)
    return {
        "precision": float(precise.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": memberships / (k * len(y)),
        "coverage": float(covered.double().mean()),
    }


def near_duplicate_rate(fake, shots) -> float:
    """Share of ``fake`` rows whose nearest shot is closer than the median distance from a
    shot to its nearest other shot (a synthetic image nearer a shot than shots are to
    each other is a near-copy of it)."""
    y, s = _features(fake, "fake", min_rows=1), _features(shots, "shots")
    _check_widths(y, s, "fake", "shots")
    threshold = torch.quantile(kth_neighbour_distances(s, 1), 0.5)
    nearest = torch.cat([d.min(1).values for _, d in _distance_chunks(y, s)])
    return float((nearest < threshold).double().mean())


# --- per-class and pooled report ---------------------------------------------------------


def _labels(labels, n_rows: int, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n_rows:
        raise ShapeError(f"{name} must hold one label per row ({n_rows}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{name} must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def _block(real: torch.Tensor, fake: torch.Tensor, shots: torch.Tensor | None, k: int) -> dict:
    k_used = min(k, len(real) - 1, len(fake) - 1)
    out = {"n_real": len(real), "n_fake": len(fake), "k": k_used}
    out["fd"] = frechet_distance(real, fake)
    out.update(prdc(real, fake, k_used))
    if shots is not None and len(shots) >= 2:
        rate = near_duplicate_rate(fake, shots)
        out["n_shots"] = len(shots)
        out["near_duplicate_rate"] = rate
        out["near_duplicate_ci95"] = list(wilson_interval(round(rate * len(fake)), len(fake)))
    else:  # the threshold needs two shots to measure a shot-to-shot distance
        out["n_shots"] = 0 if shots is None else len(shots)
        out["near_duplicate_rate"] = None
        out["near_duplicate_ci95"] = None
    return out


def fidelity_report(
    real_feats,
    real_labels,
    fake_feats,
    fake_labels,
    shot_feats=None,
    shot_labels=None,
    k: int = 5,
) -> dict:
    """FD, PRDC and near-duplicate rate pooled and per class, plus the same numbers with
    the shots standing in for the synthetic set (``baseline``: what copying the shots
    would score). ``k`` is clamped to rows - 1 where a class is small; each block records
    the k it used. Per-class keys are the class indices as strings."""
    real = _features(real_feats, "real_feats")
    fake = _features(fake_feats, "fake_feats")
    _check_widths(real, fake, "real_feats", "fake_feats")
    y_real = _labels(real_labels, len(real), "real_labels")
    y_fake = _labels(fake_labels, len(fake), "fake_labels")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    shots = y_shots = None
    if shot_feats is not None:
        if shot_labels is None:
            raise InputError("shot_feats were given without shot_labels")
        shots = _features(shot_feats, "shot_feats", min_rows=1)
        _check_widths(real, shots, "real_feats", "shot_feats")
        y_shots = _labels(shot_labels, len(shots), "shot_labels")

    classes = sorted(set(y_real.tolist()) | set(y_fake.tolist()))
    for c in classes:
        for name, y in (("real", y_real), ("synthetic", y_fake)):
            if (y == c).sum() < 2:
                raise InputError(
                    f"class {c} has {(y == c).sum()} {name} rows; each class needs at least 2"
                )

    def rows(x, y, c):
        return x[torch.from_numpy(y == c)]

    report = {
        "k": k,
        "pooled": _block(real, fake, shots, k),
        "per_class": {
            str(c): _block(
                rows(real, y_real, c),
                rows(fake, y_fake, c),
                None if shots is None else rows(shots, y_shots, c),
                k,
            )
            for c in classes
        },
        "baseline": None,
    }
    if shots is not None and len(shots) >= 2:
        report["baseline"] = {
            "what": "the real shots scored as if they were the synthetic set",
            "pooled": _block(real, shots, None, k),
            "per_class": {
                str(c): _block(rows(real, y_real, c), rows(shots, y_shots, c), None, k)
                for c in classes
                if (y_shots == c).sum() >= 2
            },
        }
    return report


def anchored_rate(fake, sources: Sequence[Sequence[int]], shots) -> tuple[float, float]:
    """Does an image resemble the shots it was generated from? The share of ``fake`` rows
    whose nearest shot is one of its own ``sources`` (indices into ``shots``), and the
    rate a random choice would give (mean of len(sources) / number of shots). LoFT's
    premise is the first well above the second; with adapters that change nothing they
    are equal."""
    y, s = _features(fake, "fake", min_rows=1), _features(shots, "shots", min_rows=1)
    _check_widths(y, s, "fake", "shots")
    if len(sources) != len(y):
        raise ShapeError(f"{len(y)} fake rows but {len(sources)} source lists")
    nearest = torch.cat([d.argmin(1) for _, d in _distance_chunks(y, s)])
    hits = [int(n) in set(src) for n, src in zip(nearest.tolist(), sources, strict=True)]
    chance = sum(len(set(src)) for src in sources) / (len(sources) * len(s))
    return sum(hits) / len(hits), chance
