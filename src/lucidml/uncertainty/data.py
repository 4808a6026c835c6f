"""Reading user inputs (folders of images and captions, class lists) and the digits shifts.

A *pairs* folder holds ``images.npy`` (N, C, H, W) or (N, H, W) floats in [0, 1] and
``captions.txt`` (one caption per line, N lines). An *images* folder holds ``images.npy``
and optionally ``labels.npy`` (N,) integer class indices. The name ``digits`` stands for
the embedded digits splits; ``digits-noise``, ``digits-rotate`` and ``digits-invert`` for
shifted copies of the digits test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lucidml.errors import InputError, ShapeError


def add_noise(x: torch.Tensor, seed: int = 0, std: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def rotate(x: torch.Tensor, seed: int = 0, degrees: float = 30.0) -> torch.Tensor:
    """Rotate every image by +-``degrees`` (sign drawn per image), bilinear, zero fill."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (len(x),), generator=g) * 2 - 1
    t = sign * math.radians(degrees)
    cos, sin = t.cos(), t.sin()
    theta = torch.stack([torch.stack([cos, -sin, 0 * t], 1), torch.stack([sin, cos, 0 * t], 1)], 1)
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def invert(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return 1 - x


SHIFTS: dict[str, Callable[..., torch.Tensor]] = {
    "noise": add_noise,
    "rotate": rotate,
    "invert": invert,
}


def digits_captions(labels: torch.Tensor, class_names, seed: int = 0) -> list[str]:
    """One caption per digit image, from a template drawn per image."""
    from lucidml.core.digits_clip import TEMPLATES

    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(TEMPLATES), (len(labels),), generator=g)
    return [
        TEMPLATES[int(k)].format(class_names[int(y)]) for k, y in zip(picks, labels, strict=True)
    ]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _load_images(path: Path) -> torch.Tensor:
    """images.npy as float32 (N, C, H, W), checked to be finite and in [0, 1]."""
    if not path.is_file():
        if path.parent.is_dir() and any(
            f.suffix.lower() in IMAGE_SUFFIXES for f in path.parent.iterdir()
        ):
            raise InputError(
                f"{path.parent} holds image files but no images.npy; save the images, "
                "all the same size, as one (N, C, H, W) float array in [0, 1] with numpy.save"
            )
        raise InputError(f"{path} does not exist; expected an images.npy array")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if str(exc).startswith("Object arrays"):  # numpy.save of images of mixed sizes
            raise ShapeError(
                f"{path} holds an object array (images of different sizes?); expected one "
                "(N, C, H, W) float array of images that all have the same size"
            ) from None
        raise InputError(f"{path} is not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npy array ({exc})") from None
    if arr.ndim == 3:
        arr = arr[:, None]
    numeric = np.issubdtype(arr.dtype, np.number) and not np.issubdtype(
        arr.dtype, np.complexfloating
    )
    if arr.ndim != 4 or len(arr) == 0 or not numeric:
        raise ShapeError(
            f"{path} has shape {arr.shape}; expected a non-empty numeric "
            "(N, C, H, W) or (N, H, W) array"
        )
    images = arr.astype(np.float32)
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).reshape(len(images), -1).any(1).sum())
        raise InputError(f"{path} holds NaN or infinite values in {bad} of {len(images)} images")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        hint = " (8-bit images? divide by 255)" if hi > 1 and lo >= 0 else ""
        raise InputError(f"{path} has values in [{lo:g}, {hi:g}]; expected [0, 1]{hint}")
    return torch.from_numpy(images)


def _read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    except OSError as exc:
        raise InputError(
            f"cannot read {what} {path}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_pairs(spec: str) -> tuple[torch.Tensor, list[str]]:
    """Images and captions from a pairs folder, or the digits train split for ``digits``."""
    if spec == "digits":
        from lucidml.core.zoo import load_digits

        d = load_digits()
        return d.train_x, digits_captions(d.train_y, d.class_names)
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(
            f"pairs folder {folder} does not exist (expected images.npy and "
            "captions.txt, or the name 'digits')"
        )
    images = _load_images(folder / "images.npy")
    captions_file = folder / "captions.txt"
    if not captions_file.is_file():
        raise InputError(f"{captions_file} does not exist; expected one caption per image")
    captions = _read_lines(captions_file, "caption file")
    if len(captions) != len(images):
        raise ShapeError(
            f"{captions_file} has {len(captions)} captions for {len(images)} "
            "images; expected one caption per image"
        )
    return images, captions


def check_pair_count(n_pairs: int, spec: str) -> None:
    """Refuse a corpus too small to measure any curvature: an image scored against the
    captions of its class batch needs at least one other caption, else its softmax has a
    single candidate, the contrastive Hessian is exactly zero, and the prior precision
    fitted on it runs to its bound."""
    if n_pairs < 2:
        raise InputError(
            f"pairs {spec} hold {n_pairs} image-caption pair; the posterior needs at least "
            "2, since a softmax over a single caption has no curvature to measure"
        )


def read_images(spec: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images and labels (None if absent) from a folder, or a digits name (``split`` picks
    the digits train or test split)."""
    if spec == "digits" or spec.startswith("digits-"):
        from lucidml.core.zoo import load_digits

        d = load_digits()
        x, y = (d.train_x, d.train_y) if split == "train" else (d.test_x, d.test_y)
        if spec == "digits":
            return x, y
        shift = spec.removeprefix("digits-")
        if shift not in SHIFTS:
            raise InputError(f"unknown digits shift '{shift}'; expected one of {', '.join(SHIFTS)}")
        return SHIFTS[shift](x, seed=2 if split == "train" else 1), y
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(
            f"images folder {folder} does not exist (expected images.npy, or a "
            "name like 'digits' or 'digits-noise')"
        )
    images = _load_images(folder / "images.npy")
    labels_file = folder / "labels.npy"
    if not labels_file.is_file():
        return images, None
    try:
        labels = np.load(labels_file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{labels_file} is not a readable .npy array ({exc})") from None
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(
            f"{labels_file} has shape {labels.shape} and type {labels.dtype}; "
            f"expected ({len(images)},) integers"
        )
    return images, torch.from_numpy(labels.astype(np.int64))


def read_pool(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled pool: a folder with images.npy and labels.npy, or the digits train split."""
    images, labels = read_images(spec, split="train")
    if labels is None:
        raise InputError(f"pool folder {spec} has no labels.npy; the pool must be labelled")
    return images, labels


def read_classes(spec: str) -> list[str]:
    """Class names, one per line of a text file, or the digit names for ``digits``."""
    if spec == "digits":
        from lucidml.core.digits_clip import CLASS_NAMES

        return list(CLASS_NAMES)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"class file {path} does not exist; expected one class name per line")
    names = _read_lines(path, "class file")
    if not names:
        raise InputError(f"class file {path} is empty; expected one class name per line")
    return names


def check_labels(labels: torch.Tensor | None, n_classes: int, what: str) -> None:
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(
            f"{what} labels must lie in 0..{n_classes - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
