"""Differentiable augmentations: DSA, Mixup, CutMix, and ZCA whitening.

Every random draw comes from an explicit ``torch.Generator`` so one seed fixes the
augmentation of a whole training run, and two calls with equal seeds draw equal
parameters (the "siamese" use in DC/DM, where real and synthetic batches must see the
same transform). DSA ops take per-sample parameters; ``siamese=True`` draws one set
for the whole batch. Parameters are drawn on the CPU generator and moved to the images'
device when applied, so one seed gives one augmentation on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lucidml.errors import ConfigError, ShapeError

Params = dict[str, torch.Tensor]


def _uniform(n: int, gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(x).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


# --- DSA ops: draw(n, gen, strength, shape) -> params; apply(x, params, strength) -> x ------


def _draw_scale(n, gen, ratio, shape):
    return {"sx": _uniform(n, gen, 1 / ratio, ratio), "sy": _uniform(n, gen, 1 / ratio, ratio)}


def _apply_scale(x, p, ratio):
    zero = torch.zeros_like(p["sx"])
    theta = torch.stack(
        [torch.stack([p["sx"], zero, zero], 1), torch.stack([zero, p["sy"], zero], 1)], 1
    )
    return _affine(x, theta)


def _draw_rotate(n, gen, degrees, shape):
    return {"angle": _uniform(n, gen, -degrees, degrees) * math.pi / 180}


def _apply_rotate(x, p, degrees):
    c, s, zero = p["angle"].cos(), p["angle"].sin(), torch.zeros_like(p["angle"])
    theta = torch.stack([torch.stack([c, s, zero], 1), torch.stack([-s, c, zero], 1)], 1)
    return _affine(x, theta)


def _draw_flip(n, gen, prob, shape):
    return {"flip": _uniform(n, gen) < prob}


def _apply_flip(x, p, prob):
    mask = p["flip"].to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def _draw_unit(n, gen, strength, shape):
    return {"u": _uniform(n, gen)}


def _apply_brightness(x, p, strength):
    return x + strength * (p["u"].to(x) - 0.5).view(-1, 1, 1, 1)


def _apply_saturation(x, p, strength):
    pixel_mean = x.mean(1, keepdim=True)
    return pixel_mean + strength * p["u"].to(x).view(-1, 1, 1, 1) * (x - pixel_mean)


def _apply_contrast(x, p, strength):
    image_mean = x.mean((1, 2, 3), keepdim=True)
    return image_mean + (p["u"].to(x).view(-1, 1, 1, 1) + strength) * (x - image_mean)


def _draw_crop(n, gen, fraction, shape):
    h, w = shape[-2:]
    dy, dx = round(fraction * h), round(fraction * w)
    return {
        "dy": torch.randint(-dy, dy + 1, (n,), generator=gen),
        "dx": torch.randint(-dx, dx + 1, (n,), generator=gen),
    }


def _apply_crop(x, p, fraction):
    """Shift each image by whole pixels, filling with zeros (a padded random crop)."""
    n, _, h, w = x.shape
    pad = max(round(fraction * h), round(fraction * w))
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = torch.arange(h, device=dev).view(1, h) + pad + p["dy"].to(dev).expand(n).view(n, 1)
    cols = torch.arange(w, device=dev).view(1, w) + pad + p["dx"].to(dev).expand(n).view(n, 1)
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _draw_cutout(n, gen, fraction, shape):
    h, w = shape[-2:]
    return {
        "cy": torch.randint(0, h, (n,), generator=gen),
        "cx": torch.randint(0, w, (n,), generator=gen),
    }


def _apply_cutout(x, p, fraction):
    """Zero a square of side round(fraction * H) around the drawn pixel (clipped at edges)."""
    n, _, h, w = x.shape
    side, dev = round(fraction * h), x.device
    top = (p["cy"].to(dev).expand(n) - side // 2).view(n, 1, 1)
    left = (p["cx"].to(dev).expand(n) - side // 2).view(n, 1, 1)
    ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    inside = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
    return x * (~inside).unsqueeze(1).to(x)


DSA_OPS: dict[str, tuple[Callable, Callable]] = {
    "scale": (_draw_scale, _apply_scale),
    "rotate": (_draw_rotate, _apply_rotate),
    "flip": (_draw_flip, _apply_flip),
    "brightness": (_draw_unit, _apply_brightness),
    "saturation": (_draw_unit, _apply_saturation),
    "contrast": (_draw_unit, _apply_contrast),
    "crop": (_draw_crop, _apply_crop),
    "cutout": (_draw_cutout, _apply_cutout),
}


def _expand(params: Params, n: int) -> Params:
    return {k: v.expand(n) if v.shape[0] == 1 else v for k, v in params.items()}


class DSA:
    """Differentiable Siamese Augmentation with per-op strengths.

    ``strategy="one"`` applies one op drawn per batch (the reference default);
    ``"all"`` applies every op in order.
    """

    def __init__(self, strengths: dict[str, float], strategy: str = "one"):
        unknown = sorted(set(strengths) - set(DSA_OPS))
        if unknown:
            raise ConfigError(f"unknown DSA op '{unknown[0]}': choose from {', '.join(DSA_OPS)}")
        if strategy not in ("one", "all"):
            raise ConfigError(f"DSA strategy '{strategy}' must be 'one' or 'all'")
        self.strengths = dict(strengths)
        self.strategy = strategy

    def draw(self, x: torch.Tensor, gen: torch.Generator, siamese: bool = False):
        """The ops and their parameters for one batch, as a list of (op, params)."""
        ops = list(self.strengths)
        if self.strategy == "one":
            ops = [ops[int(torch.randint(len(ops), (1,), generator=gen))]]
        n = 1 if siamese else len(x)
        return [(op, DSA_OPS[op][0](n, gen, self.strengths[op], x.shape)) for op in ops]

    def apply(self, x: torch.Tensor, plan) -> torch.Tensor:
        for op, params in plan:
            x = DSA_OPS[op][1](x, _expand(params, len(x)), self.strengths[op])
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator, siamese: bool = False):
        if not self.strengths:
            return x
        return self.apply(x, self.draw(x, gen, siamese))


# --- mixing: (x, t, gen) -> (x, t), with t a (B, K) distribution or logits -----------------


def _beta(a: float, gen: torch.Generator) -> float:
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(a, a))


def mixup(x: torch.Tensor, t: torch.Tensor, gen: torch.Generator, alpha: float = 1.0):
    """x' = lam x + (1 - lam) x[perm] with lam ~ Beta(alpha, alpha); targets mix alike.

    ``alpha <= 0`` is no mixing.
    """
    if alpha <= 0:
        return x, t
    lam = _beta(alpha, gen)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


def cutmix_box(h: int, w: int, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A box of side fraction sqrt(1 - lam) at a uniform centre, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    return y0, y1, x0, x1


def cutmix(x: torch.Tensor, t: torch.Tensor, gen: torch.Generator, beta: float = 1.0):
    """Paste a box from x[perm]; targets mix with lam' = 1 - box area / (H W).

    ``beta <= 0`` is no mixing. The inputs are not modified.
    """
    if beta <= 0:
        return x, t
    lam = _beta(beta, gen)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(h, w, lam, gen)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    mixed = torch.where(mask.to(x.device), x[perm], x)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, kept * t + (1 - kept) * t[perm]


MIXES: dict[str, Callable] = {
    "none": lambda x, t, gen, strength: (x, t),
    "mixup": mixup,
    "cutmix": cutmix,
}


class Augmenter:
    """One training recipe's augmentation: DSA, then Mixup or CutMix (targets mixed)."""

    def __init__(self, dsa: DSA | None = None, mix: str = "none", mix_strength: float = 1.0):
        if mix not in MIXES:
            raise ConfigError(f"unknown mixing '{mix}': choose from {', '.join(MIXES)}")
        self.dsa, self.mix, self.mix_strength = dsa, mix, mix_strength

    @property
    def identity(self) -> bool:
        return (self.dsa is None or not self.dsa.strengths) and self.mix == "none"

    def __call__(self, x: torch.Tensor, t: torch.Tensor, gen: torch.Generator):
        if self.dsa is not None:
            x = self.dsa(x, gen)
        return MIXES[self.mix](x, t, gen, self.mix_strength)


# --- ZCA ------------------------------------------------------------------------------------


class ZCA:
    """Whitening fitted once on the training split: W = U (L + eps I)^(-1/2) U^T."""

    def __init__(self, eps: float = 0.1):
        self.eps = eps
        self.mean: torch.Tensor | None = None
        self.matrix: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> ZCA:
        flat = x.reshape(len(x), -1).double()
        if flat.shape[1] > 64 * 64 * 3:
            raise ShapeError(f"ZCA on {flat.shape[1]}-d images is too large; use <= 64 px images")
        self.mean = flat.mean(0)
        centred = flat - self.mean
        cov = centred.T @ centred / len(flat)
        evals, evecs = torch.linalg.eigh(cov)
        self.matrix = evecs @ torch.diag((evals.clamp(min=0) + self.eps).rsqrt()) @ evecs.T
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            raise ConfigError("ZCA must be fitted before transform")
        flat = (x.reshape(len(x), -1).double() - self.mean) @ self.matrix
        return flat.to(x.dtype).reshape(x.shape)
