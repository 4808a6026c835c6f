"""Datasets, user-supplied distilled sets, random real subsets, and input checks."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lucidml.core.runs import digest
from lucidml.core.zoo import ImageDataset, load_digits
from lucidml.errors import InputError, NotInstalledError, ShapeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TENSOR_SUFFIXES = (".pt", ".pth", ".safetensors")
TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
# Float images outside this range are not [0, 1] pixels (DSA and clipping leave a little
# slack, so a small overshoot is accepted as it is).
PIXEL_RANGE = (-0.05, 1.05)


def data_hash(data: ImageDataset) -> str:
    """A digest of a dataset's splits (dtypes, shapes and values; keys the teacher cache)."""
    return digest(data.train_x, data.train_y, data.test_x, data.test_y)


def _read_image_folder(
    root: Path,
    size: tuple[int, int] | None,
    channels: int | None,
    class_names: tuple[str, ...] | None = None,
):
    """Images under root/<class>/*, as (N, C, H, W) floats in [0, 1] and labels."""
    from PIL import Image

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(
            f"image folder {root} has no class sub-folders (expected "
            "one sub-folder of images per class)"
        )
    names = class_names or tuple(p.name for p in folders)
    xs, ys = [], []
    for folder in folders:
        if folder.name not in names:
            raise InputError(
                f"class folder '{folder.name}' in {root} is not a class of the "
                f"dataset (expected one of: {', '.join(names)})"
            )
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(file)
                img = img.convert("L" if channels == 1 else "RGB")
            except (OSError, ValueError, SyntaxError) as exc:  # truncated or not an image
                raise InputError(f"cannot read image {file}: {exc}") from None
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]))
            if xs and img.size != (xs[0].shape[2], xs[0].shape[1]):
                first = f"{xs[0].shape[2]}x{xs[0].shape[1]}"
                raise InputError(
                    f"image folder {root} holds images of different sizes ({file.name} is "
                    f"{img.size[0]}x{img.size[1]}, the first image is {first}); resize them "
                    "to one size first"
                )
            arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(torch.from_numpy(arr.reshape(*arr.shape[:2], -1)).permute(2, 0, 1))
            ys.append(names.index(folder.name))
    if not xs:
        raise InputError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return torch.stack(xs), torch.tensor(ys), names


def load_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    """``digits`` (embedded), ``cifar10``/``cifar100`` from a local torchvision copy, or an
    image folder with ``train/<class>/`` and ``test/<class>/`` (Tiny-ImageNet, ImageNet)."""
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
    train_x, train_y, names = _read_image_folder(path / "train", None, None)
    test_x, test_y, _ = _read_image_folder(
        path / "test", tuple(train_x.shape[-2:]), train_x.shape[1], names
    )
    return ImageDataset(train_x, train_y, test_x, test_y, names, name=path.name)


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
        x, y, _ = _read_image_folder(
            path, tuple(data.train_x.shape[-2:]), data.train_x.shape[1], tuple(data.class_names)
        )
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
