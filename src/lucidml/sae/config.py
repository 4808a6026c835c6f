"""Configs of the SAE jobs.

Defaults are the reference's (Pach et al., 2025, on top of dictionary_learning) unless a
comment says why ours differs. ``lr=None`` means the size-dependent default
2e-4 / sqrt(F / 2**14) for the TopK family, 1e-3 for ReLU+L1 and 7e-5 for JumpReLU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lucidml.core.config import Config
from lucidml.core.zoo import VLM_DEFAULT

SAEKind = Literal["relu", "topk", "batchtopk", "matryoshka", "jumprelu"]
TokenSelection = Literal["cls", "random_k", "mean", "all"]
# The reference's ImageNet groups; iNat uses (.002, .009, .035, .189, .765).
IMAGENET_GROUP_FRACTIONS = (0.0625, 0.125, 0.25, 0.5625)


class SAEConfig(Config):
    kind: SAEKind = "batchtopk"
    d_in: int = Field(..., ge=1)  # a job config leaves it None: the store's width
    expansion: int = Field(8, ge=1)  # F = expansion * d_in
    # F itself, overriding expansion: SAELens folders whose d_sae is no multiple of d_in
    d_sae: int | None = Field(None, ge=1)
    k: int = Field(20, ge=1)  # TopK family: active latents per sample (JumpReLU: target L0)
    group_fractions: list[float] | None = None  # matryoshka; None: the ImageNet groups
    steps: int = Field(110_000, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float | None = Field(None, gt=0)  # None: the per-kind default (module docstring)
    warmup: int = Field(1000, ge=0)  # linear lr warm-up steps
    decay_start: int | None = Field(None, ge=0)  # linear decay to 0 from this step; None: none
    grad_clip: float | None = Field(1.0, gt=0)
    # ReLU+L1
    l1_coefficient: float = Field(0.1, ge=0)
    l1_warmup: int = Field(2000, ge=0)
    # TopK family
    auxk_alpha: float = Field(0.03, ge=0)  # the paper's; dictionary_learning uses 1/32
    dead_tokens: int = Field(10_000_000, ge=1)  # a latent is dead after this many rows unfired
    theta_beta: float = Field(0.999, ge=0, lt=1)  # BatchTopK inference-threshold EMA
    theta_start: int = Field(1000, ge=0)  # the EMA starts at this step
    # The reference keeps theta = -1 when a run stops before theta_start, so inference keeps
    # every positive activation; we set theta from held-out rows at the end of training.
    calibrate_threshold: bool = True
    legacy_scale: bool = False  # matryoshka: the reference's 1/G**2 reconstruction scale
    # JumpReLU
    jumprelu_bandwidth: float = Field(0.001, gt=0)
    jumprelu_threshold: float = Field(0.001, gt=0)
    jumprelu_sparsity: float = Field(1.0, ge=0)
    # data
    normalize: bool = True  # train on x / s with s = sqrt(mean ||x||^2); folded back on save
    scale_batches: int = Field(100, ge=1)
    val_fraction: float = Field(0.05, ge=0, lt=1)  # held-out rows: threshold, eval
    checkpoint_every: int = Field(1000, ge=1)
    device: str = "auto"
    seed: int = 0

    @property
    def n_latents(self) -> int:
        return self.d_sae or self.expansion * self.d_in

    @model_validator(mode="after")
    def _check(self) -> SAEConfig:
        if self.d_in is None:  # a job config: d_in comes from the activation store
            return self
        F = self.n_latents
        if self.kind in ("topk", "batchtopk", "matryoshka") and self.k > F:
            raise ValueError(f"k = {self.k} is larger than the dictionary ({F} latents)")
        if self.decay_start is not None and self.decay_start >= self.steps:
            # the reference's default decay_start (1e6) exceeds its default steps (1e4)
            raise ValueError(f"decay_start = {self.decay_start} must be below steps = {self.steps}")
        if self.group_fractions is not None:
            if self.kind != "matryoshka":
                raise ValueError("group_fractions only applies to kind 'matryoshka'")
            if not self.group_fractions or any(f <= 0 for f in self.group_fractions):
                raise ValueError("group_fractions must be positive")
            if abs(sum(self.group_fractions) - 1) > 1e-6:
                raise ValueError(f"group_fractions must sum to 1, got {sum(self.group_fractions)}")
            if len(self.group_fractions) > F:
                raise ValueError(f"{len(self.group_fractions)} groups cannot share {F} latents")
        if self.kind == "matryoshka":
            self.group_sizes()
        return self

    def default_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.kind == "relu":
            return 1e-3
        if self.kind == "jumprelu":
            return 7e-5
        return 2e-4 / (self.n_latents / 2**14) ** 0.5

    def group_sizes(self) -> list[int]:
        """Matryoshka group sizes: floor(f_g * F), each at least 1, the remainder to the last."""
        F = self.n_latents
        fractions = self.group_fractions or list(IMAGENET_GROUP_FRACTIONS)
        sizes = [max(1, int(f * F)) for f in fractions[:-1]]
        sizes.append(F - sum(sizes))
        if sizes[-1] < 1:
            raise ValueError(f"group_fractions {fractions} leave no latent for the last group")
        return sizes


class ExtractConfig(Config):
    model: str = VLM_DEFAULT  # embedded name, folder or hub id of a CLIP/SigLIP
    images: str = "digits-train"  # an image folder, or digits-train / digits-test
    layer: int | str = 1  # vision block (0-based), or -1 / "proj" for the projected embedding
    tokens: TokenSelection = "cls"
    k: int = Field(2, ge=1)  # random_k: distinct patch tokens per image
    batch_size: int = Field(256, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    shard_rows: int = Field(65_536, ge=1)
    device: str = "auto"
    seed: int = 0


class TrainJobConfig(SAEConfig):
    store: str | None = None  # an activation store folder (lucid sae extract)
    d_in: int | None = None  # None: the store's width


class ScoreConfig(Config):
    sae: str | None = None  # an SAE folder (ours or SAELens layout)
    store: str | None = None  # activations to score; held-out images for a fair report
    images: str | None = None  # None: the images the store was extracted from
    # None: "pixels" for the embedded digits (an encoder of another family than the
    # CLIP being explained), else the spec's openai/clip-vit-base-patch32
    embed_model: str | None = None
    taxonomy: str | None = None  # JSON {image id: "a/b/c"}; the digit taxonomy for digits
    hai_k: int = Field(16, ge=2)
    batch_size: int = Field(4096, ge=1)
    device: str = "auto"
    seed: int = 0


class SteerConfig(Config):
    sae: str | None = None
    store: str | None = None  # rows whose top images define each latent's concept
    images: str | None = None  # images to steer; None: digits-test for digits stores
    model: str | None = None  # None: the model the store was extracted from
    latents: list[int] | None = None  # None: the n_latents most class-pure live latents
    n_latents: int = Field(4, ge=1)
    alphas: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    alpha_scale: Literal["max", "absolute"] = "max"  # max: multiples of the latent's max
    keep_error: bool = True
    pre_zero: bool = False
    n_images: int = Field(200, ge=1)
    hai_k: int = Field(16, ge=2)
    device: str = "auto"
    seed: int = 0
