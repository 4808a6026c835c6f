"""Sparse autoencoders for vision-language models: activations, SAEs, scores, steering."""

from lucidml.sae import metrics
from lucidml.sae.config import SAEConfig
from lucidml.sae.extraction import extract
from lucidml.sae.model import SAE
from lucidml.sae.steer import steer
from lucidml.sae.store import ActivationStore
from lucidml.sae.training import train

__all__ = ["SAE", "ActivationStore", "SAEConfig", "extract", "metrics", "steer", "train"]
