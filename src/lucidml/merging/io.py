"""Checkpoints on disk: lazy reading, streaming merges and loadable output folders.

A merge never holds whole state dicts. ``safe_open`` maps each input file and reads one
tensor when asked; the output's safetensors headers are known before any tensor is
merged (names, shapes and dtypes come from the inputs), so each merged tensor is written
straight into its shard and dropped. Peak memory is about (N + 2) × the largest tensor
for N experts: the base, the N experts and the output of one tensor. Methods with global
statistics (TIES with ``scope="global"``) read everything twice: pass 1 collects, pass 2
merges.

Only safetensors is read: pickle checkpoints (``pytorch_model.bin``) can run code when
loaded. An output folder is built in a hidden sibling folder and renamed into place, so a
failed merge leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lucidml.core.progress import get_logger, track
from lucidml.core.runs import publish_folder, read_json, write_json
from lucidml.errors import InputError, ShapeError
from lucidml.merging.techniques import get_method, same_dtype_kind

log = get_logger("merging")

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MERGE_RECORD = "merge.json"
DEFAULT_SHARD_SIZE = 2 * 10**9  # bytes per output shard (transformers' own default is 5 GB)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors", ".h5", ".msgpack", ".gguf", ".onnx")
NOT_COPIED = ("README.md", MERGE_RECORD)  # the base's model card does not describe the merge
OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# safetensors' dtype codes (its format documentation), for the headers we write and read.
_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


# --- reading -----------------------------------------------------------------------------


class CheckpointReader:
    """One model's tensors on disk, read lazily.

    ``path`` is a model folder (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``) or one ``.safetensors`` file. Names, shapes and
    dtypes come from the file headers; ``get`` reads one tensor.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index, self.files = _locate_weights(self.path)
        self._handles = {file: _open_safetensors(file) for file in self.files}
        self._where = _tensor_files(index, self.files, self._handles)
        self._specs = {key: self._read_spec(key, file) for key, file in self._where.items()}
        self._offsets: dict[Path, dict[str, tuple[int, int]]] = {}

    def _read_spec(self, key: str, file: Path) -> tuple[tuple[int, ...], torch.dtype]:
        view = self._handles[file].get_slice(key)
        code = view.get_dtype()
        if code not in _DTYPES:
            raise InputError(f"tensor '{key}' in {file} has dtype {code}, which is not supported")
        return tuple(view.get_shape()), _DTYPES[code]

    def keys(self) -> list[str]:
        """The tensor names, in file order (sorted within each file, as safetensors keeps them)."""
        return list(self._specs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: object) -> bool:
        return key in self._specs

    def shape(self, key: str) -> tuple[int, ...]:
        return self._specs[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._specs[key][1]

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor into fresh memory (the file stays untouched).

        The bytes are read with a plain file read, not through safetensors' memory map:
        a mapped page stays resident while its file is open, so reading a whole model
        through the map would hold every file in memory by the end of a merge."""
        file = self._where[key]
        if file not in self._offsets:
            self._offsets[file] = _data_offsets(file)
        start, end = self._offsets[file][key]
        buffer = bytearray(end - start)
        with open(file, "rb") as f:
            f.seek(start)
            if f.readinto(buffer) != len(buffer):
                raise InputError(f"{file} is truncated: tensor '{key}' ends past the file")
        shape, dtype = self._specs[key]
        if not buffer:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    @property
    def folder(self) -> Path | None:
        """The model folder whose config and tokenizer files go with the weights."""
        return self.path if self.path.is_dir() else None

    def describe(self) -> dict[str, Any]:
        """Where the weights came from, for provenance: the path and each file's size."""
        return {
            "path": str(self.path.resolve()),
            "files": {file.name: file.stat().st_size for file in self.files},
        }

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.path)!r}, {len(self._specs)} tensors)"


def _locate_weights(path: Path) -> tuple[Path | None, list[Path]]:
    """A model's index file (None for a single file) and safetensors files, or one sentence
    saying why it has none."""
    if not path.exists():
        raise InputError(
            f"model {path} does not exist (give a local folder or .safetensors file; "
            "hub ids are not downloaded)"
        )
    if path.is_file():
        if path.name.endswith(".safetensors.index.json"):
            return path, _index_files(path)
        if path.suffix == ".safetensors":
            return None, [path]
        if path.suffix in PICKLE_SUFFIXES:
            raise InputError(_pickle_refusal(path.parent, path.name))
        raise InputError(f"{path} is not a .safetensors file or a model folder")
    if (path / WEIGHTS_NAME).is_file():
        return None, [path / WEIGHTS_NAME]
    if (path / INDEX_NAME).is_file():
        return path / INDEX_NAME, _index_files(path / INDEX_NAME)
    for pattern in ("*.safetensors.index.json", "*.safetensors"):  # e.g. diffusers' names
        found = sorted(path.glob(pattern))
        if len(found) > 1:
            names = ", ".join(f.name for f in found)
            raise InputError(f"model folder {path} holds several weight sets ({names})")
        if found and pattern.endswith(".json"):
            return found[0], _index_files(found[0])
        if found:
            return None, found
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(_pickle_refusal(path, pickles[0]))
    raise InputError(f"model folder {path} holds no {WEIGHTS_NAME} or {INDEX_NAME}")


def _pickle_refusal(folder: Path, name: str) -> str:
    return (
        f"{folder} has pickle weights ({name}) but no safetensors: lucidml reads only "
        "safetensors, never pickle; re-save the model with save_pretrained(folder)"
    )


def _index_files(index: Path) -> list[Path]:
    """The shard files an index names, each checked to exist."""
    files = [index.parent / name for name in dict.fromkeys(_weight_map(index).values())]
    for file in files:
        if not file.is_file():
            raise InputError(f"{index} names shard {file.name}, which does not exist")
    return files


def _weight_map(index: Path) -> dict[str, str]:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index} has no 'weight_map' of tensor name to shard file")
    return weight_map


def _data_offsets(file: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor in a safetensors file: an 8-byte little-endian
    header length, the JSON header (``data_offsets`` relative to its end), then the data."""
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    start = 8 + header_len
    return {
        key: (start + meta["data_offsets"][0], start + meta["data_offsets"][1])
        for key, meta in header.items()
        if key != "__metadata__"
    }


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{file} is not a readable safetensors file ({exc})") from None


def _tensor_files(index: Path | None, files: list[Path], handles: dict) -> dict[str, Path]:
    """Which file holds each tensor: every tensor of a single file, or the index's
    weight_map, each entry checked against its shard's header."""
    if index is None:
        return dict.fromkeys(handles[files[0]].keys(), files[0])
    where = {key: index.parent / name for key, name in _weight_map(index).items()}
    present = {file: set(handles[file].keys()) for file in files}
    for key, file in where.items():
        if key not in present[file]:
            raise InputError(f"{index} puts tensor '{key}' in {file.name}, which lacks it")
    return where


def check_compatible(readers: dict[str, CheckpointReader]) -> None:
    """Check that every model has the first one's tensor names, shapes and dtype kinds.

    ``readers`` maps a name used in messages (e.g. ``"base /models/a"``) to a reader; the
    first is the reference. Raises InputError naming the first missing or extra tensor,
    ShapeError naming the first tensor whose shapes differ (with both shapes), or
    InputError for a non-floating tensor whose dtype differs (those are copied, not merged).
    Only the headers are read.
    """
    (ref_name, ref), *others = readers.items()
    ref_keys = ref.keys()
    for name, reader in others:
        keys, known = reader.keys(), set(ref_keys)
        present = set(keys)
        missing = next((key for key in ref_keys if key not in present), None)
        if missing is not None:
            raise InputError(f"{name} has no tensor '{missing}', which {ref_name} has")
        extra = next((key for key in keys if key not in known), None)
        if extra is not None:
            raise InputError(f"{name} has a tensor '{extra}', which {ref_name} lacks")
        for key in ref_keys:
            if reader.shape(key) != ref.shape(key):
                raise ShapeError(
                    f"tensor '{key}' has shape {list(ref.shape(key))} in {ref_name} "
                    f"but {list(reader.shape(key))} in {name}"
                )
            if not same_dtype_kind(reader.dtype(key), ref.dtype(key)):
                raise InputError(
                    f"tensor '{key}' is {ref.dtype(key)} in {ref_name} but "
                    f"{reader.dtype(key)} in {name} (only floating tensors are merged)"
                )


# --- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, dtype and shape, known before its values."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def parse_size(size: int | str, what: str = "shard_size") -> int:
    """Bytes from an int or a string such as ``"2GB"``, ``"500MB"`` or ``"1GiB"``."""
    if isinstance(size, bool):
        raise InputError(f"{what} must be a size in bytes such as 2GB, got {size}")
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
        unit = match.group(2).lower() if match else None
        if unit not in _SIZE_UNITS:
            raise InputError(f"{what} must be a size in bytes such as 2GB or 500MB, got '{size}'")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 1:
        raise InputError(f"{what} must be at least 1 byte, got {size}")
    return value


def shard_plan(specs: list[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Tensors grouped, in order, into shards of at most ``shard_size`` bytes (a tensor
    larger than that gets a shard of its own, as transformers does)."""
    shards: list[list[TensorSpec]] = [[]]
    filled = 0
    for spec in specs:
        if shards[-1] and filled + spec.nbytes > shard_size:
            shards.append([])
            filled = 0
        shards[-1].append(spec)
        filled += spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """transformers' file names: ``model.safetensors`` alone, else numbered shards."""
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _header(specs: list[TensorSpec]) -> bytes:
    """A safetensors header: 8-byte little-endian length, then JSON padded to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.key] = {
            "dtype": _CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class ShardedWriter:
    """Writes planned tensors, one at a time and in plan order, into their shard files.

    Each shard's header is written when its first tensor arrives and each tensor's bytes
    go straight to disk, so the writer holds no tensors. ``close`` writes
    ``model.safetensors.index.json`` when there is more than one shard.
    """

    def __init__(self, folder: Path, specs: list[TensorSpec], shard_size: int):
        for spec in specs:
            if spec.dtype not in _CODES:
                raise InputError(f"tensor '{spec.key}' has dtype {spec.dtype}, not supported")
        self.folder = Path(folder)
        self.shards = shard_plan(specs, shard_size)
        self.names = shard_names(len(self.shards))
        self._order = iter(
            [(i, j, spec) for i, shard in enumerate(self.shards) for j, spec in enumerate(shard)]
        )
        self._file = None

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Write the next planned tensor, cast to its planned dtype."""
        shard, position, spec = next(self._order)
        if key != spec.key or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"expected tensor '{spec.key}' {spec.shape}, got '{key}'")
        if position == 0:
            self._file = open(self.folder / self.names[shard], "wb")  # noqa: SIM115
            self._file.write(_header(self.shards[shard]))
        data = tensor.detach().to("cpu", spec.dtype).contiguous().reshape(-1)
        self._file.write(memoryview(data.view(torch.uint8).numpy()))
        if position == len(self.shards[shard]) - 1:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Check every planned tensor was written; write the index of a sharded model."""
        left = next(self._order, None)
        if left is not None:
            raise RuntimeError(f"tensor '{left[2].key}' was planned but never written")
        if not self.shards[0]:  # no tensors at all: still a valid, empty safetensors file
            (self.folder / self.names[0]).write_bytes(_header([]))
        if len(self.shards) > 1:
            weight_map = {
                spec.key: name
                for name, shard in zip(self.names, self.shards, strict=True)
                for spec in shard
            }
            total = sum(spec.nbytes for shard in self.shards for spec in shard)
            write_json(
                self.folder / INDEX_NAME,
                {"metadata": {"total_size": total}, "weight_map": weight_map},
            )

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()


@contextmanager
def building(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``out`` to build a folder in, renamed to ``out`` on success
    and removed on failure, so ``out`` is never seen half-written."""
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; models are for sharing
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise InputError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"output folder {out} already exists and is not empty: choose another or pass "
            "overwrite=True (--overwrite) to replace it"
        )


def _write_tensors(
    folder: Path, specs: list[TensorSpec], tensors: Iterator[tuple[str, torch.Tensor]], shard_size
) -> list[str]:
    """Stream ``tensors`` into a folder's shards; returns the shard file names."""
    writer = ShardedWriter(folder, specs, shard_size)
    try:
        for key, tensor in tensors:
            writer.write(key, tensor)
            del tensor  # freed before the next one is made: a merge holds N + 2 tensors
        writer.close()
    finally:
        writer.abort()
    return writer.names


def save_state_dict(
    state: dict[str, torch.Tensor],
    folder: str | Path,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write a state dict as a model folder's weights: ``model.safetensors``, or numbered
    shards plus ``model.safetensors.index.json`` (the layout merges read and write).

    Tensors that share storage (tied weights) are each written as their own copy.
    """
    specs = [TensorSpec(key, t.dtype, tuple(t.shape)) for key, t in state.items()]
    with building(folder, overwrite) as tmp:
        _write_tensors(tmp, specs, iter(state.items()), parse_size(shard_size))
    return Path(folder)


# --- merging -----------------------------------------------------------------------------


def output_dtype(dtype: str | None) -> torch.dtype | None:
    """The dtype named by ``dtype`` (None keeps each tensor's base dtype)."""
    if dtype is None:
        return None
    if dtype not in OUTPUT_DTYPES:
        raise InputError(f"dtype '{dtype}' is not supported: use {' | '.join(OUTPUT_DTYPES)}")
    return OUTPUT_DTYPES[dtype]


def merge_checkpoints(
    method: str,
    base: str | Path | None,
    experts: list[str | Path],
    *,
    out: str | Path,
    weights: list[float] | None = None,
    dtype: str | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    device: str = "cpu",
    overwrite: bool = False,
    **params: Any,
) -> Path:
    """Merge model checkpoints on disk into a loadable model folder ``out``, tensor by tensor.

    ``params`` are the method's (``lam``, ``density``, ``scope``, ``seed``, ...). The output
    holds the weights (sharded at ``shard_size``, cast to ``dtype`` or kept in the base's
    dtype), the base folder's config and tokenizer files (the first expert's when there is
    no base) and ``merge.json``, a record of the method, parameters and inputs.
    Floating tensors are merged in (at least) float32 on ``device``; integer and bool
    tensors are copied from the base. The inputs are only read.
    """
    from lucidml.core.config import resolve_device

    _check_out(Path(out), overwrite)  # before any reading: the folder is refused either way
    technique = get_method(method)
    if not experts:
        raise InputError("a merge needs at least one expert model")
    if technique.needs_base and base is None:
        raise InputError(f"method '{method}' needs a base model")
    params = technique.check(len(experts), weights, dict(params))
    out_dtype, size = output_dtype(dtype), parse_size(shard_size)
    models = _Inputs.open(base, experts, Path(out), resolve_device(device))
    keys = models.reference.keys()
    stats = None
    if technique.needs_stats(params):
        collected = [
            _collect_one(technique, key, models, params) for key in track(keys, "merge statistics")
        ]
        stats = technique.finalize(collected, params)
    specs = [models.output_spec(key, out_dtype) for key in keys]
    log.info("merging %d tensors of %d models with %s", len(keys), len(experts), method)
    merged = (
        (key, _merge_one(technique, key, models, weights, params, stats))
        for key in track(keys, "merging")
    )
    with building(out, overwrite) as tmp:
        files = _write_tensors(tmp, specs, merged, size)
        if models.reference.folder is not None:
            copy_model_files(models.reference.folder, tmp, dtype)
        record = {
            "method": method,
            "params": params,
            "weights": weights,
            "dtype": dtype,
            "shard_size": size,
            "inputs": {
                "base": models.base.describe() if models.base else None,
                "experts": [reader.describe() for reader in models.experts],
            },
            "output": {"files": files, "total_size": sum(spec.nbytes for spec in specs)},
        }
        write_json(tmp / MERGE_RECORD, record)
    return Path(out)


@dataclass
class _Inputs:
    """The readers of one merge and how their tensors are loaded for merging."""

    base: CheckpointReader | None
    experts: list[CheckpointReader]
    device: str

    @classmethod
    def open(cls, base, experts, out: Path, device: str) -> _Inputs:
        """Readers for the base and the experts, checked to match and not to be ``out``."""
        named = {} if base is None else {f"base {base}": CheckpointReader(base)}
        for i, path in enumerate(experts, 1):
            named[f"model {i} ({path})"] = CheckpointReader(path)
        for reader in named.values():
            source = reader.path.resolve()
            if source == out.resolve() or out.resolve() in source.parents:
                raise InputError(f"output folder {out} would replace the input {reader.path}")
        check_compatible(named)
        readers = list(named.values())
        if base is None:
            return cls(None, readers, device)
        return cls(readers[0], readers[1:], device)

    @property
    def reference(self) -> CheckpointReader:
        """The model whose tensor names, dtypes and files the output takes."""
        return self.base or self.experts[0]

    def floating(self, key: str) -> bool:
        return self.reference.dtype(key).is_floating_point

    def output_spec(self, key: str, dtype: torch.dtype | None) -> TensorSpec:
        """Floating tensors take the requested dtype; integer and bool tensors keep theirs."""
        stored = self.reference.dtype(key)
        written = dtype if dtype is not None and stored.is_floating_point else stored
        return TensorSpec(key, written, self.reference.shape(key))

    def load(self, key: str) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """One tensor of the base and of each expert, as merged: on the merge device,
        floating ones in at least float32 (the methods compute in it anyway), so a
        float32 output of bf16 inputs keeps every bit the merge computed."""
        base_t = self._as_merged(self.base.get(key)) if self.base is not None else None
        return base_t, [self._as_merged(reader.get(key)) for reader in self.experts]

    def _as_merged(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor.to(self.device)
        return tensor.to(self.device, torch.promote_types(tensor.dtype, torch.float32))


# One function call per tensor: its inputs are freed on return, before the next are read.
def _collect_one(technique, key: str, models: _Inputs, params: dict) -> Any:
    base_t, expert_ts = models.load(key)
    return technique.collect(key, base_t, expert_ts, params)


def _merge_one(technique, key, models: _Inputs, weights, params: dict, stats) -> torch.Tensor:
    if not models.floating(key):
        return models.reference.get(key)
    base_t, expert_ts = models.load(key)
    return technique.apply(key, base_t, expert_ts, weights, params, stats)


def _is_weight_file(name: str) -> bool:
    stem = name[: -len(".index.json")] if name.endswith(".index.json") else name
    return stem.endswith(WEIGHT_SUFFIXES)


def copy_model_files(source: Path, dest: Path, dtype: str | None = None) -> list[str]:
    """Copy a model folder's non-weight files (config, generation config, tokenizer and
    chat template files, ...) so the merged weights load like the source model.

    Hidden files, sub-folders, weight files, the model card and an old ``merge.json`` are
    left out. With ``dtype``, ``config.json``'s dtype entry says the new dtype. Returns
    the names copied.
    """
    copied = []
    for file in sorted(source.iterdir()):
        name = file.name
        if not file.is_file() or name.startswith(".") or _is_weight_file(name):
            continue
        if name in NOT_COPIED:
            continue
        if name == "config.json" and dtype is not None:
            _write_config_dtype(file, dest / name, dtype)
        else:
            shutil.copy2(file, dest / name)
        copied.append(name)
    return copied


def _write_config_dtype(source: Path, dest: Path, dtype: str) -> None:
    config = read_json(source)
    for field in ("torch_dtype", "dtype"):  # transformers 4 wrote torch_dtype, 5 writes dtype
        if field in config:
            config[field] = dtype
    write_json(dest, config)
