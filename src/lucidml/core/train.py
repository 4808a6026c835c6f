"""One supervised training loop: hard or soft targets, optional teacher, augmentation.

Targets per batch are either hard labels ``(B,)`` or soft vectors ``(B, C)``
(probabilities or logits, as the loss expects). ``augment(x, t) -> (x, t)`` transforms
a batch and may mix targets (Mixup, CutMix). ``targets`` may be a tensor aligned with
the training images or a callable teacher ``f(x_augmented) -> logits`` that relabels
every augmented batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lucidml.core.config import Config
from lucidml.errors import ConfigError, ShapeError


class TrainConfig(Config):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["none", "step", "cosine"] = "step"
    step_every: int | None = None  # epochs between decays for "step"; default epochs // 2
    step_gamma: float = 0.1
    eval_every: int = Field(0, ge=0)  # 0: evaluate only at the end
    temperature: float = Field(1.0, gt=0)  # for KL / soft cross-entropy on logits
    kl_scale_t2: bool = True  # multiply the KL loss by T^2 (Hinton et al.)
    seed: int = 0
    device: str = "cpu"


# --- losses -----------------------------------------------------------------------------
# Every loss takes (student_logits, targets, cfg); soft targets are teacher *logits*.


def _hard_or_soft(t: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(t, n_classes).float() if t.ndim == 1 else t


def ce_loss(s: torch.Tensor, t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy against hard labels or against a target *distribution*."""
    if t.ndim == 1:
        return F.cross_entropy(s, t)
    return -(t * F.log_softmax(s, 1)).sum(1).mean()


def soft_ce_loss(s: torch.Tensor, t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy against softmax(teacher_logits / T)."""
    if t.ndim == 1:
        return F.cross_entropy(s, t)
    T = cfg.temperature
    return -(F.softmax(t / T, 1) * F.log_softmax(s / T, 1)).sum(1).mean()


def kl_loss(s: torch.Tensor, t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), times T^2 when ``kl_scale_t2``."""
    if t.ndim == 1:
        return F.cross_entropy(s, t)
    T = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True
    )
    return kl * T * T if cfg.kl_scale_t2 else kl


def mse_ce_loss(s: torch.Tensor, t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """MSE between logits and soft targets plus CE against the targets' arg-max."""
    if t.ndim == 1:
        return F.cross_entropy(s, t)
    return F.mse_loss(s, t) + F.cross_entropy(s, t.argmax(1))


LOSSES: dict[str, Callable] = {
    "ce": ce_loss,
    "soft_ce": soft_ce_loss,
    "kl": kl_loss,
    "mse_ce": mse_ce_loss,
}


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    test_acc: float = float("nan")  # at the selected epoch
    final_test_acc: float = float("nan")
    best_val_acc: float | None = None
    selected_epoch: int = 0


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device: str = "cpu"
) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / max(len(x), 1)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
    if cfg.schedule == "step":
        every = (cfg.step_every or max(cfg.epochs // 2, 1)) * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=cfg.step_gamma)
    return None


def fit_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: TrainConfig | None = None,
    targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss: str | Callable = "ce",
    augment: Callable | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train = (x, y)`` and report test accuracy.

    With ``val`` the reported test accuracy is the one at the epoch of best validation
    accuracy (evaluated every ``eval_every`` epochs and at the end); otherwise it is the
    last epoch's.
    """
    cfg = cfg or TrainConfig()
    x, y = train
    if len(x) != len(y):
        raise ShapeError(f"{len(x)} training images but {len(y)} labels")
    if isinstance(targets, torch.Tensor) and len(targets) != len(x):
        raise ShapeError(f"{len(x)} training images but {len(targets)} soft targets")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss '{loss}': choose one of {', '.join(LOSSES)}")
        loss_fn = LOSSES[loss]
    else:
        loss_fn = loss

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    model.to(dev)
    opt = make_optimizer(model.parameters(), cfg)
    steps = math.ceil(len(x) / cfg.batch_size)
    sched = make_schedule(opt, cfg, steps)
    stored = targets if isinstance(targets, torch.Tensor) else y
    teacher = targets if callable(targets) and not isinstance(targets, torch.Tensor) else None

    result = TrainResult(model=model)
    best_state, best_val = None, -1.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            xb, tb = x[idx].to(dev), stored[idx].to(dev)
            if augment is not None:
                xb, tb = augment(xb, tb)
            if teacher is not None:
                with torch.no_grad():
                    tb = teacher(xb)
            loss_val = loss_fn(model(xb), tb, cfg)
            opt.zero_grad(set_to_none=True)
            loss_val.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += loss_val.item() * len(idx)
            seen += len(idx)
        record = {"epoch": epoch, "loss": total / seen}
        last = epoch == cfg.epochs
        if last or (cfg.eval_every and epoch % cfg.eval_every == 0):
            if val is not None:
                record["val_acc"] = evaluate_accuracy(model, *val, device=dev)
                if record["val_acc"] > best_val:
                    best_val, result.selected_epoch = record["val_acc"], epoch
                    best_state = copy.deepcopy(model.state_dict())
            if test is not None:
                record["test_acc"] = evaluate_accuracy(model, *test, device=dev)
        result.history.append(record)

    final = result.history[-1]
    result.final_test_acc = final.get("test_acc", float("nan"))
    if val is not None and best_state is not None:
        result.best_val_acc = best_val
        sel = next(h for h in result.history if h["epoch"] == result.selected_epoch)
        result.test_acc = sel.get("test_acc", float("nan"))
        model.load_state_dict(best_state)
    else:
        result.selected_epoch = cfg.epochs
        result.test_acc = result.final_test_acc
    return result
