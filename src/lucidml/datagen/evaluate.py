"""Downstream evaluation: train a classifier on synthetic images, test it on real ones.

``train_classifier`` trains one classifier through ``lucidml.core.train.fit_classifier``:
a small ConvNet by default (digits), or any module from a factory such as
``ClipClassifier`` (spec Stage 3). The training set is the synthetic images, optionally
mixed with the real shots as L = lambda * L_real + (1 - lambda) * L_syn, where every
synthetic batch is paired with a batch of shots. It reports accuracy on the real test
split with n and a Wilson 95% interval. The model is selected on a validation split
(refused if it shares an image with the test split) or else taken at the last epoch.

``evaluate_seeds`` repeats a run over seeds (mean, std, t-interval, and the
majority-class rate of the test split); ``real_shots_baseline`` trains the same
classifier on the shots alone, the simplest baseline a synthetic result has to beat.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lucidml.core.config import Config
from lucidml.core.metrics import mean_std, t_interval, wilson_interval
from lucidml.core.runs import derive_seed, digest
from lucidml.core.train import TrainConfig, fit_classifier
from lucidml.errors import InputError, ModelError, ShapeError

Split = tuple[torch.Tensor, torch.Tensor]


class ClassifierConfig(Config):
    """How the downstream classifier trains. The optimiser and weight decay are the
    paper's (AdamW, 1e-4); the rest is sized for the digits ConvNet on purpose."""

    epochs: int = Field(30, ge=1)  # paper: 60 epochs for CLIP ViT-B/16
    batch_size: int = Field(64, ge=1)  # paper: 256
    lr: float = Field(1e-3, gt=0)  # paper: 1e-4 for CLIP LoRA
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    # paper: warm-up from 1e-8, then cosine to 1e-8; core.train has no warm-up yet
    schedule: Literal["none", "step", "cosine"] = "cosine"
    eval_every: int = Field(1, ge=1)  # epochs between validation checks (model selection)
    pool_lambda: float = Field(0.8, ge=0, le=1)  # weight of the real-shot loss when mixed
    width: int = Field(16, ge=1)  # ConvNet channels
    device: str = "cpu"


class ConvNet(nn.Module):
    """Two 3x3 convolutions with a 2x2 max-pool between them and a linear head on the
    flattened map (kept, not pooled away: where a stroke is tells digits apart); about
    10k parameters at width 16 on 8x8 one-channel images."""

    def __init__(self, channels: int, n_classes: int, image_size: tuple[int, int], width: int = 16):
        super().__init__()
        h, w = image_size
        if h < 2 or w < 2:
            raise ShapeError(f"the ConvNet needs images of at least 2x2 pixels, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * (h // 2) * (w // 2), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ClipClassifier(nn.Module):
    """A vision-language model as a classifier: logits = s * cos(f_img(x), f_txt(prompt_c))
    + b, with s (and b, 0 for CLIP) the model's own frozen logit scale and bias.

    LoRA sits on the q and v projections of both towers (peft); every other weight is
    frozen. The class text embedding is the renormalised mean over ``templates`` and is
    recomputed on every call, because the text tower trains too. Works on a deep copy of
    ``vlm``, so the caller's model is never changed."""

    def __init__(
        self,
        vlm,
        class_names: Sequence[str],
        templates: Sequence[str] | None = None,
        rank: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.1,
        targets: Sequence[str] = ("q_proj", "v_proj"),
    ):
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__()
        if len(class_names) == 0:
            raise InputError("the list of class names is empty")
        self.vlm = copy.deepcopy(vlm)
        lora = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)
        )
        try:
            inject_adapter_in_model(lora, self.vlm.model)
        except ValueError:
            raise ModelError(
                f"{vlm.name} has no modules named {', '.join(targets)} to put LoRA on"
            ) from None
        for name, param in self.vlm.named_parameters():
            param.requires_grad_("lora_" in name)
        self.class_names = list(class_names)
        self.templates = list(templates or vlm.templates)
        self.prompts = [t.format(c) for c in self.class_names for t in self.templates]

    def class_embeddings(self) -> torch.Tensor:
        """(C, D) normalised text embeddings, with gradients."""
        text = F.normalize(self.vlm.text_embeddings(self.prompts), dim=-1)
        text = text.view(len(self.class_names), len(self.templates), -1).mean(1)
        return F.normalize(text, dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.vlm.image_embeddings(images), dim=-1)
        return self.vlm.logit_scale * image @ self.class_embeddings().T + self.vlm.logit_bias


# --- inputs ------------------------------------------------------------------------------


def _images(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ShapeError(f"{name} must be a (N, C, H, W) tensor, got {shape}")
    if len(x) == 0:
        raise InputError(f"{name} are empty")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contain NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise InputError(f"{name} must lie in [0, 1], got values from {low:.3g} to {high:.3g}")
    return x


def _labels(y, n: int, name: str) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != n:
        shape = tuple(y.shape) if hasattr(y, "shape") else type(y).__name__
        raise ShapeError(f"{name} must be a 1-d tensor of {n} class indices, got {shape}")
    if y.is_floating_point() or y.is_complex():
        raise InputError(f"{name} must be integer class indices, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise InputError(f"{name} hold a negative class index {int(y.min())}")
    return y.long()


def _split(split, name: str) -> Split:
    x, y = split
    x = _images(x, f"{name} images")
    return x, _labels(y, len(x), f"{name} labels")


def image_hashes(images: torch.Tensor) -> set[str]:
    """Content digests of each image (as float32, so a dtype change is the same image)."""
    return {digest(img) for img in images.detach().to("cpu", torch.float32).contiguous()}


def check_disjoint(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Refuse two image sets that share any image (by content hash)."""
    shared = len(image_hashes(a) & image_hashes(b))
    if shared:
        raise InputError(
            f"the {name_a} shares {shared} of its {len(a)} images with the {name_b}; "
            f"give a {name_a} disjoint from the {name_b}"
        )


# --- the loss mix ------------------------------------------------------------------------


def mixed_targets(
    syn_labels: torch.Tensor, real_labels: torch.Tensor, n_classes: int, pool_lambda: float
) -> torch.Tensor:
    """Soft targets for a batch of synthetic then real images whose mean soft
    cross-entropy is lambda * mean_real CE + (1 - lambda) * mean_syn CE: each one-hot row
    is scaled by its source's weight times the batch size over the source's count."""
    n = len(syn_labels) + len(real_labels)
    w_syn = (1 - pool_lambda) * n / len(syn_labels)
    w_real = pool_lambda * n / len(real_labels)
    return torch.cat(
        [
            F.one_hot(syn_labels, n_classes).float() * w_syn,
            F.one_hot(real_labels, n_classes).float() * w_real,
        ]
    )


class _ShotMixer:
    """``fit_classifier``'s batch hook: appends a random batch of real shots to each
    synthetic batch and returns the weighted targets of ``mixed_targets``, so that every
    step optimises the reference's lambda-mix, not just its average over an epoch."""

    def __init__(self, shots: Split, n_classes: int, pool_lambda: float, batch: int, seed: int):
        self.x, self.y = shots
        self.n_classes, self.pool_lambda = n_classes, pool_lambda
        self.batch = min(batch, len(self.x))
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "real-shots"))

    def __call__(self, xb: torch.Tensor, tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(self.x), generator=self.generator)[: self.batch]
        x_real, y_real = self.x[idx].to(xb.device), self.y[idx].to(tb.device)
        targets = mixed_targets(tb, y_real, self.n_classes, self.pool_lambda)
        return torch.cat([xb, x_real]), targets


# --- training and reporting --------------------------------------------------------------


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: ClassifierConfig | None = None,
    val: Split | None = None,
    real_shots: Split | None = None,
    seed: int = 0,
    model: Callable[[], nn.Module] | None = None,
    n_classes: int | None = None,
) -> dict:
    """Train on (train_x, train_y) (plus ``real_shots`` with the lambda-mix), test on the
    real test split. ``model`` builds the network (called after seeding; default the
    ConvNet). Returns JSON-able numbers: test accuracy with n and a Wilson 95% interval,
    how the epoch was selected, and the per-epoch history."""
    cfg = config or ClassifierConfig()
    x, y = _split((train_x, train_y), "training")
    tx, ty = _split((test_x, test_y), "test")
    check_disjoint(x, tx, "training set", "test split")
    splits = {"training": x, "test": tx}
    if val is not None:
        val = _split(val, "validation")
        check_disjoint(val[0], tx, "validation split", "test split")
        splits["validation"] = val[0]
    if real_shots is not None:
        real_shots = _split(real_shots, "real shot")
        check_disjoint(real_shots[0], tx, "real shots", "test split")
        splits["real shot"] = real_shots[0]
    for name, images in splits.items():
        if images.shape[1:] != x.shape[1:]:
            raise ShapeError(
                f"{name} images are {tuple(images.shape[1:])} but training images are "
                f"{tuple(x.shape[1:])}"
            )
    labels = [y, ty] + [s[1] for s in (val, real_shots) if s is not None]
    top = max(int(t.max()) for t in labels)
    n_classes = n_classes or top + 1
    if top >= n_classes:
        raise InputError(f"a label is {top} but there are only {n_classes} classes")

    torch.manual_seed(seed)
    net = (
        model()
        if model is not None
        else ConvNet(x.shape[1], n_classes, tuple(x.shape[2:]), cfg.width)
    )
    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        eval_every=cfg.eval_every if val is not None else 0,
        seed=seed,
        device=cfg.device,
    )
    mixer = None
    if real_shots is not None:
        mixer = _ShotMixer(real_shots, n_classes, cfg.pool_lambda, cfg.batch_size, seed)
    result = fit_classifier(net, (x, y), (tx, ty), train_cfg, augment=mixer, val=val)

    n = len(tx)
    correct = round(result.test_acc * n)
    low, high = wilson_interval(correct, n)
    return {
        "test_acc": correct / n,
        "correct": correct,
        "n_test": n,
        "ci95": [low, high],
        "selection": "validation" if val is not None else "last_epoch",
        "selected_epoch": result.selected_epoch,
        "val_acc": result.best_val_acc,
        "n_val": len(val[0]) if val is not None else 0,
        "n_train": len(x),
        "n_real_shots": len(real_shots[0]) if real_shots is not None else 0,
        "pool_lambda": cfg.pool_lambda if real_shots is not None else None,
        "seed": seed,
        "history": result.history,
    }


def majority_rate(labels: torch.Tensor) -> float:
    """Accuracy of always predicting the most frequent class: the chance baseline."""
    return float(torch.bincount(labels.long()).max()) / len(labels)


def evaluate_seeds(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: ClassifierConfig | None = None,
    val: Split | None = None,
    real_shots: Split | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    model: Callable[[], nn.Module] | None = None,
    n_classes: int | None = None,
) -> dict:
    """``train_classifier`` once per seed: mean and std of test accuracy over seeds, a
    t-interval of the mean, the chance (majority-class) rate, and every run."""
    if len(seeds) == 0:
        raise InputError("seeds is empty: give at least one seed")
    runs = [
        train_classifier(
            train_x, train_y, test_x, test_y, config, val, real_shots, s, model, n_classes
        )
        for s in seeds
    ]
    accs = [r["test_acc"] for r in runs]
    mean, std = mean_std(accs)
    return {
        "mean": mean,
        "std": std,
        "ci95": _listed(t_interval(accs)),
        "n_seeds": len(runs),
        "n_test": runs[0]["n_test"],
        "chance": majority_rate(test_y),
        "seeds": list(seeds),
        "runs": runs,
    }


def real_shots_baseline(
    shots_x: torch.Tensor,
    shots_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: ClassifierConfig | None = None,
    val: Split | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    model: Callable[[], nn.Module] | None = None,
    n_classes: int | None = None,
    synthetic_size: int | None = None,
) -> dict:
    """The same classifier trained on the real shots alone (``evaluate_seeds``' result).

    With ``synthetic_size`` (the size of the synthetic set it is compared with) the epochs
    are scaled so the baseline takes as many optimiser steps as the synthetic run: 40
    shots at the synthetic run's epochs would otherwise train for a few dozen steps."""
    cfg = config or ClassifierConfig()
    if synthetic_size is not None:
        steps = cfg.epochs * math.ceil(synthetic_size / cfg.batch_size)
        cfg = cfg.updated(epochs=math.ceil(steps / math.ceil(len(shots_x) / cfg.batch_size)))
    return evaluate_seeds(shots_x, shots_y, test_x, test_y, cfg, val, None, seeds, model, n_classes)


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else list(interval)
