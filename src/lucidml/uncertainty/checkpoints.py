"""What ``--resume`` reuses, keyed on everything that determines it (no pickle anywhere).

- ``fit``: the running K-FAC factor sums after each class batch, one safetensors file whose
  metadata holds the identity of the inputs (model weights, pairs, batch settings). A
  resume with other inputs is refused, naming the first field that differs.
- ``active``: one JSON file per finished (strategy, budget, seed) row of the curve, named
  by a digest (``core.runs.digest``) of its inputs (model weights, posterior files, pool, targets, classes, config),
  so a resume reuses exactly the rows whose inputs are unchanged and recomputes the rest.

The device is not part of any key: results on two devices differ only by rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

from lucidml.core.distributed import ItemStore
from lucidml.core.runs import atomic_write_bytes, digest
from lucidml.errors import InputError
from lucidml.uncertainty.config import ActiveConfig, PredictConfig
from lucidml.uncertainty.model import FactorSums

SUMS_FILE = "factor_sums.safetensors"


def model_fingerprint(vlm) -> str:
    """Identity of a model's weights (names, dtypes, shapes and values of its whole state)."""
    state = vlm.model.state_dict()
    return digest(list(state), *state.values())


# --- fit: the running factor sums -------------------------------------------------------


def save_sums(folder: Path, sums: FactorSums, identity: dict) -> Path:
    from safetensors.torch import save

    meta = {
        "identity": json.dumps(identity, sort_keys=True),
        "n_data": str(sums.n_data),
        "n_batches": str(sums.n_batches),
    }
    return atomic_write_bytes(folder / SUMS_FILE, save(sums.to_tensors(), metadata=meta))


def load_sums(folder: Path, identity: dict, device) -> FactorSums | None:
    """The sums checkpointed in ``folder`` (None if there are none), on ``device``;
    refused with one sentence if they were made from other inputs or settings."""
    from safetensors import SafetensorError, safe_open

    path = folder / SUMS_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        saved = json.loads(meta["identity"])
        n_data, n_batches = int(meta["n_data"]), int(meta["n_batches"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"the checkpoint {path} is unreadable ({type(exc).__name__}); delete it to "
            "start the fit over"
        ) from None
    for key in sorted(set(identity) | set(saved)):
        if identity.get(key) != saved.get(key):
            raise InputError(
                f"cannot resume in {folder.parent}: its checkpoint was made with another "
                f"'{key}'; use another --out, or leave out --resume to start over"
            )
    return FactorSums.from_tensors(tensors, n_data, n_batches, device)


# --- active: finished rows of the curve -------------------------------------------------


class RowStore:
    """Finished budget-curve rows, one JSON file each, keyed on all of their inputs.

    ``inputs`` identifies what every row shares (model, posterior, pool, targets,
    classes, prediction settings); a row adds its selection config (strategy, seed,
    the largest budget, which fixes the validation items, ...) and its own budget."""

    def __init__(self, folder: Path, inputs: dict, reuse: bool):
        self.items = ItemStore(folder)
        self.inputs, self.reuse = inputs, reuse
        self.reused = 0

    def key(self, config: ActiveConfig, budget: int, predict: PredictConfig | None) -> str:
        selection = config.model_dump(mode="json", include=set(ActiveConfig.model_fields))
        scoring = (predict or PredictConfig()).model_dump(mode="json")
        return digest(self.inputs, selection, scoring, budget)

    def get(self, config: ActiveConfig, budget: int, predict: PredictConfig | None):
        key = self.key(config, budget, predict)
        if not (self.reuse and self.items.has(key)):
            return None
        self.reused += 1
        return self.items.load(key)

    def put(self, config, budget: int, predict, row: dict) -> None:
        self.items.save(self.key(config, budget, predict), row)
