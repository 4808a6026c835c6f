"""Steering a vision-language model by clamping one SAE latent inside its vision tower.

Inside ``steer(...)`` the chosen layer's output h (every token) is replaced by

    h' = decode(f') + r,   f = encode(h),   f' = f with f_j <- alpha (others zeroed if
                                             pre_zero),
    r = h - decode(f) under keep_error (default), else 0 (the paper's hook).

With ``keep_error`` and a linear decoder, h' - h = (alpha - f_j) W_dec[j]: only the
latent's own direction moves, and the SAE's reconstruction error does not leak into the
steered model (the reference applies a 2-token-trained SAE to all tokens without it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from lucidml.core.hooks import patch
from lucidml.errors import InputError
from lucidml.sae.extraction import resolve_layer


def layer_module(vlm, layer) -> str:
    """The module whose output is ``layer``: a vision block, or the image projection."""
    kind, index = resolve_layer(vlm, layer)
    if kind == "proj":
        return "model.visual_projection"
    return vlm.vision_block_name(index)


def steered_codes(
    f: torch.Tensor, latent: int, alpha: float | None, pre_zero: bool = False
) -> torch.Tensor:
    """Codes with latent ``latent`` set to ``alpha`` (None keeps its own value)."""
    out = torch.zeros_like(f) if pre_zero else f.clone()
    out[..., latent] = f[..., latent] if alpha is None else alpha
    return out


def steer_tensor(
    h: torch.Tensor,
    sae,
    latent: int,
    alpha: float | None,
    *,
    keep_error: bool = True,
    pre_zero: bool = False,
) -> torch.Tensor:
    """h' for activations ``h`` (..., d_in): the formula of the module docstring."""
    x = h.to(sae.W_dec.dtype)
    f = sae.encode(x)
    out = sae.decode(steered_codes(f, latent, alpha, pre_zero))
    if keep_error:
        out = out + (x - sae.decode(f))
    return out.to(h.dtype)


def _check(sae, latent: int, alpha: float | None) -> None:
    if not 0 <= latent < sae.n_latents:
        raise InputError(f"latent {latent} is out of range: the SAE has {sae.n_latents} latents")
    if alpha is not None and not np.isfinite(alpha):
        raise InputError(f"steering strength alpha must be finite, got {alpha}")


@contextmanager
def steer(
    vlm,
    sae,
    layer,
    latent: int,
    alpha: float | None,
    *,
    keep_error: bool = True,
    pre_zero: bool = False,
) -> Iterator[None]:
    """Run ``vlm`` with latent ``latent`` clamped to ``alpha`` at ``layer`` (every token)."""
    _check(sae, latent, alpha)
    module = layer_module(vlm, layer)
    with (
        torch.no_grad(),
        patch(
            vlm,
            module,
            lambda h: steer_tensor(h, sae, latent, alpha, keep_error=keep_error, pre_zero=pre_zero),
        ),
    ):
        yield


def concept_embeddings(vlm, images: torch.Tensor, top_indices: np.ndarray) -> torch.Tensor:
    """Per latent, the normalised mean embedding of its top-activating images, (K, D)."""
    emb = vlm.encode_images(images)
    idx = torch.as_tensor(np.asarray(top_indices), dtype=torch.long)
    return F.normalize(emb[idx].mean(1), dim=-1)


def steered_predictions(
    vlm,
    sae,
    layer,
    latent: int,
    alpha: float | None,
    images: torch.Tensor,
    class_embeddings: torch.Tensor,
    *,
    keep_error: bool = True,
    pre_zero: bool = False,
) -> torch.Tensor:
    """The zero-shot class each image moves to with the latent clamped, (N,)."""
    with steer(vlm, sae, layer, latent, alpha, keep_error=keep_error, pre_zero=pre_zero):
        emb = vlm.encode_images(images)
    return (emb @ class_embeddings.T).argmax(-1)


def steering_scores(
    predictions: torch.Tensor, class_embeddings: torch.Tensor, concept: torch.Tensor
) -> torch.Tensor:
    """cos(text embedding of each predicted class, the latent's concept embedding), (N,).

    The embedded default's form of the paper's score: the "output concept" of a steered
    image is the zero-shot class it moves to, compared with the mean image embedding of
    the latent's top images."""
    return class_embeddings[predictions] @ concept
