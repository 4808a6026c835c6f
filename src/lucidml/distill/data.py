"""Datasets, user-supplied distilled sets, random real subsets, and input checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lucidml.core.progress import get_logger
from lucidml.core.runs import digest
from lucidml.core.zoo import ImageDataset, load_digits
from lucidml.errors import InputError, NotInstalledError, ShapeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TENSOR_SUFFIXES = (".pt", ".pth", ".safetensors")
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
# Float images outside this range are not [0, 1] pixels (DSA and clipping leave a little
# slack, so a small overshoot is accepted as it is).
PIXEL_RANGE = (-0.05, 1.05)
# Folders with at least this many images are decoded by DataLoader worker processes (for
# fewer, starting the workers costs more than they save)
PARALLEL_READ_FROM = 4096
LOG = get_logger("distill")


def data_hash(data: ImageDataset) -> str:
    """A digest of a dataset's splits (dtypes, shapes and values; keys the teacher cache)."""
    return digest(data.train_x, data.train_y, data.test_x, data.test_y)


class FolderImages(torch.utils.data.Dataset):
    """The images of a folder with one sub-folder per class, read from disk one at a time:
    each is converted to ``channels`` (1: grey, 3: RGB) and resized to ``size`` (H, W) as
    it is read, so images of mixed sizes come out as one size. Items are (C, H, W) floats
    in [0, 1] and the class index."""

    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int], channels: int):
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        file = self.files[i]
        try:
            with Image.open(file) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]))
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or not an image
            raise InputError(f"cannot read image {file}: {exc}") from None
        pixels = torch.from_numpy(arr.reshape(*arr.shape[:2], -1)).permute(2, 0, 1)
        return pixels, self.labels[i]


def folder_images(
    root: Path,
    class_names: tuple[str, ...] | None = None,
    size: tuple[int, int] | None = None,
    channels: int = 3,
) -> tuple[FolderImages, tuple[str, ...]]:
    """root/<class>/* as ``FolderImages`` and the class names (the sorted folder names
    unless given). Images of another size than ``size`` (H, W) are resized; without
    ``size``, all images must have one size, which is checked from their headers."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(
            f"image folder {root} has no class sub-folders (expected "
            "one sub-folder of images per class)"
        )
    names = class_names or tuple(p.name for p in folders)
    files, labels = [], []
    for folder in folders:
        if folder.name not in names:
            raise InputError(
                f"class folder '{folder.name}' in {root} is not a class of the "
                f"dataset (expected one of: {', '.join(names)})"
            )
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [names.index(folder.name)] * len(found)
    if not files:
        raise InputError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if size is None:  # the images' own size, which must then be one size
        size = _one_size(root, files)
    return FolderImages(files, labels, size, channels), names


def _one_size(root: Path, files: list[Path]) -> tuple[int, int]:
    from PIL import Image

    first = None
    for file in files:
        try:
            with Image.open(file) as img:  # reads the header only
                wh = img.size
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"cannot read image {file}: {exc}") from None
        first = first or (file, wh)
        if wh != first[1]:
            raise InputError(
                f"image folder {root} holds images of different sizes ({file.name} is "
                f"{wh[0]}x{wh[1]}, {first[0].name} is {first[1][0]}x{first[1][1]}); resize "
                "them to one size first, or load the dataset with an image_size"
            )
    return first[1][1], first[1][0]


def read_folder(images: FolderImages, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``images`` as tensors (N, C, H, W) and (N,), streamed from disk in batches
    through a ``DataLoader`` into one preallocated tensor (worker processes decode large
    folders)."""
    workers = 0 if len(images) < PARALLEL_READ_FROM else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers)
    x = torch.empty(len(images), images.channels, *images.size)
    y = torch.empty(len(images), dtype=torch.long)
    start = 0
    try:
        for xb, yb in loader:
            x[start : start + len(xb)], y[start : start + len(xb)] = xb, yb
            start += len(xb)
    except InputError as exc:
        lines = str(exc).strip().splitlines()
        if len(lines) == 1:
            raise
        # re-raised from a worker, with the worker's traceback: keep its last line's sentence
        raise InputError(lines[-1].split("InputError: ", 1)[-1]) from None
    return x, y


def load_dataset(
    name: str, root: str | Path | None = None, image_size: int | None = None
) -> ImageDataset:
    """``digits`` (embedded), ``cifar10``/``cifar100`` from a local torchvision copy, or an
    image folder with ``train/<class>/`` and ``test/<class>/`` (Tiny-ImageNet, ImageNet).

    A folder's images are streamed from disk through a ``DataLoader`` and resized: to
    ``image_size`` x ``image_size`` when given (ImageNet's mixed sizes), else to the size of
    the training images, which must then all have one size (test images of other sizes
    are resized to it).
    """
    if name == "digits":
        return load_digits()
    if name in TORCHVISION_DATASETS:
        return _torchvision_dataset(name, root)
    path = Path(root) if root is not None else Path(name)
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise InputError(
            f"unknown dataset '{name}': use digits, cifar10, cifar100, or a folder "
            "with train/<class>/ and test/<class>/ images (--data-root)"
        )
    size = None if image_size is None else (image_size, image_size)
    train, names = folder_images(path / "train", size=size)
    test, _ = folder_images(path / "test", names, train.size, train.channels)
    return ImageDataset(*read_folder(train), *read_folder(test), names, name=path.name)


def _torchvision_dataset(name: str, root: str | Path | None) -> ImageDataset:
    try:
        import torchvision
    except ImportError:
        raise NotInstalledError(
            f"dataset '{name}' needs torchvision: pip install 'lucidml[vision]'"
        ) from None
    root = Path(root or Path.home() / ".cache" / "torchvision")
    cls = getattr(torchvision.datasets, TORCHVISION_DATASETS[name])
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError:
        raise InputError(
            f"dataset '{name}' is not under {root}; download it there first "
            "(lucidml never downloads data)"
        ) from None

    def tensors(ds):
        x = torch.from_numpy(np.asarray(ds.data, dtype=np.float32) / 255.0).permute(0, 3, 1, 2)
        return x, torch.tensor(ds.targets)

    (tx, ty), (vx, vy) = tensors(train), tensors(test)
    return ImageDataset(tx, ty, vx, vy, tuple(train.classes), name=name)


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A .pt/.safetensors file: a bare image tensor, or a dict with ``images`` (or ``x``),
    optional ``labels`` (or ``y``) and ``soft_labels``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files fail in many library-specific ways
        raise InputError(f"cannot read tensor file {path}: {type(exc).__name__}") from None
    if isinstance(obj, torch.Tensor):
        return {"images": obj}
    if not isinstance(obj, dict):
        raise InputError(
            f"{path} must hold a tensor or a dict of tensors, not {type(obj).__name__}"
        )
    aliases = {"x": "images", "y": "labels", "soft": "soft_labels"}
    return {aliases.get(k, k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class DistilledSet(NamedTuple):
    """A checked distilled set; ``input_scaling`` says how its pixels were brought to [0, 1]
    ("none", "uint8/255" or "x*std+mean")."""

    x: torch.Tensor
    y: torch.Tensor
    soft: torch.Tensor | None
    input_scaling: str


def load_distilled(
    images: str | Path,
    data: ImageDataset,
    labels: str | Path | None = None,
    soft_labels: str | Path | None = None,
    input_norm: list[float] | None = None,
) -> DistilledSet:
    """A user's distilled set, checked against ``data``, with pixels in [0, 1].

    ``input_norm`` (means then stds, one each or one per channel) un-normalises
    mean/std-normalised images, x * std + mean; uint8 images are divided by 255.
    """
    path = Path(images)
    if not path.exists():
        raise InputError(f"distilled images {path} do not exist")
    if path.is_dir():
        if input_norm is not None:
            raise InputError(
                f"--input-norm applies to tensor files; the images in folder {path} are "
                "read as [0, 1] pixels already"
            )
        images, _ = folder_images(
            path, tuple(data.class_names), tuple(data.train_x.shape[-2:]), data.train_x.shape[1]
        )
        x, y = read_folder(images)
        soft, scaling = None, "none"
    elif path.suffix in TENSOR_SUFFIXES:
        found = load_tensor_file(path)
        if "images" not in found:
            raise InputError(f"{path} has no 'images' tensor (keys: {', '.join(found)})")
        x, y, soft = found["images"], found.get("labels"), found.get("soft_labels")
        x, scaling = to_unit_pixels(x, path, input_norm)
    else:
        raise InputError(
            f"distilled images {path} must be a folder or a {'/'.join(TENSOR_SUFFIXES)} file"
        )
    if labels is not None:
        y = _one_tensor(Path(labels), "labels")
    if soft_labels is not None:
        soft = _one_tensor(Path(soft_labels), "soft_labels")
    if y is None:
        raise InputError(f"{path} has no labels: add a 'labels' tensor or pass --labels FILE")
    return DistilledSet(*check_distilled(x, y, data, soft), scaling)


def to_unit_pixels(
    x: torch.Tensor, path: Path, input_norm: list[float] | None = None
) -> tuple[torch.Tensor, str]:
    """Images as floats in the [0, 1] pixel space of the real data, and how they got there.

    Students are compared with real images in [0, 1], so 0-255 or normalised pixels would
    be scored wrongly without a word: uint8 is divided by 255, ``input_norm`` undoes a
    mean/std normalisation, and any other float outside ``PIXEL_RANGE`` is refused.
    """
    if x.dtype == torch.uint8:
        if input_norm is not None:
            raise InputError(
                f"distilled images {path} are uint8 (0-255 pixels), which are not "
                "mean/std-normalised: drop --input-norm"
            )
        return x.float() / 255, "uint8/255"
    if not x.is_floating_point():
        raise InputError(
            f"distilled images {path} have dtype {x.dtype}; expected floats in [0, 1], "
            "uint8 pixels, or normalised floats with --input-norm MEAN,STD"
        )
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"distilled images {path} hold NaN or infinite values")
    scaling = "none"
    if input_norm is not None:
        x, scaling = _unnormalise(x, path, input_norm), "x*std+mean"
    if x.numel() == 0:
        return x, scaling
    low, high = float(x.min()), float(x.max())
    if low < PIXEL_RANGE[0] or high > PIXEL_RANGE[1]:
        if input_norm is not None:
            seen, hint = "after x*std+mean", "check the --input-norm means and stds"
        else:
            seen = "as stored"
            hint = (
                "pass --input-norm MEAN,STD if they are mean/std-normalised, "
                "or rescale them to [0, 1]"
            )
        raise InputError(
            f"distilled images {path} hold values in [{low:.3g}, {high:.3g}] {seen}, outside "
            f"the [0, 1] pixel range of the real images: {hint}"
        )
    return x, scaling


def _unnormalise(x: torch.Tensor, path: Path, input_norm: list[float]) -> torch.Tensor:
    """x * std + mean, with ``input_norm`` = (mean, std) or (means..., stds...) per channel."""
    if x.ndim != 4:  # check_distilled names the expected shape
        return x
    half, channels = len(input_norm) // 2, x.shape[1]
    if len(input_norm) % 2 or half not in (1, channels):
        raise InputError(
            f"--input-norm needs one mean and one std, or {channels} of each (means first), "
            f"for the images in {path}; got {len(input_norm)} numbers"
        )
    mean = torch.tensor(input_norm[:half]).view(1, -1, 1, 1)
    std = torch.tensor(input_norm[half:]).view(1, -1, 1, 1)
    return x * std + mean


def _one_tensor(path: Path, key: str) -> torch.Tensor:
    if not path.is_file():
        raise InputError(f"{key} file {path} does not exist")
    found = load_tensor_file(path)
    if key in found:
        return found[key]
    if "images" in found and len(found) == 1:  # a bare tensor
        return found["images"]
    raise InputError(f"{path} has no '{key}' tensor (keys: {', '.join(found)})")


def check_distilled(
    x: torch.Tensor, y: torch.Tensor, data: ImageDataset, soft: torch.Tensor | None = None
):
    """Validate a distilled set against the dataset it claims to distil."""
    expected = tuple(data.train_x.shape[1:])
    if x.ndim != 4:
        raise ShapeError(
            f"distilled images have shape {tuple(x.shape)}; expected (N, "
            f"{', '.join(map(str, expected))})"
        )
    if tuple(x.shape[1:]) != expected:
        what = "channel count" if x.shape[1] != expected[0] else "image size"
        raise ShapeError(
            f"distilled images have {what} {tuple(x.shape[1:])}; {data.name} "
            f"expects (C, H, W) = {expected}"
        )
    y = y.long() if not y.is_floating_point() else y
    if y.ndim != 1 or len(y) != len(x) or y.is_floating_point():
        raise ShapeError(
            f"labels have shape {tuple(y.shape)} and dtype {y.dtype}; expected "
            f"({len(x)},) integer class indices, one per image"
        )
    k = data.n_classes
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ShapeError(
            f"labels must be class indices in [0, {k - 1}], got [{int(y.min())}, {int(y.max())}]"
        )
    if soft is not None and tuple(soft.shape) != (len(x), k):
        raise ShapeError(f"soft labels have shape {tuple(soft.shape)}; expected ({len(x)}, {k})")
    soft = soft.float() if soft is not None else None
    return x.float(), y, soft


def stratified_split(y: torch.Tensor, fraction: float, seed: int):
    """Indices (kept, held_out) with ``fraction`` of each class held out."""
    gen = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = round(fraction * len(idx))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def random_subset(y: torch.Tensor, counts: dict[int, int], seed: int) -> torch.Tensor:
    """Indices of ``counts[c]`` images of each class c, drawn without replacement."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c, n in sorted(counts.items()):
        idx = torch.nonzero(y == c).flatten()
        if n > len(idx):
            raise InputError(
                f"IPC {n} for class {c} is larger than the {len(idx)} training "
                "images that class has"
            )
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(picked)


def class_counts(y: torch.Tensor) -> dict[int, int]:
    values, counts = torch.unique(y, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}
