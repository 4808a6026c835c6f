"""Keyed, sharded, resumable work of ``rank`` and ``score``: distilled sets and cells.

A run folder holds one file per finished item:

- ``sets/<method>-<key>.safetensors``: a distilled set (``images``, ``labels``);
- ``cells/set-<name>-run<r>-<key>.json``: the selected checkpoint (accuracy, learning
  rate, epoch) of every condition of one set in run r;
- ``cells/random-run<r>-<key>.json``: the same for run r's random real subset.

A key hashes everything that determines its item: for a set, the method, IPC, seed,
distiller config, data, training split, kind of device and lucidml version; for a cell,
the set's key, the keys of the sets trained in the same group, the run, the images per
class, the recipe (label regime and soft-label mode included; not ``num_eval`` or the
score weights), the data, the split, the teachers, the kind of device and the version.
So ``--resume`` reuses exactly the items whose inputs did not change.

Work is sharded over processes (``lucidml.core.distributed``) in *units* that each train
whole groups: unit ``set r`` trains every synthetic condition of run r for all sets in one
batched group per condition, unit ``random r`` the run's random subset. A student's
weights in the batched engine depend, by float rounding, on the size of its group (see
docs/distill.md), so the groups are the same whether one process or many run them, and a
unit with any item missing is trained whole again; the main process gathers the items in a
fixed order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lucidml import __version__
from lucidml.core.distributed import (
    ItemStore,
    barrier,
    gather,
    is_main_process,
    pending,
    shard,
    wait_for,
)
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import digest
from lucidml.distill.baselines import distill
from lucidml.distill.config import DistillConfig
from lucidml.distill.evaluate import Evaluator, Source

LOG = get_logger("distill")


class Workspace:
    """The item stores of a run folder. A fresh run (``resume=False``) starts them empty;
    a resumed one keeps finished items and drops temporary files of killed writes."""

    def __init__(self, folder: str | Path, resume: bool):
        folder = Path(folder)
        self.sets = ItemStore(folder / "sets", "safetensors")
        self.cells = ItemStore(folder / "cells")
        if is_main_process():
            for store in (self.sets, self.cells):
                if store.folder.is_dir():
                    for path in store.folder.iterdir():
                        if not resume or path.name.startswith("."):
                            path.unlink()
        barrier()  # no process looks for items before the main process has cleared them

    def stored(self, paths: list[Path]) -> int:
        """How many of ``paths`` exist before any work starts (counted on the main process)."""
        found = sum(p.is_file() for p in paths) if is_main_process() else 0
        barrier()  # no process writes an item before the main process has counted
        return found


def set_key(method: str, ipc: int, cfg: DistillConfig, evaluator: Evaluator) -> str:
    """The key of ``method``'s distilled set from ``evaluator``'s training split."""
    basis = {
        "method": method,
        "ipc": ipc,
        "seed": evaluator.cfg.seed,
        "distill": cfg.model_dump(mode="json"),
        "data": evaluator.data_key,
        "train_index": digest(evaluator.train_index),
        "device": evaluator.device.split(":")[0],
        "version": __version__,
    }
    return f"{method}-{digest(basis)}"


def distilled_sets(
    store: ItemStore, keys: dict[str, str], evaluator: Evaluator, ipc: int, cfg: DistillConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every method's set: this process distils its pending share, then all are read back
    from the store (so every process scores the same stored tensors)."""
    data, idx = evaluator.data, evaluator.train_index
    x, y = data.train_x[idx], data.train_y[idx]
    for method in track(pending(list(keys), store, keys.get), "distilling"):
        LOG.info("distilling %s at IPC %d on %s", method, ipc, evaluator.device)
        images, labels = distill(
            method, x, y, ipc, seed=evaluator.cfg.seed, cfg=cfg, device=evaluator.device
        )
        store.save(keys[method], {"images": images, "labels": labels})
    wait_for([store.path(k) for k in keys.values()])
    loaded = {m: store.load(k) for m, k in keys.items()}
    return {m: (t["images"], t["labels"]) for m, t in loaded.items()}


class CellJob:
    """The cells of sets scored together: their keys, this process's units, the gather."""

    def __init__(
        self,
        evaluator: Evaluator,
        set_keys: dict[str, str],
        counts: dict[int, int],
        store: ItemStore,
    ):
        self.ev, self.set_keys, self.counts, self.store = evaluator, set_keys, counts, store
        self.names = list(set_keys)
        self.runs = list(range(evaluator.cfg.num_eval))
        basis = evaluator.cell_basis() | {"ipc": sorted(counts.items())}
        group = [set_keys[n] for n in self.names]
        self._keys = {}
        for r in self.runs:
            for name in self.names:
                cell = {"kind": "set", "set": set_keys[name], "group": group, "run": r}
                self._keys[("set", name, r)] = f"set-{name}-run{r}-{digest(basis | cell)}"
            cell = {"kind": "random", "run": r}
            self._keys[("random", None, r)] = f"random-run{r}-{digest(basis | cell)}"

    def items(self) -> list[tuple]:
        """Every item, in the fixed order of the gather: run by run, each set then the
        random subset."""
        return list(self._keys)

    def key(self, item: tuple) -> str:
        return self._keys[item]

    def paths(self) -> list[Path]:
        return [self.store.path(k) for k in self._keys.values()]

    def _missing(self, unit: tuple[str, int]) -> list[tuple]:
        kind, r = unit
        names = self.names if kind == "set" else [None]
        return [(kind, n, r) for n in names if not self.store.has(self._keys[(kind, n, r)])]

    def compute(self, sets: dict[str, tuple]) -> None:
        """Train this process's units that miss an item; write each item atomically."""
        checked = self.ev.check(sets)
        sources: list[Source] = self.ev.sources(checked)
        units = [("set", r) for r in self.runs] + [("random", r) for r in self.runs]
        mine = [u for u in shard(units) if self._missing(u)]
        for unit in track(mine, "runs"):
            missing = self._missing(unit)  # the whole unit is trained: its groups stay equal
            kind, r = unit
            if kind == "set":
                picks = dict(zip(self.names, self.ev.train_syn(sources, r), strict=True))
            else:
                picks = {None: self.ev.train_random(self.counts, r)}
            for item in missing:
                _, name, _ = item
                self.store.save(self._keys[item], {"set": name, "run": r, "cells": picks[name]})

    def gather(self) -> dict[str, dict] | None:
        """On the main process, once every item exists: the per-set results
        (``Evaluator.results``); None on the other processes."""
        values = gather(self.items(), self.store, self.key)
        if values is None:
            return None
        syn: dict[str, list] = {name: [] for name in self.names}
        rdm = []
        for (kind, name, _), value in zip(self.items(), values, strict=True):
            (syn[name] if kind == "set" else rdm).append(value["cells"])
        return self.ev.results(self.counts, syn, rdm)
