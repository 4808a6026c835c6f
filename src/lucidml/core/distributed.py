"""Multi-process sharding with Hugging Face ``accelerate``.

A job whose work is a list of independent items runs unchanged as one process or as
many (``accelerate launch --num_processes N -m lucidml ...``, on GPUs or with
``--cpu``)::

    store = ItemStore(run / "items")
    for item in track(pending(items, store, key), "items"):  # this process's shard
        store.save(key(item), compute(item))               # atomic, one file per item
    results = gather(items, store, key)                      # main process: all, in order

Each process takes the items whose position ``i`` satisfies ``i % world_size ==
process_index``; an item whose output exists is skipped, so a killed run resumes
without redoing or duplicating work, whatever the number of processes before and
after. The main process waits for every item's file and reads them in the items'
order, so the merged result does not depend on how many processes computed it.
Waiting is by polling files, not a collective barrier, so a long shard cannot time out
the others; if a process dies, the launcher stops the rest.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# what torchrun / accelerate launch (WORLD_SIZE) and MPI launchers set
_LAUNCHER_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launched() -> bool:
    for var in _LAUNCHER_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


_launcher_pid: int | None = None  # the parent that started this process, under a launcher


@functools.cache
def _state():
    """accelerate's PartialState, created only under a launcher (importing accelerate
    costs seconds that a plain single-process command does not need)."""
    global _launcher_pid
    if not _launched():
        return None
    _launcher_pid = os.getppid()
    import torch
    from accelerate import PartialState

    # Without GPUs (or under ``--cpu``) accelerate only joins the processes when asked
    # for CPU explicitly; otherwise each would believe it is alone and do all the work.
    on_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1",
        "true",
        "yes",
    )
    return PartialState(cpu=on_cpu)


def process_index() -> int:
    """This process's index among all processes (0 without a launcher)."""
    s = _state()
    return 0 if s is None else s.process_index


def local_process_index() -> int:
    """This process's index on its own machine (which GPU it takes)."""
    s = _state()
    return 0 if s is None else s.local_process_index


def world_size() -> int:
    """How many processes share the work (1 without a launcher)."""
    s = _state()
    return 1 if s is None else s.num_processes


def is_main_process() -> bool:
    return process_index() == 0


def barrier() -> None:
    """Wait until every process reaches this point (a no-op for one process). Use it only
    where all processes arrive within minutes (before work starts), not after shards."""
    s = _state()
    if s is not None:
        s.wait_for_everyone()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (a collective: every process of the
    launch must call it at the same point). One process gets its own value back."""
    s = _state()
    if s is None or s.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def shard(items: Sequence[T]) -> list[T]:
    """The items this process handles: every ``world_size``-th one from its index."""
    rank, size = process_index(), world_size()
    return [item for i, item in enumerate(items) if i % size == rank]


class ItemStore:
    """One file per finished item in ``folder``: JSON values or safetensors tensor dicts.

    Files are written whole (temporary file and rename), so a kill leaves either the
    finished item or nothing.
    """

    def __init__(self, folder: str | Path, fmt: str = "json"):
        if fmt not in ("json", "safetensors"):
            raise ValueError(f"fmt must be json or safetensors, got {fmt!r}")
        self.folder, self.fmt = Path(folder), fmt

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.{self.fmt}"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, value: Any) -> Path:
        from lucidml.core.runs import atomic_write_bytes, write_json

        if self.fmt == "json":
            return write_json(self.path(key), value)
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in value.items()}
        return atomic_write_bytes(self.path(key), save(tensors))

    def load(self, key: str) -> Any:
        if self.fmt == "json":
            return json.loads(self.path(key).read_text())
        from safetensors.torch import load_file

        return load_file(self.path(key))


def pending(items: Iterable[T], store: ItemStore, key: Callable[[T], str]) -> list[T]:
    """This process's shard of ``items``, less those already in ``store``."""
    return [item for item in shard(list(items)) if not store.has(key(item))]


def wait_for(paths: Sequence[Path], poll: float = 0.5, on_wait: Callable | None = None) -> None:
    """Block until every path exists (items other processes are still computing).

    Under a launcher, a process whose launcher has gone stops waiting with an error:
    torchrun starts each worker in its own session, so killing the launcher alone would
    otherwise leave the workers waiting for items nobody computes."""
    _state()  # records the launcher's pid under a launcher
    missing = [p for p in paths if not p.is_file()]
    if missing and on_wait is not None:
        on_wait(len(missing))
    while missing:
        time.sleep(poll)
        missing = [p for p in missing if not p.is_file()]
        if missing and _launcher_pid is not None and os.getppid() != _launcher_pid:
            from lucidml.errors import LucidError

            raise LucidError(
                f"the launcher of this process is gone while {len(missing)} items were still "
                "missing; rerun the command with --resume to finish them"
            )


def gather(
    items: Sequence[T], store: ItemStore, key: Callable[[T], str], poll: float = 0.5
) -> list[Any] | None:
    """On the main process: every item's stored value, in the order of ``items``, once
    all processes have written theirs. Other processes get None (their work is done)."""
    if not is_main_process():
        return None
    from lucidml.core.progress import get_logger

    keys = [key(item) for item in items]
    wait_for(
        [store.path(k) for k in keys],
        poll,
        lambda n: get_logger("core").info("waiting for %d items from other processes", n),
    )
    return [store.load(k) for k in keys]
