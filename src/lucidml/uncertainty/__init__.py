"""BayesVLM: post-hoc Laplace uncertainty for CLIP/SigLIP and active support-set selection."""

from lucidml.uncertainty.config import (
    ActiveConfig,
    ActiveJobConfig,
    FinetuneConfig,
    FitJobConfig,
    PosteriorConfig,
    PredictConfig,
    ZeroshotJobConfig,
)
from lucidml.uncertainty.model import BayesVLM
from lucidml.uncertainty.predictive import ProbabilisticLogits

__all__ = [
    "ActiveConfig",
    "ActiveJobConfig",
    "BayesVLM",
    "FinetuneConfig",
    "FitJobConfig",
    "PosteriorConfig",
    "PredictConfig",
    "ProbabilisticLogits",
    "ZeroshotJobConfig",
]
