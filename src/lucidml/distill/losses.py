"""Student losses: ``loss(student_logits, targets, cfg) -> scalar``.

Targets are a (B, K) tensor: a probability vector for hard labels (one-hot, or mixed by
Mixup/CutMix), teacher logits for soft labels. Soft losses read ``cfg.temperature``,
``cfg.scale_loss`` (multiply by T^2), ``cfg.mse_weight`` and ``cfg.ce_weight``. Every loss
also takes ``labels``, the ground-truth labels as (B, K) (mixed) one-hot rows, which only
MSE+CE reads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lucidml.errors import ConfigError


def cross_entropy(s: torch.Tensor, t: torch.Tensor, cfg, labels=None) -> torch.Tensor:
    """-(1/B) sum t log softmax(s): hard labels as (mixed) one-hot distributions."""
    return -(t * F.log_softmax(s, -1)).sum(-1).mean()


def _t2(loss: torch.Tensor, cfg) -> torch.Tensor:
    return loss * cfg.temperature**2 if cfg.scale_loss else loss


def kl_divergence(s: torch.Tensor, t: torch.Tensor, cfg, labels=None) -> torch.Tensor:
    """(1/B) sum p_t log(p_t / p_s) with p = softmax(logits / T)."""
    temp = cfg.temperature
    log_pt, log_ps = F.log_softmax(t / temp, -1), F.log_softmax(s / temp, -1)
    return _t2((log_pt.exp() * (log_pt - log_ps)).sum(-1).mean(), cfg)


def soft_cross_entropy(s: torch.Tensor, t: torch.Tensor, cfg, labels=None) -> torch.Tensor:
    """-(1/B) sum p_t log p_s with p = softmax(logits / T)."""
    temp = cfg.temperature
    return _t2(-(F.softmax(t / temp, -1) * F.log_softmax(s / temp, -1)).sum(-1).mean(), cfg)


def mse_ce(
    s: torch.Tensor, t: torch.Tensor, cfg, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """w_mse mean((s - z)^2) + w_ce CE(s, y), with y the ground-truth label as the reference
    has it (not the teacher's arg-max, which differs wherever the teacher is wrong)."""
    mse = cfg.mse_weight * (s - t).pow(2).mean()
    if cfg.ce_weight == 0:
        return mse
    if labels is None:
        raise ConfigError("loss 'mse_ce' with ce_weight > 0 needs the ground-truth labels")
    return mse + cfg.ce_weight * cross_entropy(s, labels, cfg)


LOSSES: dict[str, Callable] = {
    "ce": cross_entropy,
    "kl": kl_divergence,
    "soft_ce": soft_cross_entropy,
    "mse_ce": mse_ce,
}
LOSSES_READING_LABELS = {"mse_ce"}  # losses that need the ground-truth labels
