"""Image sets the SAE jobs read: an image folder, or the embedded digits splits.

Every image has an id, and activations, embeddings and taxonomy paths are joined on it
(the reference assumes one row per image in folder order). The embedded digits carry a
small taxonomy of the project's own: parity / stroke shape / digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lucidml.core.digits_clip import CLASS_NAMES
from lucidml.core.images import load_image_folder
from lucidml.errors import InputError

DIGIT_SETS = ("digits-train", "digits-test")
# Digits drawn with a closed loop or a curve, against those made of straight strokes.
ROUND_DIGITS = frozenset({0, 3, 6, 8, 9})


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    ids: list[str]
    labels: np.ndarray | None = None  # class index per image, when known
    class_names: tuple[str, ...] = ()
    paths: list[str] | None = None  # taxonomy path per image ("a/b/c"), when known

    def index(self) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(self.ids)}


def digit_path(label: int) -> str:
    """The digit taxonomy: parity, then round vs straight strokes, then the digit."""
    parity = "even" if label % 2 == 0 else "odd"
    shape = "round" if label in ROUND_DIGITS else "straight"
    return f"{parity}/{shape}/{CLASS_NAMES[label]}"


def load_images(source: str, channels: int = 1, size: int = 8) -> ImageSet:
    """``digits-train`` / ``digits-test`` (sklearn digits, the zoo's fixed split), or an
    image folder: ids are relative paths, the taxonomy path of an image is its folder
    (``class_a/class_b/img.png`` -> ``class_a/class_b``) and its class the top folder."""
    if source in DIGIT_SETS:
        from lucidml.core.zoo import load_digits

        data = load_digits()
        split = source.split("-")[1]
        x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
        labels = y.numpy()
        return ImageSet(
            images=x,
            ids=[f"{source}/{i:04d}" for i in range(len(x))],
            labels=labels,
            class_names=data.class_names,
            paths=[digit_path(int(c)) for c in labels],
        )
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(
            f"images '{source}' is neither an image folder nor one of {', '.join(DIGIT_SETS)}"
        )
    images, ids = load_image_folder(folder, channels, size)
    parents = [str(Path(i).parent) for i in ids]
    if all(p == "." for p in parents):
        return ImageSet(images=images, ids=ids)
    # the top-level folder is the class (zero-shot steering reads class names from it)
    tops = [p.split("/")[0] for p in parents]
    class_names = tuple(sorted(set(tops)))
    labels = np.array([class_names.index(t) for t in tops])
    return ImageSet(images, ids, labels, class_names, parents)


def read_taxonomy(path: str | Path, ids: list[str]) -> list[str]:
    """Taxonomy paths from a JSON object {image id: "a/b/c" or [a, b, c]}, in ``ids`` order."""
    from lucidml.core.runs import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"taxonomy file {path} must hold an object of image id: path")
    missing = [i for i in ids if i not in data]
    if missing:
        raise InputError(
            f"taxonomy file {path} has no path for {len(missing)} images, e.g. '{missing[0]}'"
        )
    return ["/".join(data[i]) if isinstance(data[i], list) else str(data[i]) for i in ids]
