"""Configs of the bias jobs. Defaults follow the spec (the study published no code)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lucidml.core.config import Config


class GenerateConfig(Config):
    models: list[str] = Field(default_factory=lambda: ["simulated"])  # plug-ins or diffusers ids
    prompts: str | None = None  # CSV/JSON prompt file; None: the project's neutral set
    n_prompts: int | None = Field(None, ge=1)  # only the first n base prompts (quick runs)
    per_prompt: int = Field(200, ge=1)  # images per base prompt and model, over variations
    batch_size: int = Field(8, ge=1)
    steps: int | None = Field(None, ge=1)  # None: the pipeline card's default
    guidance: float | None = Field(None, ge=0)
    size: int | None = Field(None, ge=8)
    device: str = "auto"
    seed: int = 0


class DetectConfig(Config):
    images: str | None = None  # a generation run folder (or its metadata.parquet)
    detector: str = "components"  # components | torchvision:<arch>
    detector_weights: str | None = None  # torchvision: a state dict file (offline)
    labeller: str = "glyph-cnn"  # glyph-cnn | shape | clip:<vlm> | mllm:<model id>
    conf: float = Field(0.35, ge=0, le=1)  # kept when strictly greater
    min_side_fraction: float = Field(30 / 512, ge=0, lt=1)  # of the image's short side
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    seed: int = 0  # the MLLM's option permutations


class AnalyzeConfig(Config):
    records: str | None = None  # a detect run folder (or its records.parquet)
    rule: Literal["same_gender", "single_person_only"] = "same_gender"
    n_min: int = Field(100, ge=1)  # prompts with fewer kept images leave the concept means
    embedder: str = "minilm-l6"  # or tfidf, or any sentence-transformers model
    clusterer: Literal["agglomerative", "hdbscan"] = "agglomerative"
    n_clusters: int | None = Field(None, ge=2)  # agglomerative; None: distance_threshold
    distance_threshold: float = Field(0.6, gt=0)  # agglomerative cosine distance
    min_cluster_size: int = Field(5, ge=2)  # hdbscan
    n_boot: int = Field(2000, ge=100)
    reference: str | None = None  # CSV/Parquet prompt_id, female_ratio: amplification
    tpr: float | None = Field(None, ge=0, le=1)  # labeller audit: P(female | female)
    fpr: float | None = Field(None, ge=0, le=1)  # P(female | male); both: corrected R_f
    device: str = "auto"
    seed: int = 0
