"""Activations of a vision-language model's vision tower, for training SAEs on.

A layer is the output of vision block ℓ (``hidden_states[ℓ + 1]``; the forward pass
stops there, so deeper blocks cost nothing) or the projected image embedding. Of each
image's tokens we keep the CLS token, k distinct random patch tokens, their mean, or
all of them; every row records its image and token, so later steps join by image id
rather than trusting row order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lucidml.core import distributed
from lucidml.core.hooks import capture
from lucidml.core.images import image_files, load_images
from lucidml.core.progress import track
from lucidml.core.runs import derive_seed
from lucidml.errors import InputError, ModelError, ShapeError
from lucidml.sae.store import INDEX, ActivationStore, StoreWriter, dtype_name, merge

TOKEN_SELECTIONS = ("cls", "random_k", "mean", "all")
POOLED = -1  # the token of a row that stands for the whole image

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # activations, image index, token


def resolve_layer(vlm, layer) -> tuple[str, int | None]:
    """("block", ℓ) for block ℓ (an int ℓ >= 0 or "block.ℓ"), ("proj", None) for -1 or "proj"."""
    n = len(vlm.vision_blocks)
    if layer == "proj" or (layer == -1 and isinstance(layer, int)):
        return "proj", None
    if isinstance(layer, str) and layer.startswith("block.") and layer[6:].isdigit():
        index = int(layer[6:])
    elif isinstance(layer, int) and not isinstance(layer, bool):
        index = layer
    else:
        raise ModelError(
            f"layer {layer!r} is not a layer: use a vision block 0-{n - 1} (or 'block.ℓ'), "
            "or -1/'proj' for the projected embedding"
        )
    if not 0 <= index < n:
        raise ModelError(
            f"layer {layer} is out of range: {vlm.name} has {n} vision blocks (0-{n - 1}), "
            "or -1/'proj' for the projected embedding"
        )
    return "block", index


def _image_source(vlm, images) -> tuple[int, Callable[[list[int]], torch.Tensor], list[str]]:
    """(count, a loader of the images at given positions, default ids). A folder is read
    batch by batch, so a large one never sits in memory whole."""
    if isinstance(images, str | Path):
        folder = Path(images)
        files = image_files(folder)
        return (
            len(files),
            lambda positions: load_images(
                [files[i] for i in positions], vlm.channels, vlm.image_size
            ),
            [f.relative_to(folder).as_posix() for f in files],
        )
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ShapeError(f"expected images as a float (N, C, H, W) tensor or a folder, got {shape}")
    if len(images) == 0:
        raise InputError("there are no images to extract activations from")
    if torch.isnan(images).any():
        raise InputError("the images contain NaN values")
    if images.min() < 0 or images.max() > 1:
        raise InputError(
            f"image values must lie in [0, 1], got {images.min():.3g}..{images.max():.3g}"
        )
    return len(images), lambda positions: images[positions], [str(i) for i in range(len(images))]


def _check_ids(image_ids, n: int) -> list[str]:
    ids = [str(i) for i in image_ids]
    if len(ids) != n:
        raise InputError(f"there are {n} images but {len(ids)} image ids")
    if len(set(ids)) != n:
        raise InputError("image ids must be unique")
    return ids


def _patch_positions(vlm) -> tuple[int, int]:
    """(first patch token, number of patch tokens): CLIP puts CLS at 0, SigLIP has none."""
    first = 0 if vlm.kind == "siglip" else 1
    return first, vlm.model.vision_model.embeddings.num_patches


def _check_tokens(vlm, where: str, tokens: str, k: int) -> None:
    if tokens not in TOKEN_SELECTIONS:
        raise InputError(f"tokens must be one of {', '.join(TOKEN_SELECTIONS)}, got '{tokens}'")
    if where == "proj":
        if tokens not in ("cls", "mean"):
            raise InputError(
                f"the projected embedding is one row per image: use tokens 'cls' or 'mean', "
                f"not '{tokens}'"
            )
        return
    if tokens == "cls" and vlm.kind == "siglip":
        raise InputError(
            f"{vlm.name} (SigLIP) has no CLS token: use tokens 'mean', 'random_k' or 'all'"
        )
    patches = _patch_positions(vlm)[1]
    if tokens == "random_k" and not 1 <= k <= patches:
        raise InputError(f"k must lie in 1..{patches} (the patch tokens per image), got {k}")


def check_request(vlm, layer, tokens: str, k: int) -> tuple[str, int | None]:
    """``resolve_layer`` plus the token checks: what a job validates before it writes."""
    where, block = resolve_layer(vlm, layer)
    _check_tokens(vlm, where, tokens, k)
    return where, block


class _StopForward(Exception):
    """Raised after the hooked block so the blocks above it are never computed."""


@contextmanager
def _stop_after(module: nn.Module) -> Iterator[None]:
    def stop(_module, _args, _output):
        raise _StopForward

    handle = module.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def _block_output(vlm, block: int, pixels: torch.Tensor) -> torch.Tensor:
    """The output of vision block ``block``, (B, tokens, d), stopping the forward there."""
    name = vlm.vision_block_name(block)
    # capture's hook is registered first, so it records the output before the stop fires
    with (
        capture(vlm, [name]) as acts,
        _stop_after(vlm.vision_blocks[block]),
        suppress(_StopForward),
    ):
        vlm.model.vision_model(pixel_values=vlm.preprocess(pixels))
    return acts[name]


def _random_tokens(vlm, ids: Sequence[str], k: int, seed: int) -> torch.Tensor:
    """(B, k) distinct patch positions per image, drawn from a stream seeded by the image's
    id, so the draw does not depend on the batch size, order or process."""
    first, patches = _patch_positions(vlm)
    draws = []
    for image_id in ids:
        generator = torch.Generator().manual_seed(derive_seed(seed, image_id))
        draws.append(torch.randperm(patches, generator=generator)[:k].sort().values + first)
    return torch.stack(draws)


def _select(hidden: torch.Tensor, tokens: str, token_ids: torch.Tensor | None) -> Rows:
    """Rows of a block's output (B, T, d), with their image (in the batch) and token."""
    b, t, d = hidden.shape
    batch = torch.arange(b)
    if tokens == "cls":
        return hidden[:, 0], batch, torch.zeros(b, dtype=torch.long)
    if tokens == "mean":
        return hidden.mean(1), batch, torch.full((b,), POOLED)
    if tokens == "all":
        return hidden.reshape(b * t, d), batch.repeat_interleave(t), torch.arange(t).repeat(b)
    k = token_ids.shape[1]
    picked = hidden.gather(1, token_ids.to(hidden.device)[..., None].expand(-1, -1, d))
    return picked.reshape(b * k, d), batch.repeat_interleave(k), token_ids.reshape(-1)


@dataclass(frozen=True)
class _Plan:
    """What to read from every image: a block's tokens or the projected embedding."""

    where: str  # "block" or "proj"
    block: int | None
    tokens: str
    k: int
    seed: int

    def batch_rows(self, vlm, pixels: torch.Tensor, ids: Sequence[str]) -> Rows:
        """Rows of one batch, with their image (in the batch) and token."""
        if self.where == "proj":
            batch = torch.arange(len(pixels))
            return vlm.image_embeddings(pixels), batch, torch.full((len(pixels),), POOLED)
        chosen = _random_tokens(vlm, ids, self.k, self.seed) if self.tokens == "random_k" else None
        return _select(_block_output(vlm, self.block, pixels), self.tokens, chosen)


def _rows(vlm, plan: _Plan, load, ids, positions: list[int], batch_size: int) -> Iterator[Rows]:
    """Activation rows of the images at ``positions``, batch by batch, on the CPU, with
    their image's position in ``ids``."""
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    with torch.no_grad():
        for batch in track(batches, "extracting activations", total=len(batches)):
            acts, local, token = plan.batch_rows(vlm, load(batch), [ids[i] for i in batch])
            yield acts.float().cpu(), torch.tensor(batch)[local], token


def _write(rows: Iterator[Rows], out: Path, ids, meta, dtype, shard_rows) -> ActivationStore:
    first = next(rows)
    with StoreWriter(out, first[0].shape[1], dtype, shard_rows, meta) as writer:
        writer.image_ids = ids
        for acts, image_index, token in itertools.chain([first], rows):
            writer.add(acts, image_index, token)
    return writer.close()


def extract(
    vlm,
    images,
    layer,
    tokens: str = "cls",
    k: int = 2,
    *,
    image_ids: Sequence[str] | None = None,
    out: str | Path | None = None,
    batch_size: int = 256,
    seed: int = 0,
    shard_rows: int = 65536,
    dtype: torch.dtype = torch.float32,
    meta: dict | None = None,
) -> ActivationStore | None:
    """Activations of ``images`` (a (N, C, H, W) tensor in [0, 1] or an image folder) at
    ``layer``, one row per kept token, as a store in memory (``out=None``) or in ``out``.
    The store's meta records how it was made; entries of ``meta`` are added (and win),
    e.g. the name of the image set a tensor came from.

    Under a multi-process launch with ``out``, each process extracts its share of the
    images into ``out/rank-<r>`` and the main process merges them into ``out`` and
    returns the store; the other processes return None. Without ``out`` every process
    extracts every image."""
    where, block = check_request(vlm, layer, tokens, k)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    n, load, default_ids = _image_source(vlm, images)
    ids = _check_ids(default_ids if image_ids is None else image_ids, n)
    store_meta = {
        "model": vlm.name,
        "layer": "proj" if where == "proj" else f"block.{block}",
        "tokens": tokens,
        "k": k,
        "seed": seed,
        "n_images": n,
        "dtype": dtype_name(dtype),
        "images": str(images) if isinstance(images, str | Path) else None,
        **(meta or {}),
    }
    plan = _Plan(where, block, tokens, k, seed)

    def extract_rows(positions: list[int]) -> Iterator[Rows]:
        return _rows(vlm, plan, load, ids, positions, batch_size)

    if out is None:
        parts = zip(*extract_rows(list(range(n))), strict=True)
        acts, image_index, token = (torch.cat(column) for column in parts)
        return ActivationStore.from_tensor(acts.to(dtype), ids, image_index, token, store_meta)
    out = Path(out)
    if (out / INDEX).exists():
        raise InputError(f"{out} already holds an activation store; choose another folder")
    if distributed.world_size() == 1:
        return _write(extract_rows(list(range(n))), out, ids, store_meta, dtype, shard_rows)
    return _extract_sharded(extract_rows, n, out, ids, store_meta, dtype, shard_rows)


def _extract_sharded(extract_rows, n, out, ids, meta, dtype, shard_rows) -> ActivationStore | None:
    """This process's share of the images into ``out/rank-<r>``; the main process then
    merges every rank's store into ``out``. It waits by polling for the ranks' index
    files rather than at a barrier, which could time out while a long share finishes."""
    rank_folder = out / f"rank-{distributed.process_index()}"
    positions = distributed.shard(list(range(n)))
    if positions:
        _write(extract_rows(positions), rank_folder, ids, meta, dtype, shard_rows)
    if not distributed.is_main_process():
        return None
    # ranks past the number of images have none and write nothing
    folders = [out / f"rank-{r}" for r in range(min(distributed.world_size(), n))]
    distributed.wait_for([f / INDEX for f in folders])
    return merge(folders, out)
