"""Configs of the feasibility jobs.

FLM released no code: the prompt, the example selection and the score are lucidml's
own specification, each a field here. ``n_examples`` follows the issue (8); the spec's
k_obj = k_st = 3 is ``n_examples: 6``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lucidml.core.config import Config
from lucidml.core.zoo import ENCODER_DEFAULT, LLM_DEFAULT

ScoreType = Literal["yes_logit", "log_odds", "yes_prob", "log_p_yes"]


class VocabFiles(Config):
    vocab: str | None = None  # one JSON with states, objects, seen (and feasible)
    states: str | None = None
    objects: str | None = None
    seen: str | None = None
    labels: str | None = None  # feasible pairs, for ROC-AUC against ground truth


class ScoreConfig(VocabFiles):
    model: str = LLM_DEFAULT
    n_examples: int = Field(8, ge=0)
    n_object_examples: int | None = Field(None, ge=0)  # None: half of n_examples
    n_state_examples: int | None = Field(None, ge=0)  # None: the rest
    object_block: Literal["fixed", "ranked"] = "fixed"
    encoder: str | None = None  # ranks examples by name similarity; None: seeded order
    negatives: list[tuple[str, str]] | None = None  # known-infeasible pairs; None: built-in
    n_negatives: int = Field(2, ge=0)
    score: ScoreType = "yes_logit"  # the paper's
    chat: bool = False  # wrap the prompt in the model's chat template
    batch_size: int = Field(32, ge=1)
    prefix_cache: bool = True
    device: str = "auto"
    seed: int = 0


class BaselineConfig(VocabFiles):
    encoder: str = ENCODER_DEFAULT
    device: str = "auto"
    seed: int = 0


class CzslConfig(Config):
    features: str | None = None  # safetensors: train/val/test features and pair indices
    pairs: str | None = None  # JSON: states, objects, seen (and feasible)
    feasibility: list[str] = Field(default_factory=list)  # score tables to mask with
    heads: list[Literal["compcos", "kgsp"]] = Field(default_factory=lambda: ["compcos", "kgsp"])
    steps: int = Field(300, ge=1)
    device: str = "auto"
    seed: int = 0
