"""A state/object vocabulary with its seen pairs (and, when known, its feasible pairs).

Files a user passes:

- names (``--states``, ``--objects``): one name per line, or a JSON list;
- pairs (``--seen``, ``--labels``): one pair per line as ``state<TAB>object`` or
  ``state object`` (czsl's split files; single-word names), a CSV with a
  ``state,object`` header, or a JSON list of ``[state, object]``;
- a whole vocabulary (``--vocab``): JSON ``{"states": [...], "objects": [...],
  "seen": [[s, o], ...], "feasible": [[s, o], ...]}`` (``feasible`` optional).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lucidml.core.runs import read_json
from lucidml.errors import InputError

DEMO_VOCAB = "demo_vocab.json"


@dataclass
class Vocabulary:
    states: list[str]
    objects: list[str]
    seen: np.ndarray  # (S, O) bool: training pairs, always feasible
    feasible: np.ndarray | None = None  # (S, O) bool ground truth, when known
    borderline: np.ndarray | None = None  # (S, O) bool: labels the authors were unsure of

    @classmethod
    def build(cls, states, objects, seen_pairs, feasible_pairs=None, source: str = "the input"):
        """Checked names and pairs: no empty vocabulary, no duplicates, no pair whose
        words are not in the vocabulary (one sentence naming the first problem)."""
        states, objects = _names(states, "state", source), _names(objects, "object", source)
        seen = _mask(seen_pairs, states, objects, "seen pair", source)
        feasible = None
        if feasible_pairs is not None:
            feasible = _mask(feasible_pairs, states, objects, "feasible pair", source)
            missing = np.argwhere(seen & ~feasible)
            if len(missing):
                s, o = missing[0]
                raise InputError(
                    f"{source}: seen pair '{states[s]} {objects[o]}' is not among the "
                    "feasible pairs (seen pairs exist by definition)"
                )
        return cls(states, objects, seen, feasible)

    @property
    def unseen_pairs(self) -> list[tuple[int, int]]:
        return [(int(s), int(o)) for s, o in np.argwhere(~self.seen)]


def _names(values, what: str, source: str) -> list[str]:
    names = [str(v).strip() for v in values]
    if not names:
        raise InputError(f"{source}: the {what} vocabulary is empty")
    if any(not n for n in names):
        raise InputError(f"{source}: an empty {what} name")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InputError(f"{source}: {what} '{n}' is listed twice")
        seen.add(n)
    return names


def _mask(pairs, states: list[str], objects: list[str], what: str, source: str) -> np.ndarray:
    s_index = {s: i for i, s in enumerate(states)}
    o_index = {o: j for j, o in enumerate(objects)}
    mask = np.zeros((len(states), len(objects)), dtype=bool)
    for pair in pairs:
        if len(pair) != 2:
            raise InputError(f"{source}: {what} {pair!r} is not a (state, object) pair")
        s, o = (str(x).strip() for x in pair)
        if s not in s_index:
            raise InputError(f"{source}: {what} '{s} {o}' has state '{s}', not in the states")
        if o not in o_index:
            raise InputError(f"{source}: {what} '{s} {o}' has object '{o}', not in the objects")
        if mask[s_index[s], o_index[o]]:
            raise InputError(f"{source}: {what} '{s} {o}' is listed twice")
        mask[s_index[s], o_index[o]] = True
    return mask


def _read_text(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file {path} does not exist")
    try:
        return path, path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"file {path} is not UTF-8 text") from None


def read_names(path: str | Path) -> list[str]:
    if Path(path).suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise InputError(f"file {path} must hold a JSON list of names")
        return [str(x) for x in data]
    path, text = _read_text(path)
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(p, list | tuple) for p in data):
            raise InputError(f"file {path} must hold a JSON list of [state, object] pairs")
        return [tuple(p) for p in data]
    path, text = _read_text(path)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and not {"state", "object"} <= set(rows[0]):
            raise InputError(f"file {path} needs 'state' and 'object' columns")
        return [(r["state"], r["object"]) for r in rows]
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("\t") if "\t" in line else line.split()
        if len(parts) != 2:
            raise InputError(
                f"file {path} line {n}: expected 'state object' (or a tab between them), "
                f"got {line.strip()!r}"
            )
        pairs.append((parts[0], parts[1]))
    return pairs


def read_vocabulary(path: str | Path) -> Vocabulary:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not {"states", "objects", "seen"} <= set(data):
        raise InputError(f"file {path} must hold a JSON object with states, objects and seen")
    vocab = Vocabulary.build(
        data["states"], data["objects"], data["seen"], data.get("feasible"), source=str(path)
    )
    if "borderline" in data:
        vocab.borderline = _mask(
            data["borderline"], vocab.states, vocab.objects, "borderline pair", str(path)
        )
    return vocab


def demo_vocabulary() -> Vocabulary:
    """The project's labelled 20 x 20 vocabulary (``data/demo_vocab.json``)."""
    with resources.as_file(resources.files("lucidml.feasibility") / "data" / DEMO_VOCAB) as p:
        return read_vocabulary(p)


def load(
    vocab: str | Path | None = None,
    states: str | Path | None = None,
    objects: str | Path | None = None,
    seen: str | Path | None = None,
    labels: str | Path | None = None,
) -> Vocabulary:
    """A vocabulary from ``vocab`` or from the three files, with optional labels."""
    if vocab is not None:
        if states or objects or seen:
            raise InputError("give either --vocab or --states/--objects/--seen, not both")
        v = read_vocabulary(vocab)
    else:
        if not (states and objects and seen):
            raise InputError("give --states, --objects and --seen files (or one --vocab JSON)")
        v = Vocabulary.build(
            read_names(states), read_names(objects), read_pairs(seen), source=str(seen)
        )
    if labels is not None:
        v.feasible = Vocabulary.build(
            v.states,
            v.objects,
            [(v.states[s], v.objects[o]) for s, o in np.argwhere(v.seen)],
            read_pairs(labels),
            source=str(labels),
        ).feasible
    return v
