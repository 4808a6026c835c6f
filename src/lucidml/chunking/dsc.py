"""Discrete state chunking (DSC): population states, a lookup decoder, a chunk dictionary.

1. Each neuron's activity is cut into ``n_bins`` ordinal levels by 1-D k-means; the
   population state is the tuple of levels.
2. A lookup decoder maps each state seen in the first steps to its majority input.
3. A BPE-like dictionary grows chunks by merging adjacent pairs, re-parsing by greedy
   longest match after every round. ``rule="frequency"`` (the paper's) merges the most
   frequent pairs; ``rule="association"`` merges only pairs that co-occur more often than
   chance (count against count(u)·count(v)/N: a ratio of at least ``min_ratio`` and a
   one-sided binomial test), so frequent units that follow each other at random (filler)
   are not glued into chunks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom
from sklearn.cluster import KMeans

from lucidml.chunking.sequences import Trie
from lucidml.errors import InputError, ShapeError


def _as_matrix(H) -> np.ndarray:
    H = H.detach().cpu().numpy() if isinstance(H, torch.Tensor) else np.asarray(H)
    if H.ndim != 2:
        raise ShapeError(f"hidden states must be a (T, n_neurons) matrix, got shape {H.shape}")
    return H.astype(np.float64)


def kmeans_levels(values: np.ndarray, n_bins: int, seed: int = 0) -> np.ndarray:
    """Sorted 1-D k-means centres of ``values`` (n_bins,); repeats the top one if too few values."""
    distinct = np.unique(values)
    k = min(n_bins, len(distinct))
    if k == len(distinct):
        centers = distinct
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(values[:, None])
        centers = np.sort(km.cluster_centers_[:, 0])
    return np.concatenate([centers, np.full(n_bins - k, centers[-1])])


def nearest_level(H: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """s_{t,n} = argmin_b |h_{t,n} - c_{n,b}| for every step and neuron: (T, N) ints."""
    return np.abs(H[:, :, None] - centers[None, :, :]).argmin(-1)


@dataclass
class Discretization:
    """Per-neuron levels and the population states they form."""

    centers: np.ndarray  # (n_neurons, n_bins), ascending per neuron
    levels: np.ndarray  # (T, n_neurons) ordinal level of each neuron
    codes: np.ndarray  # (T,) state id of each step
    states: list[tuple[int, ...]]  # state id -> tuple of levels

    @property
    def n_states(self) -> int:
        return len(self.states)

    def encode(self, H) -> list[tuple[int, ...]]:
        """The state tuples of new activity under these centres."""
        return [tuple(row) for row in nearest_level(_as_matrix(H), self.centers).tolist()]

    def state_tuples(self) -> list[tuple[int, ...]]:
        return [self.states[c] for c in self.codes]

    def transport(self, state: tuple[int, ...] | int) -> np.ndarray:
        """The hidden vector whose neuron n sits at the centre of the state's level: c_{n, s_n}."""
        levels = self.states[state] if isinstance(state, int | np.integer) else state
        return self.centers[np.arange(len(levels)), np.asarray(levels)]


def discretize(H, n_bins: int = 5, seed: int = 0) -> Discretization:
    """Cut each neuron of ``H`` (T, n_neurons) into ``n_bins`` k-means levels."""
    H = _as_matrix(H)
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    centers = np.stack([kmeans_levels(H[:, n], n_bins, seed) for n in range(H.shape[1])])
    levels = nearest_level(H, centers)
    uniq, codes = np.unique(levels, axis=0, return_inverse=True)
    return Discretization(
        centers, levels, codes.reshape(-1), [tuple(int(v) for v in row) for row in uniq]
    )


# --- lookup decoder -----------------------------------------------------------------------


@dataclass
class LookupDecoder:
    table: dict[Hashable, Hashable]

    @classmethod
    def fit(cls, states: Sequence[Hashable], symbols: Sequence[Hashable]) -> LookupDecoder:
        votes: dict[Hashable, Counter] = {}
        for s, x in zip(states, symbols, strict=True):
            votes.setdefault(s, Counter())[x] += 1
        return cls({s: c.most_common(1)[0][0] for s, c in votes.items()})

    def predict(self, states: Sequence[Hashable]) -> list:
        return [self.table.get(s) for s in states]


def decode_accuracy(
    states: Sequence[Hashable], symbols: Sequence[Hashable], train_steps: int
) -> dict:
    """Fit on the first ``train_steps`` steps; accuracy on the rest (unseen states are errors)."""
    if not 0 < train_steps < len(states):
        raise InputError(f"decoder_train_steps must be in 1..{len(states) - 1}, got {train_steps}")
    dec = LookupDecoder.fit(states[:train_steps], symbols[:train_steps])
    test_states, test_symbols = states[train_steps:], symbols[train_steps:]
    pred = dec.predict(test_states)
    return {
        "accuracy": float(np.mean([p == x for p, x in zip(pred, test_symbols, strict=True)])),
        "coverage": float(np.mean([s in dec.table for s in test_states])),
        "decoder": dec,
    }


def most_frequent_state(
    states: Sequence[Hashable], symbols: Sequence[Hashable], symbol
) -> Hashable:
    """σ*: the most frequent state among the steps whose input is ``symbol``."""
    counts = Counter(s for s, x in zip(states, symbols, strict=True) if x == symbol)
    if not counts:
        raise InputError(f"symbol {symbol!r} never occurs in the recorded window")
    return counts.most_common(1)[0][0]


# --- chunk dictionary ---------------------------------------------------------------------


@dataclass
class ChunkDictionary:
    """Chunks (tuples of symbols) learnt by merging frequent adjacent pairs."""

    chunks: list[tuple]
    history: list[dict] = field(default_factory=list)  # per round: parse length, added chunks

    def __post_init__(self):
        self._trie = Trie(self.chunks)

    def parse(self, symbols: Sequence[Hashable]) -> list[tuple]:
        """Greedy longest-match parse over the dictionary."""
        return self._trie.parse(symbols)

    def counts(self, symbols: Sequence[Hashable]) -> Counter:
        return Counter(self.parse(symbols))


MERGE_RULES = ("association", "frequency")


def pair_association(
    pair_count: np.ndarray, left_count: np.ndarray, right_count: np.ndarray, n_units: int
) -> tuple[np.ndarray, np.ndarray]:
    """Observed over expected count of adjacent pairs, and the one-sided binomial p-value.

    Under independence a pair (u, v) is expected count(u)·count(v)/N times among the N−1
    adjacent positions of a parse of N units; p = P(X ≥ count(uv)) for
    X ~ Binomial(N−1, count(u)·count(v)/N²).
    """
    pair_count = np.asarray(pair_count, dtype=np.float64)
    q = np.asarray(left_count, dtype=np.float64) * np.asarray(right_count) / float(n_units) ** 2
    ratio = pair_count / (q * n_units)
    p = binom.sf(pair_count - 1, n_units - 1, np.minimum(q, 1.0))
    return ratio, p


def _candidates(
    parse: list[tuple], known: set, min_freq: int, rule: str, min_ratio: float, alpha: float
) -> list[tuple]:
    """The pairs a round may add, best first: by count (ties in first-seen order)."""
    pairs = Counter(zip(parse, parse[1:], strict=False))
    frequent = [(u, v, n) for (u, v), n in pairs.items() if n >= min_freq and u + v not in known]
    if rule == "association" and frequent:
        units = Counter(parse)
        ratio, p = pair_association(
            [n for _, _, n in frequent],
            [units[u] for u, _, _ in frequent],
            [units[v] for _, v, _ in frequent],
            len(parse),
        )
        # Bonferroni over the pairs tested this round
        keep = (ratio >= min_ratio) & (p <= alpha / len(frequent))
        frequent = [f for f, k in zip(frequent, keep, strict=True) if k]
    frequent.sort(key=lambda f: -f[2])
    return [u + v for u, v, _ in frequent]


def learn_dictionary(
    symbols: Sequence[Hashable],
    n_rounds: int = 6,
    merges_per_round: int = 5,
    min_freq: int = 10,
    rule: str = "frequency",
    min_ratio: float = 2.0,
    alpha: float = 0.01,
) -> ChunkDictionary:
    """Start from singletons; each round adds up to ``merges_per_round`` adjacent pairs.

    ``rule="frequency"`` (the default here, the paper's) adds the most frequent pairs with
    count ≥ ``min_freq``. ``rule="association"`` adds, most frequent first, only the pairs
    with count ≥ ``min_freq`` that occur at least ``min_ratio`` times their count under
    independence and whose one-sided binomial p is below ``alpha`` divided by the number of
    pairs tested (Bonferroni); it stops when no pair is associated. The parse of a
    sequence that repeats one unit (x y x y ...) therefore stops shrinking under
    ``association`` once the unit is found, where ``frequency`` keeps doubling it.
    """
    if rule not in MERGE_RULES:
        raise InputError(f"unknown merge rule '{rule}': choose from {', '.join(MERGE_RULES)}")
    symbols = list(symbols)
    chunks = list(dict.fromkeys((s,) for s in symbols))
    known, trie = set(chunks), Trie(chunks)
    parse = [(s,) for s in symbols]
    history = []
    for r in range(n_rounds):
        added = _candidates(parse, known, min_freq, rule, min_ratio, alpha)[:merges_per_round]
        for c in added:
            chunks.append(c)
            known.add(c)
            trie.add(c)
        parse = trie.parse(symbols)
        history.append({"round": r + 1, "parse_length": len(parse), "added": added})
        if not added:
            break
    return ChunkDictionary(chunks, history)


def boundary_scores(parse: Sequence[tuple], true_spans: Sequence[tuple[int, int]]) -> dict:
    """Precision and recall of the parse's chunk boundaries against the planted spans."""
    found, pos = set(), 0
    for c in parse:
        pos += len(c)
        found.add(pos)
    truth = {b for _, b in true_spans}
    end = max(truth | found, default=0)
    found.discard(end)
    truth.discard(end)
    hits = len(found & truth)
    return {
        "precision": hits / len(found) if found else 0.0,
        "recall": hits / len(truth) if truth else 0.0,
    }
