"""BayesVLM: post-hoc Laplace uncertainty for CLIP/SigLIP and active support-set selection."""

from lucidml.uncertainty.config import ActiveConfig, FinetuneConfig, PosteriorConfig, PredictConfig
from lucidml.uncertainty.model import BayesVLM
from lucidml.uncertainty.predictive import ProbabilisticLogits

__all__ = [
    "ActiveConfig",
    "BayesVLM",
    "FinetuneConfig",
    "PosteriorConfig",
    "PredictConfig",
    "ProbabilisticLogits",
]
