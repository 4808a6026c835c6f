"""Gaussian logits and the probabilities they imply (probit approximation or sampling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lucidml.errors import ConfigError

PREDICTIVES = ("probit", "mc", "samples")  # samples: weight draws, see SampledLogits


def probit_scale(var: torch.Tensor) -> torch.Tensor:
    """kappa = (1 + pi v / 8)^(-1/2): E[sigmoid(z)] ~ sigmoid(kappa mu) for z ~ N(mu, v)."""
    return (1 + math.pi * var / 8).rsqrt()


def probit_softmax(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Probit-approximated E[softmax(z)] for independent z_c ~ N(mean_c, var_c), (N, C).

    E[softmax(z)] does not change when a constant is added to a row of z, but
    softmax(kappa * mean) does when the kappas differ: CLIP logits sit near 20-30 (SigLIP's
    add a bias), so the raw form shrinks a large common offset by each class's own kappa.
    The row's largest mean is subtracted first, which makes the approximation
    shift-invariant and, on CLIP-scale logits, several times closer to sampling."""
    centred = mean - mean.max(dim=-1, keepdim=True).values
    return torch.softmax(probit_scale(var) * centred, dim=-1)


def probit_sigmoid(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Probit-approximated E[sigmoid(z)] per entry (SigLIP's multi-label view)."""
    return torch.sigmoid(probit_scale(var) * mean)


def mc_softmax(
    mean: torch.Tensor,
    var: torch.Tensor,
    n_samples: int = 400,
    generator: torch.Generator | None = None,
    chunk: int = 50,
) -> torch.Tensor:
    """Monte Carlo E[softmax(z)] over ``n_samples`` draws of z ~ N(mean, diag var); the
    draws come from the CPU ``generator`` and move to ``mean``'s device."""
    std, total = var.sqrt(), torch.zeros_like(mean)
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        eps = torch.randn((k, *mean.shape), generator=generator, dtype=mean.dtype)
        eps = eps.to(mean.device)
        total += torch.softmax(mean + std * eps, dim=-1).sum(0)
    return total / n_samples


@dataclass
class ProbabilisticLogits:
    """Logits as independent Gaussians: ``mean`` and ``var`` are (N, C)."""

    mean: torch.Tensor
    var: torch.Tensor

    def probs(self, method: str = "probit", n_samples: int = 400, seed: int = 0) -> torch.Tensor:
        """Class probabilities by the probit approximation (default) or Monte Carlo over
        the Gaussian logits (``samples`` needs the weights: ``BayesVLM.predict``)."""
        if method == "probit":
            return probit_softmax(self.mean, self.var)
        if method == "mc":
            gen = torch.Generator().manual_seed(seed)
            return mc_softmax(self.mean, self.var, n_samples, generator=gen)
        raise ConfigError(f"unknown predictive '{method}', expected one of {PREDICTIVES}")

    def sigmoid_probs(self) -> torch.Tensor:
        """Probit-corrected per-class sigmoids, SigLIP's multi-label reading of its logits."""
        return probit_sigmoid(self.mean, self.var)


@dataclass
class SampledLogits:
    """Logits under S joint draws of the projection weights, pushed through the whole
    cosine (no Gaussian approximation of the logits): ``samples`` is (S, N, C)."""

    samples: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.samples.mean(0)

    @property
    def var(self) -> torch.Tensor:
        return self.samples.var(0)

    def probs(self, *_, **__) -> torch.Tensor:
        """E[softmax] over the weight draws."""
        return torch.softmax(self.samples, dim=-1).mean(0)
