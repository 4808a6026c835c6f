"""Configs for BayesVLM jobs; defaults are the paper's unless a comment says otherwise.

``PosteriorConfig``, ``PredictConfig`` and ``ActiveConfig`` are what the library needs.
The ``*JobConfig`` classes extend them with a command's inputs (model, data, seed), so a
run folder's ``config.yaml`` records everything the job read and can be passed back
with ``--config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lucidml.core.config import Config

DEFAULT_MODEL = "digits-clip"


class PosteriorConfig(Config):
    """How the Laplace posterior over both projections is fitted and used."""

    class_batch: int = Field(32_768, gt=1)  # softmax candidates per Hessian batch
    data_batch: int = Field(256, gt=0)  # paper: 5; only trades memory for speed
    fit_n: float = Field(1.0, gt=0)  # pseudo-data count when fitting lambda
    predict_n: float = Field(10.0, gt=0)  # pseudo-data count for prediction and selection
    damping: Literal["split", "split-reference", "eig"] = "split"
    compat_logdet: bool = False  # True reproduces the reference's (incorrect) logdet term
    solver: Literal["brent", "adam"] = "brent"  # paper: adam (lr 1e-2, 300 steps)
    lambda_init_img: float = Field(800.0, gt=0)
    lambda_init_txt: float = Field(400.0, gt=0)
    cosine_var: Literal["reference", "projected"] = "reference"
    # ours: the reference keeps only the diagonal of each embedding's covariance, which
    # overshoots the logit variance of joint weight draws 4.6x (median) on digits-clip
    embedding_covariance: Literal["full", "diagonal"] = "full"
    encode_batch: int = Field(256, gt=0)
    # dtype of each batch's factor products (sums stay float64); auto: float32 on CUDA
    accumulate_dtype: Literal["auto", "float32", "float64"] = "auto"

    @model_validator(mode="after")
    def _compat_needs_the_reference_split(self):
        if self.compat_logdet and self.damping != "split-reference":
            raise ValueError(
                "compat_logdet reproduces the reference's logdet term: it needs "
                "damping: split-reference"
            )
        return self


class PredictConfig(Config):
    predictive: Literal["probit", "mc", "samples"] = "probit"
    mc_samples: int = Field(400, gt=0)  # logit draws (mc) or weight draws (samples)
    ece_bins: int = Field(20, gt=1)
    templates: list[str] | None = None  # None: the model's own templates
    seed: int = 0


class FinetuneConfig(Config):
    """Few-shot tuning of the image projection only (cross-entropy on MAP logits)."""

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(5e-2, ge=0)
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(30, gt=0)
    # labelled pool items held out to pick the best epoch; 0 keeps the last epoch
    val_size: int = Field(200, ge=0)


class ActiveConfig(Config):
    strategy: Literal["random", "entropy", "bald", "epig"] = "epig"
    budget: int = Field(50, gt=0)  # paper: subset_size
    select_on: Literal["test", "train"] = (
        "test"  # rank targets then map to the pool, or rank the pool
    )
    knn_distance: Literal["w2diag", "euclidean"] = "w2diag"
    bald_samples: int = Field(1000, gt=1)
    epig_samples: int = Field(100, gt=1)
    epig_pool_max: int = Field(40_000, gt=0)
    epig_target_max: int = Field(20_000, gt=0)
    seed: int = 0
    finetune: FinetuneConfig = FinetuneConfig()


class FitJobConfig(PosteriorConfig):
    """``lucid uncertainty fit``: the posterior settings plus what it is fitted on."""

    model: str = DEFAULT_MODEL  # embedded name, Hugging Face id or local folder
    pairs: str = "digits"  # folder with images.npy and captions.txt, or 'digits'
    seed: int = 0


class ZeroshotJobConfig(PredictConfig):
    """``lucid uncertainty zeroshot``: prediction settings plus the posterior and images."""

    model: str = DEFAULT_MODEL
    hessian: str | None = None  # folder written by fit (required)
    images: str = "digits"
    classes: str = "digits"
    # labelled held-out images from the model's own distribution, for the temperature-
    # scaling baseline (digits names read the train split); None: no such baseline
    calibration: str | None = None


class ActiveJobConfig(ActiveConfig):
    """``lucid uncertainty active``: selection settings plus the posterior and the data."""

    model: str = DEFAULT_MODEL
    hessian: str | None = None  # folder written by fit (required)
    pool: str = "digits"
    targets: str = "digits"
    classes: str = "digits"
    budgets: list[int] | None = None  # budgets of the curve; None: [budget]
    seeds: int = Field(1, gt=0)  # selection seeds seed, seed + 1, ... to average
