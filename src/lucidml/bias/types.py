"""What the bias pipeline's stages hand each other: boxes, labels, and the plug-in shapes.

Images travel as float tensors (3, H, W) in [0, 1]. A detector maps a list of images to
one list of boxes per image; a labeller maps a list of person crops to one label each.
Labels are *perceived* gender as judged by a classifier, never anyone's identity, and
"unclear" is a first-class outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch

GENDERS = ("female", "male", "unclear")


class Box(NamedTuple):
    """A person box in pixels (x0, y0) inclusive to (x1, y1) exclusive, with a confidence."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float

    @property
    def min_side(self) -> float:
        return min(self.x1 - self.x0, self.y1 - self.y0)


class Label(NamedTuple):
    """One crop's label; ``raw`` and ``permutation`` keep an MLLM's answer for audits."""

    gender: str  # one of GENDERS
    raw: str | None = None  # the labeller's raw answer, if it has one
    permutation: str | None = None  # option order shown, e.g. "CABD"
    parsed: bool = True  # False: the answer could not be parsed (counted as unclear)


class Detector(Protocol):
    name: str

    def __call__(self, images: Sequence[torch.Tensor]) -> list[list[Box]]: ...


class Labeller(Protocol):
    name: str

    def __call__(self, crops: Sequence[torch.Tensor]) -> list[Label]: ...


class ImageModel(Protocol):
    """A text-to-image plug-in: one image per (prompt, seed)."""

    name: str

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[torch.Tensor]: ...
