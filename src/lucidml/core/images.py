"""Image folders in and out: sorted file lists, pixels in [0, 1], class sub-folders, PNGs.

Every reader sorts by relative path, so an image's position (and any seed derived from
it) never depends on the order a file system lists a folder in.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lucidml.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The image files in ``folder`` (recursively unless told), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        (p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise InputError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


def load_images(files: Sequence[Path], channels: int, size: int) -> torch.Tensor:
    """Images as a float tensor (N, channels, size, size) in [0, 1], resized bilinearly."""
    from PIL import Image

    if channels not in (1, 3):
        raise InputError(f"images are read with 1 or 3 channels, not {channels}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                resized = image.convert(mode).resize((size, size), Image.BILINEAR)
        except OSError:  # PIL's UnidentifiedImageError is one
            raise InputError(f"cannot read the image {path}") from None
        arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)
    pixels = torch.from_numpy(np.stack(arrays))
    return pixels.unsqueeze(1) if channels == 1 else pixels.permute(0, 3, 1, 2).contiguous()


def load_image_folder(folder, channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Every image under ``folder`` (recursively, in sorted order) resized to size x size,
    with its path relative to ``folder`` as its id."""
    folder = Path(folder)
    files = image_files(folder)
    return load_images(files, channels, size), [f.relative_to(folder).as_posix() for f in files]


def class_folders(root: str | Path) -> dict[str, list[Path]]:
    """{class name: its sorted image files} for a folder with one sub-folder per class;
    a class folder without images is refused by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{root} has no class sub-folders (expected one folder per class)")
    out = {}
    for folder in classes:
        try:
            out[folder.name] = image_files(folder, recursive=False)
        except InputError:
            raise InputError(f"class folder {folder} holds no images") from None
    return out


def png_bytes(image: torch.Tensor) -> bytes:
    """One image (C, H, W) in [0, 1] as 8-bit PNG bytes (grey for one channel)."""
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
