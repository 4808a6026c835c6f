"""A feasibility table over states x objects, its file format and its exports.

``matrix[i, j]`` is the score of (states[i], objects[j]) under one score type; seen
(training) pairs are always feasible: +inf in ``matrix`` for LM scores (1 for the
embedding baseline, the top of its range), and 1 in ``probabilities`` (scores squashed
to [0, 1], which KG-SP reads).

Exports, in the layouts those code bases read:

- KG-SP: ``np.save`` of a dict ``scores[obj][state]`` in [0, 1] (load with
  ``allow_pickle=True``); KG-SP clamps negative values to 0, hence [0, 1].
- CSP: ``torch.save({"feasibility": tensor})`` over open-world pairs in
  ``itertools.product(states, objects)`` order, seen entries 0 (CSP adds its seen mask).
- czsl: a ``.npy`` vector in the same pair order (czsl's ``all_pair2idx``), seen +inf.
- CSV: one row per pair with every score the table holds.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lucidml.core.runs import atomic_write_bytes, atomic_write_text
from lucidml.errors import InputError

TABLE_FILE = "scores.safetensors"
META_FILE = "scores.json"


@dataclass
class FeasibilityScores:
    states: list[str]
    objects: list[str]
    matrix: np.ndarray  # (S, O) float32 scores of the chosen type; seen pairs feasible
    seen: np.ndarray  # (S, O) bool
    probabilities: np.ndarray  # (S, O) float32 in [0, 1]; seen pairs 1
    score_type: str
    components: dict[str, np.ndarray] = field(default_factory=dict)  # other score types
    meta: dict = field(default_factory=dict)  # model, prompt hash, settings

    def __post_init__(self):
        shape = (len(self.states), len(self.objects))
        for name in ("matrix", "seen", "probabilities"):
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"{name} has shape {np.shape(getattr(self, name))}, not {shape}")
        self._state_index = {s: i for i, s in enumerate(self.states)}
        self._object_index = {o: j for j, o in enumerate(self.objects)}

    def index(self, state: str, obj: str) -> tuple[int, int]:
        try:
            return self._state_index[state], self._object_index[obj]
        except KeyError:
            raise InputError(f"'{state} {obj}' is not a pair of this vocabulary") from None

    def score(self, state: str, obj: str) -> float:
        i, j = self.index(state, obj)
        return float(self.matrix[i, j])

    def pairs(self) -> list[tuple[str, str]]:
        """Open-world pair order: ``itertools.product(states, objects)``."""
        return [(s, o) for s in self.states for o in self.objects]

    # --- exports ---------------------------------------------------------------------------

    def to_kgsp(self, path: str | Path) -> Path:
        table = {
            o: {s: float(self.probabilities[i, j]) for i, s in enumerate(self.states)}
            for j, o in enumerate(self.objects)
        }
        buf = io.BytesIO()
        np.save(buf, table, allow_pickle=True)  # the layout KG-SP loads
        return atomic_write_bytes(path, buf.getvalue())

    def to_csp(self, path: str | Path) -> Path:
        import torch

        flat = np.where(self.seen, 0.0, self.matrix).astype(np.float32).ravel()
        buf = io.BytesIO()
        torch.save({"feasibility": torch.from_numpy(flat)}, buf)
        return atomic_write_bytes(path, buf.getvalue())

    def to_czsl(self, path: str | Path) -> Path:
        flat = np.where(self.seen, np.inf, self.matrix).astype(np.float32).ravel()
        buf = io.BytesIO()
        np.save(buf, flat)
        return atomic_write_bytes(path, buf.getvalue())

    def to_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        extra = sorted(self.components)
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["state", "object", "seen", self.score_type, "probability", *extra])
        for i, s in enumerate(self.states):
            for j, o in enumerate(self.objects):
                row = [s, o, int(self.seen[i, j]), _num(self.matrix[i, j])]
                row += [_num(self.probabilities[i, j])]
                row += [_num(self.components[k][i, j]) for k in extra]
                writer.writerow(row)
        return atomic_write_text(path, buf.getvalue())

    # --- our own format ------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """``scores.safetensors`` (tables) and ``scores.json`` (names, score type, meta)."""
        from safetensors.numpy import save

        folder = Path(folder)
        tables = {"matrix": self.matrix, "seen": self.seen.astype(np.uint8)}
        tables["probabilities"] = self.probabilities
        tables.update({f"component.{k}": v for k, v in self.components.items()})
        tables = {k: np.ascontiguousarray(v) for k, v in tables.items()}
        atomic_write_bytes(folder / TABLE_FILE, save(tables))
        meta = {"states": self.states, "objects": self.objects, "score_type": self.score_type}
        atomic_write_text(folder / META_FILE, json.dumps({**meta, "meta": self.meta}, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> FeasibilityScores:
        """A table saved by :meth:`save` (its folder or its ``scores.safetensors``)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        table, meta_file = folder / TABLE_FILE, folder / META_FILE
        if not table.is_file() or not meta_file.is_file():
            raise InputError(f"{path} holds no feasibility table ({TABLE_FILE} and {META_FILE})")
        try:
            tables = load_file(table)
            meta = json.loads(meta_file.read_text())
            return cls(
                states=list(meta["states"]),
                objects=list(meta["objects"]),
                matrix=tables["matrix"],
                seen=tables["seen"].astype(bool),
                probabilities=tables["probabilities"],
                score_type=meta["score_type"],
                components={
                    k.removeprefix("component."): v
                    for k, v in tables.items()
                    if k.startswith("component.")
                },
                meta=meta.get("meta", {}),
            )
        except (SafetensorError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"feasibility table in {folder} is malformed: {exc}") from None


def _num(x: float) -> str:
    return "inf" if np.isposinf(x) else f"{float(x):.6g}"
