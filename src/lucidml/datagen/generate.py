"""Fused generation: which adapters each synthetic image uses, and writing the images.

For a class with n adapters LoFT takes all C(n, k) k-subsets, shuffles them with a seed
and tiles them over the N images, so each subset is used floor(N/C) or ceil(N/C) times.
Image j of class c is drawn from its own seed hash(seed, c, j): it does not depend on
which other images are generated, in which order, on which process, or after a resume.
Images sharing a subset go out in batches with that subset's update folded into the
weights (``lora.fused``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lucidml.core.images import png_bytes
from lucidml.core.progress import track
from lucidml.core.runs import atomic_write_bytes, derive_seed, folder_name
from lucidml.datagen.lora import Adapter, fused
from lucidml.errors import InputError


def schedule_pairs(n_loras: int, n_images: int, k: int = 2, seed: int = 0) -> list[tuple]:
    """The adapter indices of each of ``n_images`` images: every k-subset of range(n_loras)
    in a seeded shuffled order, tiled. With fewer adapters than k, k falls back to n_loras
    (one shot: every image uses that shot's adapter alone)."""
    if n_loras < 1:
        raise InputError("a class needs at least one adapter to generate from")
    if n_images < 0 or k < 1:
        raise InputError(f"need n_images >= 0 and k >= 1, got {n_images} and {k}")
    subsets = list(itertools.combinations(range(n_loras), min(k, n_loras)))
    random.Random(seed).shuffle(subsets)
    return [subsets[j % len(subsets)] for j in range(n_images)]


@dataclass(frozen=True)
class PlannedImage:
    """One manifest row: everything that determines the image."""

    index: int
    class_name: str
    file: str  # relative to the output folder
    adapters: tuple[str, ...]  # adapter files, relative to the fit folder
    weights: tuple[float, ...]
    prompt: str
    seed: int

    def row(self) -> dict:
        out = asdict(self)
        out["class"] = out.pop("class_name")
        out["adapters"], out["weights"] = list(self.adapters), list(self.weights)
        return out


def plan_class(
    class_name: str,
    prompt: str,
    adapter_files: Sequence[str],
    n_images: int,
    k: int,
    weights: Sequence[float] | None,
    seed: int,
) -> list[PlannedImage]:
    """The images of one class: LoFT's tiled k-subsets of ``adapter_files``, one adapter
    at weight 1 when there is only one (DataDream), or none (the plain prompt)."""
    folder = folder_name(class_name)
    if adapter_files:
        subsets = schedule_pairs(len(adapter_files), n_images, k, derive_seed(seed, class_name))
    else:
        subsets = [()] * n_images
    out = []
    for j, subset in enumerate(subsets):
        if len(subset) == k and weights is not None:
            w = tuple(float(x) for x in weights)
        else:
            w = tuple(1.0 / len(subset) for _ in subset)
        out.append(
            PlannedImage(
                index=j,
                class_name=class_name,
                file=f"images/{folder}/{j:05d}.png",
                adapters=tuple(adapter_files[i] for i in subset),
                weights=w,
                prompt=prompt,
                seed=derive_seed(seed, class_name, j),
            )
        )
    return out


def generate_images(
    backbone,
    plans: Sequence[PlannedImage],
    adapters: dict[str, Adapter],
    out: Path,
    steps: int,
    guidance: float,
    batch_size: int,
    label: str = "generating",
) -> int:
    """Draw every planned image whose file does not exist yet (a rerun resumes), grouped
    by adapter subset and weights; each file is written atomically. Returns how many
    were drawn."""
    todo = [p for p in plans if not (out / p.file).is_file()]
    groups: dict[tuple, list[PlannedImage]] = {}
    for p in todo:
        groups.setdefault((p.adapters, p.weights), []).append(p)
    for (files, weights), members in track(list(groups.items()), label):
        with fused(backbone.unet, [adapters[f] for f in files], list(weights)):
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                images = backbone.sample(
                    [p.prompt for p in batch], [p.seed for p in batch], steps, guidance
                )
                for p, image in zip(batch, images, strict=True):
                    atomic_write_bytes(out / p.file, png_bytes(image))
    return len(todo)
