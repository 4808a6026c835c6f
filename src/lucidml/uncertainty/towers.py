"""Where each tower's last linear map sits, and the activations that feed it.

The encoders run on the model's device in its dtype; the activations they return are
float64 on ``float64_device(model device)``, where all posterior algebra runs.

An embedding is e = W a + b + r: ``a`` is the projection input, ``b`` its bias (if any)
and ``r`` a residual added after it (SigLIP's image head ends in ``x + mlp(x)``).
The encoders run once; everything BayesVLM does afterwards works on (a, r).

| model  | image layer                      | text layer             |
|--------|----------------------------------|------------------------|
| CLIP   | ``visual_projection`` (no bias)  | ``text_projection``    |
| SigLIP | ``vision_model.head.mlp.fc2``    | ``text_model.head``    |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lucidml.core.hooks import Site, capture
from lucidml.core.progress import track
from lucidml.errors import InputError, ModelError

TOWERS = ("image", "text")
_LAYERS = {
    ("clip", "image"): "visual_projection",
    ("clip", "text"): "text_projection",
    ("siglip", "image"): "vision_model.head.mlp.fc2",
    ("siglip", "text"): "text_model.head",
}


@dataclass
class TowerInputs:
    """Projection inputs ``a`` (N, p) and post-projection residuals ``r`` (N, q) or None."""

    a: torch.Tensor
    r: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, idx) -> TowerInputs:
        return TowerInputs(self.a[idx], None if self.r is None else self.r[idx])

    @staticmethod
    def cat(parts: Sequence[TowerInputs]) -> TowerInputs:
        r = None if parts[0].r is None else torch.cat([p.r for p in parts])
        return TowerInputs(torch.cat([p.a for p in parts]), r)


def float64_device(device) -> torch.device:
    """Where float64 posterior algebra runs for a model on ``device``: the same device,
    or the CPU for one without float64 (Apple's MPS)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def projection_layer(vlm, tower: str) -> nn.Linear:
    """The linear layer the posterior is placed on, checked to be a Linear into the joint space."""
    name = _LAYERS[(vlm.kind, tower)]
    try:
        layer = vlm.model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"{vlm.name} has no {tower} projection layer '{name}'") from None
    dim = (
        vlm.model.config.projection_dim
        if vlm.kind == "clip"
        else vlm.model.config.vision_config.hidden_size
    )
    if not isinstance(layer, nn.Linear) or layer.out_features != dim:
        raise ModelError(
            f"{vlm.name}'s {tower} projection '{name}' is not a linear map into "
            f"the {dim}-dimensional joint embedding space"
        )
    return layer


def image_inputs(vlm, images: torch.Tensor, batch_size: int = 256) -> TowerInputs:
    """Projection inputs (and SigLIP's residual) for images (N, C, H, W), no gradients.
    Images may sit on any device: each batch moves to the model's device on its own."""
    if len(images) == 0:
        raise InputError("no images given; expected a (N, C, H, W) tensor with N > 0")
    vlm.preprocess(images[:1])  # a wrong size or channel count fails before any bar starts
    out = float64_device(vlm.device)
    parts = []
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        for start in track(starts, f"encoding {len(images)} images"):
            chunk = images[start : start + batch_size]
            if vlm.kind == "clip":
                parts.append(TowerInputs(vlm.image_features(chunk).to(out, torch.float64)))
                continue
            site = Site(_LAYERS[("siglip", "image")], pre=True)
            with capture(vlm.model, [site, _LAYERS[("siglip", "image")]]) as acts:
                pooled = vlm.model.vision_model(pixel_values=vlm.preprocess(chunk)).pooler_output
            a, fc2 = acts[site], acts[_LAYERS[("siglip", "image")]]
            a, fc2 = a.reshape(-1, a.shape[-1]), fc2.reshape(-1, fc2.shape[-1])
            parts.append(
                TowerInputs(a.to(out, torch.float64), (pooled - fc2).to(out, torch.float64))
            )
    return TowerInputs.cat(parts)


def text_inputs(vlm, texts: Sequence[str], batch_size: int = 256) -> TowerInputs:
    """Projection inputs for texts, no gradients (no residual on either model's text side)."""
    texts = list(texts)
    out = float64_device(vlm.device)
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        parts = [
            vlm.text_features(texts[i : i + batch_size]).to(out, torch.float64)
            for i in track(starts, f"encoding {len(texts)} texts")
        ]
    return TowerInputs(torch.cat(parts))
