"""Resume state of the lifelong loop as JSON and safetensors, never pickle.

A state is a nested structure of dicts, lists, tuples, plain values and torch tensors
(the rows so far, R, the changed weights, an editor's state). ``split_state`` puts every
tensor into a flat dict under its path and leaves a marker in its place; JSON holds the
rest. A checkpoint is two files: ``<key>-<step>.safetensors`` (written first) and
``<key>.json`` (written last, naming that tensor file), both atomically, so a killed
write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lucidml.core.runs import atomic_write_bytes, read_json
from lucidml.errors import InputError

_TENSOR = "__tensor__"  # a marker {"__tensor__": path} stands where a tensor was
_TUPLE = "__tuple__"  # tuples come back as tuples (RAG's memory holds (question, answer))
FORMAT = 1


def split_state(obj: Any, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, {path: tensor}) of a nested state; tensors are moved to the CPU
    and copied, so the files never alias the model's weights."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, at):
        if isinstance(x, torch.Tensor):
            tensors[at] = x.detach().cpu().contiguous().clone()
            return {_TENSOR: at}
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                raise TypeError(f"state keys must be strings (at '{at}')")
            if _TENSOR in x or _TUPLE in x:
                raise TypeError(f"state key {_TENSOR} or {_TUPLE} is reserved (at '{at}')")
            return {k: walk(v, f"{at}/{k}") for k, v in x.items()}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, f"{at}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{at}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot store {type(x).__name__} in a checkpoint (at '{at}')")

    return walk(obj, path), tensors


def join_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``split_state``."""
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_TUPLE}:
            return tuple(join_state(v, tensors) for v in tree[_TUPLE])
        return {k: join_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_state(v, tensors) for v in tree]
    return tree


def save_state(folder: str | Path, key: str, step: int, state: Any) -> Path:
    """Write ``state`` as ``folder/<key>.json`` and its tensors beside it; an earlier
    step's tensor file is removed once the JSON names the new one."""
    from safetensors.torch import save

    folder = Path(folder)
    tree, tensors = split_state(state)
    name = f"{key}-{step:04d}.safetensors"
    atomic_write_bytes(folder / name, save(tensors))
    # NaN stays NaN (a metric with nothing to score): core's to_json would make it null
    text = json.dumps({"format": FORMAT, "tensors": name, "state": tree}, allow_nan=True)
    atomic_write_bytes(folder / f"{key}.json", text.encode())
    for old in folder.glob(f"{key}-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / f"{key}.json"


def refuse_pickled_state(folder: str | Path, key: str) -> None:
    """Refuse a run folder whose only resume state is ``<key>.pt``, the pickle file that
    versions before this format wrote: it is never loaded (unpickling a folder from
    elsewhere can run code), and resuming without it would silently start over."""
    folder = Path(folder)
    if (folder / f"{key}.pt").is_file() and not (folder / f"{key}.json").is_file():
        run = folder.parent
        raise InputError(
            f"cannot resume {run}: it was written by an older version of lucidml whose "
            f"resume state ({folder.name}/{key}.pt) cannot be read; rerun without --resume "
            "(with --overwrite to replace it) or into a new --out"
        )


def load_state(folder: str | Path, key: str) -> Any | None:
    """The state ``save_state`` wrote under ``key``, or None when there is none."""
    from safetensors.torch import load_file

    path = Path(folder) / f"{key}.json"
    if not path.is_file():
        return None
    stored = read_json(path)
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise InputError(f"{path} is not a checkpoint this version of lucidml can resume")
    tensor_file = path.parent / stored["tensors"]
    if not tensor_file.is_file():
        raise InputError(f"checkpoint {path} names {tensor_file.name}, which is missing")
    return join_state(stored["state"], load_file(tensor_file))


__all__ = ["join_state", "load_state", "refuse_pickled_state", "save_state", "split_state"]
