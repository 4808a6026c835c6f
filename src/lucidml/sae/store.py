"""An on-disk store of activation rows, read through memory maps.

A store is a folder of ``index.json`` plus shards ``shard-00000.safetensors``, ... Each
shard holds ``activations`` (n, d), ``image_index`` (n,) (the row's position in the
store's image id list) and ``token`` (n,) (the token position; -1 for pooled rows).
Reads memory-map the shards, so a store larger than RAM streams: training draws random
batches through :meth:`ActivationStore.rows`, metrics walk it with
:meth:`ActivationStore.iter_chunks`. Writes go to a temporary sibling folder that is
published whole, so a crash never leaves a half-written store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lucidml.core.runs import digest, publish_folder, read_json, write_json
from lucidml.errors import InputError, ShapeError

FORMAT = "lucidml.sae.store/1"
INDEX = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# How each stored dtype is memory-mapped: numpy has no bfloat16, so its bits are read as
# 16-bit integers and reinterpreted by torch.
_MEMMAP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "I64": np.int64}
_SAFETENSORS_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def dtype_name(dtype: torch.dtype) -> str:
    """The name under which ``dtype`` is stored; only float32, float16 and bfloat16 are."""
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise InputError(f"activations are stored as float32, float16 or bfloat16, not {dtype}")


def shard_name(position: int) -> str:
    return f"shard-{position:05d}.safetensors"


@dataclass(frozen=True)
class _Shard:
    """One block of consecutive rows: memory maps for a folder, arrays in memory otherwise."""

    activations: np.ndarray  # (n, d) in the stored dtype (bfloat16 as int16 bits)
    image_index: np.ndarray  # (n,) int64
    token: np.ndarray  # (n,) int64


def _as_float32(block: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Stored rows as a float32 tensor of its own: a slice of a memory map is copied out,
    never shared, since the map is read-only and may be closed."""
    t = torch.from_numpy(np.require(block, requirements=["C", "W", "O"]))
    if dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.float()


def _as_stored(x: torch.Tensor) -> np.ndarray:
    """A CPU tensor as the numpy array a shard would hold (bfloat16 as int16 bits)."""
    x = x.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)
    return x.numpy()


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The header of a safetensors file and the offset where its data begins.

    The file is 8 bytes of little-endian header length N, N bytes of JSON mapping each
    tensor to its dtype, shape and byte range (relative to the end of the header), then
    the raw data."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not a readable safetensors file") from None
    if not isinstance(header, dict):
        raise InputError(f"{path} is not a readable safetensors file")
    return header, 8 + size


def _map_tensor(path: Path, header: dict, data_start: int, name: str, shape: tuple) -> np.ndarray:
    """Memory-map tensor ``name`` of a shard, after checking it has ``shape``."""
    entry = header.get(name)
    if not isinstance(entry, dict) or entry.get("dtype") not in _MEMMAP_DTYPES:
        raise InputError(f"{path} has no readable tensor '{name}'")
    found = tuple(entry.get("shape", ()))
    if found != shape:
        raise ShapeError(f"{path} holds '{name}' of shape {found}, index.json says {shape}")
    begin, end = entry["data_offsets"]
    dtype = np.dtype(_MEMMAP_DTYPES[entry["dtype"]])
    if (
        end - begin != dtype.itemsize * int(np.prod(shape))
        or path.stat().st_size < data_start + end
    ):
        raise InputError(f"{path} is truncated or corrupt: '{name}' does not fit the file")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def _open_shard(folder: Path, entry: dict, d: int, dtype: str) -> _Shard:
    path = folder / entry["file"]
    if not path.is_file():
        raise InputError(f"shard {entry['file']} listed in {folder / INDEX} is missing")
    header, data_start = _safetensors_header(path)
    rows = entry["rows"]
    shard = _Shard(
        activations=_map_tensor(path, header, data_start, "activations", (rows, d)),
        image_index=_map_tensor(path, header, data_start, "image_index", (rows,)),
        token=_map_tensor(path, header, data_start, "token", (rows,)),
    )
    found = header["activations"]["dtype"]
    if found != _SAFETENSORS_NAMES[dtype]:
        raise InputError(f"{path} holds {found} activations, index.json says {dtype}")
    return shard


def _check_index(index, path: Path) -> None:
    """Refuse an index.json that is not a store's, with a sentence naming what is wrong."""
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InputError(f"{path} is not an activation store index (format {FORMAT})")
    fields = {"d": int, "dtype": str, "rows": int, "shards": list, "image_ids": list}
    for name, kind in fields.items():
        if not isinstance(index.get(name), kind):
            raise InputError(f"{path} has no valid '{name}' field")
    if index["dtype"] not in DTYPES:
        raise InputError(f"{path} names an unknown dtype '{index['dtype']}'")
    for entry in index["shards"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("rows"), int)
            and entry["rows"] > 0
        ):
            raise InputError(f"{path} has a malformed shard entry {entry}")
    listed = sum(entry["rows"] for entry in index["shards"])
    if listed != index["rows"]:
        raise ShapeError(
            f"{path} lists shards of {listed} rows in all, but says rows = {index['rows']}"
        )


class ActivationStore:
    """Activation rows with their image and token, from a folder (memory-mapped) or memory."""

    def __init__(self, shards: list[_Shard], index: dict, folder: Path | None = None):
        self._shards = shards
        self._index = index
        self.folder = folder
        self.dtype: torch.dtype = DTYPES[index["dtype"]]
        self.meta: dict = index.get("meta", {})
        self.image_ids: list[str] = index["image_ids"]
        self._starts = np.cumsum([0] + [len(s.token) for s in shards])

    @classmethod
    def open(cls, folder: str | Path) -> ActivationStore:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"activation store {folder} does not exist")
        if not (folder / INDEX).is_file():
            raise InputError(f"{folder} holds no {INDEX}, so it is not an activation store")
        index = read_json(folder / INDEX)
        _check_index(index, folder / INDEX)
        shards = [_open_shard(folder, e, index["d"], index["dtype"]) for e in index["shards"]]
        return cls(shards, index, folder)

    @classmethod
    def from_tensor(
        cls,
        x: torch.Tensor,
        image_ids: Sequence[str] | None = None,
        image_index=None,
        token=None,
        meta: dict | None = None,
    ) -> ActivationStore:
        """A store in memory with the same read API, e.g. for small inputs and tests.
        Rows keep ``x``'s dtype when a store can hold it, else become float32."""
        x = torch.as_tensor(x).detach().cpu()
        if x.ndim != 2:
            raise ShapeError(f"activations must be a 2-D (rows, d) tensor, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("activations contain NaN or infinite values")
        if x.dtype not in DTYPES.values():
            x = x.float()
        n = len(x)
        image_index = _image_positions(np.arange(n) if image_index is None else image_index, n)
        token = _int_column(np.full(n, -1) if token is None else token, n, "token")
        highest = int(image_index.max(initial=-1))
        if image_ids is None:
            image_ids = [str(i) for i in range(highest + 1)]
        image_ids = _check_image_ids(image_ids, highest)
        index = {
            "format": FORMAT,
            "d": x.shape[1],
            "dtype": dtype_name(x.dtype),
            "rows": n,
            "shards": [],
            "image_ids": image_ids,
            "meta": dict(meta or {}),
        }
        return cls([_Shard(_as_stored(x), image_index, token)], index)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def d(self) -> int:
        return self._index["d"]

    @cached_property
    def image_index(self) -> np.ndarray:
        """(rows,) int64: each row's position in ``image_ids``."""
        return np.concatenate([np.asarray(s.image_index) for s in self._shards])

    @cached_property
    def token(self) -> np.ndarray:
        """(rows,) int64: each row's token position; -1 for pooled rows."""
        return np.concatenate([np.asarray(s.token) for s in self._shards])

    def rows(self, indices) -> torch.Tensor:
        """Rows ``indices`` (any order, any shards) as float32 (len(indices), d), in that order.

        Each shard is read once with sorted indices, so a random batch touches the memory
        map front to back; the rows are then put back in the order asked for."""
        indices = np.asarray(indices)
        if indices.size == 0:
            return torch.empty(0, self.d)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise InputError("row indices must be a 1-D array of integers")
        if indices.min() < 0 or indices.max() >= len(self):
            raise InputError(
                f"row indices must lie in 0..{len(self) - 1}, got {indices.min()}..{indices.max()}"
            )
        order = np.argsort(indices, kind="stable")
        wanted = indices[order].astype(np.int64)
        bounds = np.searchsorted(wanted, self._starts)
        parts = [
            _as_float32(shard.activations[wanted[lo:hi] - start], self.dtype)
            for shard, start, lo, hi in zip(
                self._shards, self._starts, bounds, bounds[1:], strict=False
            )
            if hi > lo
        ]
        out = torch.empty(len(indices), self.d)
        out[torch.from_numpy(order)] = torch.cat(parts)
        return out

    def _slice(self, start: int, stop: int) -> torch.Tensor:
        """Consecutive rows start..stop-1 as float32, read as slices of the shards."""
        parts = []
        for shard, first in zip(self._shards, self._starts[:-1], strict=True):
            lo, hi = max(start - first, 0), min(stop - first, len(shard.token))
            if hi > lo:
                parts.append(_as_float32(shard.activations[lo:hi], self.dtype))
        return torch.cat(parts) if parts else torch.empty(0, self.d)

    def to_tensor(self) -> torch.Tensor:
        """Every row as float32 (rows, d); only for stores that fit in memory."""
        return self._slice(0, len(self))

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, float32 rows) of consecutive chunks, for one streaming pass."""
        if chunk_rows < 1:
            raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
        for start in range(0, len(self), chunk_rows):
            yield start, self._slice(start, min(start + chunk_rows, len(self)))

    def fingerprint(self) -> str:
        """A key for caches and resumes: changes whenever the stored rows may have.

        A folder store is identified by its index and the sizes of its shards (not their
        bytes, which may be gigabytes); one in memory by its rows themselves."""
        if self.folder is None:
            shard = self._shards[0]
            return digest(self._index, shard.activations, shard.image_index, shard.token)
        sizes = [(self.folder / e["file"]).stat().st_size for e in self._index["shards"]]
        return digest((self.folder / INDEX).read_bytes(), sizes)


def _int_column(values, n: int, name: str) -> np.ndarray:
    """A per-row int64 column of length ``n``."""
    column = np.asarray(torch.as_tensor(values).cpu())
    if column.shape != (n,):
        raise ShapeError(f"{name} must have one entry per row ({n}), got shape {column.shape}")
    return column.astype(np.int64)


def _image_positions(values, n: int) -> np.ndarray:
    """The image_index column: positions in the image id list, so never negative."""
    column = _int_column(values, n, "image_index")
    if n and column.min() < 0:
        raise InputError(f"image_index must not be negative, got {column.min()}")
    return column


def _check_image_ids(image_ids: Sequence[str], highest: int) -> list[str]:
    """Image ids as a list of unique strings, one for each image position up to ``highest``."""
    ids = [str(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise InputError("image ids must be unique")
    if highest >= len(ids):
        raise InputError(f"rows refer to image {highest}, but there are only {len(ids)} image ids")
    return ids


def _temporary_sibling(folder: Path) -> Path:
    """An empty folder next to ``folder`` (same file system, so it can be renamed there)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))


class StoreWriter:
    """Writes a store shard by shard; the folder appears only when :meth:`close` succeeds.

    Rows are buffered until ``shard_rows`` are there, then written as one shard into a
    temporary sibling folder; ``close`` adds the last shard and index.json and publishes
    the folder whole. Used as a context manager, an error inside the block removes the
    temporary folder, so nothing is left behind."""

    def __init__(
        self,
        folder: str | Path,
        d: int,
        dtype: torch.dtype = torch.float32,
        shard_rows: int = 65536,
        meta: dict | None = None,
    ):
        if d < 1 or shard_rows < 1:
            raise InputError(f"a store needs d >= 1 and shard_rows >= 1, got {d} and {shard_rows}")
        self.folder, self.d, self.shard_rows = Path(folder), d, shard_rows
        self.dtype, self._dtype_name = dtype, dtype_name(dtype)
        self.meta = dict(meta or {})
        self.image_ids: list[str] = []
        self._tmp = _temporary_sibling(self.folder)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._buffered = 0
        self._shards: list[dict] = []
        self._highest_image = -1
        self._store: ActivationStore | None = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def add(self, acts: torch.Tensor, image_index, token) -> None:
        """Buffer rows ``acts`` (n, d) with their image positions and tokens (n,) each."""
        acts = torch.as_tensor(acts).detach()
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise ShapeError(
                f"expected activations of shape (n, {self.d}), got {tuple(acts.shape)}"
            )
        if not torch.isfinite(acts).all():
            raise InputError("activations contain NaN or infinite values")
        stored = acts.to("cpu", self.dtype)
        if not torch.isfinite(stored).all():
            raise InputError(
                f"activations exceed the range of {self._dtype_name}; store them as float32"
            )
        n = len(stored)
        image_index = torch.from_numpy(_image_positions(image_index, n))
        token = torch.from_numpy(_int_column(token, n, "token"))
        if n == 0:
            return
        self._highest_image = max(self._highest_image, int(image_index.max()))
        self._buffer.append((stored, image_index, token))
        self._buffered += n
        while self._buffered >= self.shard_rows:
            self._write_shard(self.shard_rows)

    def _write_shard(self, rows: int) -> None:
        """Write the first ``rows`` buffered rows as the next shard."""
        from safetensors.torch import save_file

        # a lone buffered piece is used as it is: one large add is cut into shards without
        # copying the remainder again for every shard
        acts, image_index, token = (
            column[0] if len(column) == 1 else torch.cat(column)
            for column in zip(*self._buffer, strict=True)
        )
        name = shard_name(len(self._shards))
        tensors = {
            "activations": acts[:rows].contiguous(),
            "image_index": image_index[:rows].contiguous(),
            "token": token[:rows].contiguous(),
        }
        save_file(tensors, str(self._tmp / name))
        self._shards.append({"file": name, "rows": rows})
        rest = (acts[rows:], image_index[rows:], token[rows:])
        self._buffer = [rest] if len(rest[0]) else []
        self._buffered = len(rest[0])

    def close(self) -> ActivationStore:
        """Write the last shard and index.json, publish the folder, and open it."""
        if self._store is not None:
            return self._store
        try:
            if self._buffered:
                self._write_shard(self._buffered)
            if not self._shards:
                raise InputError(f"no activation rows were written to {self.folder}")
            image_ids = _check_image_ids(self.image_ids, self._highest_image)
            rows = sum(entry["rows"] for entry in self._shards)
            write_json(
                self._tmp / INDEX,
                _index(self.d, self._dtype_name, rows, self._shards, image_ids, self.meta),
            )
            publish_folder(self._tmp, self.folder)
        except BaseException:
            self.discard()
            raise
        self._store = ActivationStore.open(self.folder)
        return self._store

    def discard(self) -> None:
        """Drop everything written so far (the published folder, if any, is kept)."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._buffer, self._buffered = [], 0


def _index(d: int, dtype: str, rows: int, shards: list, image_ids: list, meta: dict) -> dict:
    return {
        "format": FORMAT,
        "d": d,
        "dtype": dtype,
        "rows": rows,
        "shards": shards,
        "image_ids": image_ids,
        "meta": meta,
    }


def merge(folders: Sequence[str | Path], folder: str | Path) -> ActivationStore:
    """Join stores written in parts (one per process) into one store at ``folder``.

    The parts must agree on d, dtype, image ids and meta; their shards are moved (not
    copied) in the order given, and the part folders are removed. The merged folder is
    published whole, as a writer's is; ``folder`` may be the parts' parent."""
    parts = [ActivationStore.open(f) for f in folders]
    first = parts[0]
    for part in parts[1:]:
        mine = (part.d, part.dtype, part.image_ids, part.meta)
        if mine != (first.d, first.dtype, first.image_ids, first.meta):
            raise InputError(
                f"{part.folder} was not written like {first.folder}; cannot merge them"
            )
    folder = Path(folder)
    tmp = _temporary_sibling(folder)
    shards = []
    for part in parts:
        for entry in part._index["shards"]:
            name = shard_name(len(shards))
            os.replace(part.folder / entry["file"], tmp / name)
            shards.append({"file": name, "rows": entry["rows"]})
        shutil.rmtree(part.folder)
    rows = sum(len(part) for part in parts)
    write_json(
        tmp / INDEX,
        _index(first.d, first._index["dtype"], rows, shards, first.image_ids, first.meta),
    )
    publish_folder(tmp, folder)
    return ActivationStore.open(folder)
