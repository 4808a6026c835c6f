"""Scoring MAP and BayesVLM predictions on labelled images."""

from __future__ import annotations

import torch

from lucidml.core import metrics
from lucidml.uncertainty.config import PredictConfig
from lucidml.uncertainty.model import BayesVLM
from lucidml.uncertainty.towers import TowerInputs

METHODS = {"map": True, "bayesvlm": False}  # name -> map_estimate


def classification_metrics(probs, labels, ece_bins: int = 20) -> dict[str, float]:
    return {
        "acc": metrics.accuracy(probs, labels),
        "nlpd": metrics.nll(probs, labels),
        "ece": metrics.ece(probs, labels, ece_bins),
        "brier": metrics.brier(probs, labels),
    }


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


def flat_score(*args, **kwargs) -> dict[str, float]:
    """``score`` as one flat row: map_acc, map_nlpd, ..., bayesvlm_brier."""
    return {f"{m}_{k}": v for m, per in score(*args, **kwargs).items() for k, v in per.items()}
