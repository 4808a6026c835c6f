"""One wrapper for contrastive vision-language models (CLIP, SigLIP, digits-clip).

Images go in as float tensors ``(N, C, H, W)`` in [0, 1]; the wrapper resizes and
normalises them for the underlying model. The embedding path is exposed in its parts,
``image_features -> image_projection -> normalise``, because post-hoc methods (Laplace
posteriors, SAEs, steering) need the projection's input and the projection itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lucidml.errors import InputError, ModelError, ShapeError

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        kind: str,
        name: str,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        text_padding: str | bool = True,
        max_text_length: int | None = None,
        resize: bool = True,
    ):
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ModelError(f"unsupported vision-language model kind '{kind}'")
        self.model, self.tokenizer, self.kind, self.name = model, tokenizer, kind, name
        self.image_size, self.channels = image_size, channels
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.templates = tuple(templates)
        self.text_padding, self.max_text_length = text_padding, max_text_length
        # Real CLIP/SigLIP accept any image size (resized here); tiny embedded models don't.
        self.resize = resize
        self.eval()

    # --- parts --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_projection(self) -> nn.Module:
        """The last layer mapping pooled vision features to the joint embedding space."""
        if self.kind == "clip":
            return self.model.visual_projection
        # SigLIP pools with an attention head plus a residual MLP: no single linear map
        # ends the vision tower, so there is no projection to expose.
        raise ModelError(f"{self.name} (SigLIP) has no separate image projection layer")

    @property
    def text_projection(self) -> nn.Module:
        if self.kind == "clip":
            return self.model.text_projection
        return self.model.text_model.head

    @property
    def vision_blocks(self) -> nn.ModuleList:
        """The vision tower's transformer blocks, indexable by layer."""
        return self.model.vision_model.encoder.layers

    def vision_block_name(self, index: int) -> str:
        n = len(self.vision_blocks)
        if not -n <= index < n:
            raise ModelError(f"vision block {index} is out of range: {self.name} has {n} blocks")
        return f"model.vision_model.encoder.layers.{index % n}"

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor:
        bias = getattr(self.model, "logit_bias", None)
        return bias if bias is not None else torch.zeros((), device=self.device)

    # --- inputs -------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ShapeError(f"expected images as a (N, C, H, W) tensor, got {shape}")
        x = images.to(self.device, torch.float32)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] == 3 and self.channels == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ShapeError(
                    f"{self.name} expects {self.channels}-channel images, got {x.shape[1]} channels"
                )
        if x.shape[-2:] != (self.image_size, self.image_size):
            if not self.resize:
                raise ShapeError(
                    f"{self.name} expects {self.image_size}x{self.image_size} "
                    f"images, got {x.shape[-2]}x{x.shape[-1]}"
                )
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (x - self.pixel_mean) / self.pixel_std

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise InputError("the list of texts is empty")
        kw = {"padding": self.text_padding, "truncation": True, "return_tensors": "pt"}
        if self.max_text_length:
            kw["max_length"] = self.max_text_length
        enc = self.tokenizer(list(texts), **kw)
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }

    # --- features and embeddings --------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Input of ``image_projection`` for each image, (N, F)."""
        px = self.preprocess(images)
        if self.kind != "clip":
            raise ModelError(f"{self.name} (SigLIP) has no separate image projection layer")
        return self.model.vision_model(pixel_values=px).pooler_output

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised joint-space image embeddings, (N, D)."""
        px = self.preprocess(images)
        if self.kind == "clip":
            return self.image_projection(self.model.vision_model(pixel_values=px).pooler_output)
        return self.model.vision_model(pixel_values=px).pooler_output

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Input of ``text_projection`` for each text, (M, F)."""
        enc = self.tokenize(texts)
        if self.kind == "clip":
            return self.model.text_model(**enc).pooler_output
        # SigLIP's text head reads the last position of the normed final hidden state.
        return self.model.text_model(input_ids=enc["input_ids"]).last_hidden_state[:, -1]

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised joint-space text embeddings, (M, D)."""
        enc = self.tokenize(texts)
        if self.kind == "clip":
            return self.text_projection(self.model.text_model(**enc).pooler_output)
        return self.model.text_model(input_ids=enc["input_ids"]).pooler_output

    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised image embeddings, (N, D); batched, no gradients."""
        with torch.no_grad():
            parts = [
                self.image_embeddings(images[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            ]
        return F.normalize(torch.cat(parts), dim=-1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings, (M, D); batched, no gradients."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("the list of texts is empty")
        with torch.no_grad():
            parts = [
                self.text_embeddings(texts[i : i + batch_size])
                for i in range(0, len(texts), batch_size)
            ]
        return F.normalize(torch.cat(parts), dim=-1)

    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """One normalised text embedding per class: the mean over templates, renormalised."""
        if len(class_names) == 0:
            raise InputError("the list of class names is empty")
        templates = list(templates or self.templates)
        texts = [t.format(c) for c in class_names for t in templates]
        emb = self.encode_texts(texts).view(len(class_names), len(templates), -1).mean(1)
        return F.normalize(emb, dim=-1)

    def zero_shot(
        self,
        images: torch.Tensor,
        class_names: Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Zero-shot logits (N, C): logit_scale * cos(image, class) + logit_bias."""
        txt = self.class_embeddings(class_names, templates)
        img = self.encode_images(images)
        with torch.no_grad():
            return self.logit_scale * img @ txt.T + self.logit_bias
