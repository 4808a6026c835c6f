"""Classification and calibration metrics on probabilities, plus confidence intervals.

Every function accepts NumPy arrays or torch tensors and returns plain floats, so
results go straight into ``results.json``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from lucidml.errors import ShapeError


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(probs).astype(np.float64), _np(labels).astype(np.int64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ShapeError(
            f"expected probabilities (N, C) and labels (N,), got {p.shape} and {y.shape}"
        )
    return p, y


def accuracy(scores, labels) -> float:
    """Top-1 accuracy of (N, C) scores (logits or probabilities) against (N,) labels."""
    s, y = _probs_labels(scores, labels)
    return float((s.argmax(1) == y).mean())


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood (NLPD) of the true class."""
    p, y = _probs_labels(probs, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, None)).mean())


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean over samples of sum_c (p_c - 1[y=c])^2."""
    p, y = _probs_labels(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


def reliability_bins(probs, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin mean confidence, accuracy and count over equal-width confidence bins."""
    p, y = _probs_labels(probs, labels)
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(np.float64)
    # Bins are (lo, hi]; a confidence of exactly 0 falls in the first bin.
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {
        "confidence": np.bincount(idx, conf, n_bins) / safe,
        "accuracy": np.bincount(idx, correct, n_bins) / safe,
        "count": count,
        "edges": np.linspace(0, 1, n_bins + 1),
    }


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b |B_b|/N * |acc(B_b) - conf(B_b)|."""
    b = reliability_bins(probs, labels, n_bins)
    n = b["count"].sum()
    return float((b["count"] / n * np.abs(b["accuracy"] - b["confidence"])).sum())


def auroc(scores, labels) -> float:
    """Area under the ROC curve for binary labels (1 = positive); ties count one half."""
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ShapeError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks handle ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    low, high = wilson_intervals([k], [n], z=float(stats.norm.ppf(1 - alpha / 2)))
    return float(low[0]), float(high[0])


def wilson_intervals(k, n, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals for arrays of counts k out of n, NaN where n = 0.

    The array form behind ``wilson_interval`` (taking z, not alpha), so thousands of
    per-prompt intervals cost one NumPy expression instead of a Python loop."""
    k, n = _np(k).astype(np.float64), _np(n).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        phat = k / n
        denom = 1 + z**2 / n
        centre = (phat + z**2 / (2 * n)) / denom
        half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the first axis of ``values``."""
    v = _np(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = np.array([stat(v[i]) for i in idx])
    return float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = _np(values).astype(np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def t_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of a few independent values (seeds, runs): mean +-
    t_{(1+level)/2, n-1} s / sqrt(n). None for fewer than two values: one run has no
    spread to estimate."""
    from scipy import stats

    v = _np(values).astype(np.float64).ravel()
    if v.size < 2:
        return None
    half = float(stats.t.ppf((1 + level) / 2, v.size - 1)) * float(v.std(ddof=1)) / v.size**0.5
    return float(v.mean()) - half, float(v.mean()) + half
