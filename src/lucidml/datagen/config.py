"""Configs for LoFT jobs; defaults are the paper's (spec table) unless a comment says not.

``AdapterConfig`` is how one LoRA is fitted; ``FitConfig``, ``GenerateConfig`` and
``EvaluateConfig`` are the ``lucid datagen`` commands' full inputs, so a run folder's
``config.yaml`` records everything the job read and can be passed back with ``--config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lucidml.core.config import Config
from lucidml.datagen.evaluate import ClassifierConfig
from lucidml.datagen.lora import DEFAULT_TARGETS

FIT_METHODS = ("loft", "datadream-cls", "datadream-dset")
GENERATE_METHODS = ("loft", "datadream-cls", "datadream-dset", "plain")
DEFAULT_MODEL = "digits-diffusion"
TEMPLATE = "a {domain}photo of a {class}"


class AdapterConfig(Config):
    """One LoRA's fit: LoFT's per-image defaults (rank 2, alpha 2, 600 steps, lr 1e-3)."""

    rank: int = Field(2, ge=1)
    alpha: float = Field(2.0, gt=0)
    targets: list[str] = list(DEFAULT_TARGETS)
    steps: int = Field(600, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(1e-2, ge=0)


# DataDream's per-class / per-dataset LoRA: r 16, lr 1e-4, batch 8, 100 warm-up steps;
# its 200 epochs over the shots are ``steps`` = 200 * ceil(shots / 8) (set by the job).
DATADREAM_ADAPTER = AdapterConfig(rank=16, alpha=16.0, batch_size=8, lr=1e-4, warmup_steps=100)


class FitConfig(Config):
    """``lucid datagen fit-loras``: which adapters, on which shots, of which model."""

    method: Literal["loft", "datadream-cls", "datadream-dset"] = "loft"
    model: str = DEFAULT_MODEL  # digits-diffusion, or a diffusers pipeline id / folder
    images: str = "digits"  # a folder with one sub-folder per class, or 'digits'
    shots: int | None = Field(4, ge=1)  # per class, sorted ids; None: every image
    template: str = TEMPLATE  # the prompt; {class} and {domain} are filled in
    domain: str = ""  # e.g. "pet " for "a pet photo of a beagle"
    adapter: AdapterConfig | None = None  # None: the method's defaults
    datadream_epochs: int = Field(200, ge=1)
    seed: int = 0
    device: str = "auto"

    def adapter_config(self, n_images: int) -> AdapterConfig:
        if self.adapter is not None:
            return self.adapter
        if self.method == "loft":
            return AdapterConfig()
        batches = -(-n_images // DATADREAM_ADAPTER.batch_size)
        return DATADREAM_ADAPTER.updated(steps=self.datadream_epochs * batches)


class GenerateConfig(Config):
    """``lucid datagen generate``: fused sampling from a fit-loras folder."""

    loras: str | None = None  # the fit-loras run folder (required unless method is plain)
    method: Literal["loft", "datadream-cls", "datadream-dset", "plain"] = "loft"
    model: str | None = None  # None: the model the adapters were fitted on
    per_class: int = Field(100, ge=1)
    k: int = Field(2, ge=1)  # adapters fused per image (LoFT); 1 with a single shot
    weights: list[float] | None = None  # None: 1/k each (0.5/0.5 for pairs)
    guidance: float = Field(2.0, ge=0)
    steps: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    classes: list[str] | None = None  # plain only, with no fit folder: the class names
    template: str = TEMPLATE
    domain: str = ""
    seed: int = 0
    device: str = "auto"

    @model_validator(mode="after")
    def _weights_match_k(self):
        if self.weights is not None and len(self.weights) != self.k:
            raise ValueError(f"weights has {len(self.weights)} entries but k is {self.k}")
        return self

    def fusion_weights(self, k: int) -> list[float]:
        return list(self.weights) if self.weights is not None and k == self.k else [1 / k] * k


class EvaluateJobConfig(Config):
    """``lucid datagen evaluate``: a classifier on synthetic images, tested on real ones,
    and fidelity/diversity on image features."""

    synthetic: str | None = None  # the generate run folder (required)
    real_test: str = "digits"  # a folder per class, or 'digits' (its test split)
    shots: str | None = None  # the fit-loras folder; None: the one synthetic came from
    seeds: int = Field(3, ge=1)  # classifier seeds seed, seed + 1, ...
    classifier: ClassifierConfig = ClassifierConfig()
    # convnet: a small ConvNet from scratch; clip: the encoder with LoRA on q/v of both
    # towers and cosine logits (the paper's classifier; lr 1e-4 is its default)
    classifier_model: Literal["convnet", "clip"] = "convnet"
    with_shots: bool = False  # also train on synthetic + shots (the lambda mix)
    encoder: str = "digits-clip"  # image features for FD, PRDC and near-duplicates
    prdc_k: int = Field(5, ge=1)
    seed: int = 0
    device: str = "auto"
