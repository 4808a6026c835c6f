"""Scoring MAP, temperature-scaled MAP and BayesVLM predictions on labelled images.

Every reported metric comes with its item count n and a 95% percentile-bootstrap interval
over the scored items; active-learning means over seeds come with a Student-t interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lucidml.core import metrics
from lucidml.uncertainty.config import PredictConfig
from lucidml.uncertainty.model import BayesVLM
from lucidml.uncertainty.towers import TowerInputs

METHODS = {"map": True, "bayesvlm": False}  # name -> map_estimate
METRICS = ("acc", "nlpd", "ece", "brier")


def classification_metrics(probs, labels, ece_bins: int = 20) -> dict[str, float]:
    return {
        "acc": metrics.accuracy(probs, labels),
        "nlpd": metrics.nll(probs, labels),
        "ece": metrics.ece(probs, labels, ece_bins),
        "brier": metrics.brier(probs, labels),
    }


def bootstrap_metrics(probs, labels, idx: np.ndarray, ece_bins: int = 20) -> np.ndarray:
    """``classification_metrics`` on every resample ``idx`` (B, N) of the items, as a (B, 4)
    array in ``METRICS`` order. Vectorised: accuracy, NLPD and Brier are means of per-item
    terms; ECE is sum_b |sum correct - sum confidence| / N over the bins of ``core.metrics``
    (confidence in (lo, hi]), counted for all resamples in one bincount."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n_items = np.arange(len(y))
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    nlpd = -np.log(np.clip(p[n_items, y], 1e-12, None))
    onehot = np.eye(p.shape[1])[y]
    brier = ((p - onehot) ** 2).sum(1)
    bins = np.clip(np.ceil(conf * ece_bins).astype(int) - 1, 0, ece_bins - 1)
    flat = (np.arange(len(idx))[:, None] * ece_bins + bins[idx]).ravel()
    size = len(idx) * ece_bins
    gap = np.bincount(flat, correct[idx].ravel(), size) - np.bincount(flat, conf[idx].ravel(), size)
    ece = np.abs(gap.reshape(len(idx), ece_bins)).sum(1) / idx.shape[1]
    return np.stack([correct[idx].mean(1), nlpd[idx].mean(1), ece, brier[idx].mean(1)], 1)


def metrics_with_intervals(
    probs, labels, ece_bins: int = 20, n_boot: int = 1000, seed: int = 0
) -> dict:
    """``classification_metrics`` plus ``n`` and ``ci95`` (metric -> [low, high]), the 95%
    percentile bootstrap over items (the same resamples for every metric)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    point = classification_metrics(p, y, ece_bins)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    low, high = np.quantile(bootstrap_metrics(p, y, idx, ece_bins), [0.025, 0.975], axis=0)
    ci = {m: [float(lo), float(hi)] for m, lo, hi in zip(METRICS, low, high, strict=True)}
    return {**point, "n": len(y), "ci95": ci}


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return float(-logp[torch.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, log_bounds: tuple[float, float] = (-5.0, 5.0)
) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on labelled held-out
    logits (temperature scaling): Brent's method on log T, convex in 1/T."""
    from scipy.optimize import minimize_scalar

    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    res = minimize_scalar(
        lambda t: temperature_nll(logits, labels, math.exp(t)),
        bounds=log_bounds,
        method="bounded",
        options={"xatol": 1e-8, "maxiter": 500},
    )
    return float(math.exp(res.x))


def score(
    bvlm: BayesVLM,
    images: TowerInputs,
    labels: torch.Tensor,
    classes: TowerInputs,
    config: PredictConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy, NLPD, ECE and Brier of the MAP model and of BayesVLM."""
    config = config or PredictConfig()
    out = {}
    for method, map_estimate in METHODS.items():
        probs = bvlm.probs(images, classes, config, map_estimate=map_estimate)
        out[method] = classification_metrics(probs, labels, config.ece_bins)
    return out


def score_with_baselines(
    bvlm: BayesVLM,
    images: TowerInputs,
    labels: torch.Tensor,
    classes: TowerInputs,
    config: PredictConfig | None = None,
    temperature: float | None = None,
) -> dict[str, dict]:
    """MAP, temperature-scaled MAP (when ``temperature`` is given, fitted elsewhere on
    held-out data) and BayesVLM, each as ``metrics_with_intervals``."""
    config = config or PredictConfig()
    y = labels.cpu().numpy()
    probs = {m: bvlm.probs(images, classes, config, map_estimate=e) for m, e in METHODS.items()}
    if temperature is not None:
        map_logits = bvlm.logits(images, classes, map_estimate=True).mean
        probs["temperature"] = torch.softmax(map_logits / temperature, dim=-1)
    order = [m for m in ("map", "temperature", "bayesvlm") if m in probs]
    return {
        m: metrics_with_intervals(probs[m].cpu().numpy(), y, config.ece_bins, seed=config.seed)
        for m in order
    }


def flat_score(*args, **kwargs) -> dict[str, float]:
    """``score`` as one flat row: map_acc, map_nlpd, ..., bayesvlm_brier."""
    return {f"{m}_{k}": v for m, per in score(*args, **kwargs).items() for k, v in per.items()}


def mean_interval(values) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of independent runs (a single run: its value)."""
    mean = float(np.mean(np.asarray(values, dtype=np.float64)))
    interval = metrics.t_interval(values)
    return (mean, mean, mean) if interval is None else (mean, *interval)
