"""Symbol sequences with planted chunks and known ground truth (the paper's four regimes).

Every generator returns a :class:`PlantedSequence`: the symbols, the spans where a true
chunk was placed, the true vocabulary and the seed. ``E`` is the filler symbol. Words
are strings of single-character symbols, so ``"ABCD"`` is the chunk A, B, C, D.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from lucidml.errors import InputError

FILLER = "E"


@dataclass(frozen=True)
class PlantedSequence:
    """A symbol sequence plus the ground truth that generated it."""

    symbols: str
    spans: list[tuple[int, int]]  # [start, end) of every planted word, filler included
    vocabulary: list[str]  # the true words, filler included
    seed: int
    regime: str

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def alphabet(self) -> list[str]:
        return sorted(set(self.symbols))

    def chunk_spans(self) -> list[tuple[int, int]]:
        """Spans of the planted words longer than one symbol (the chunks proper)."""
        return [(a, b) for a, b in self.spans if b - a > 1]


def _assemble(words: list[str], seed: int, regime: str, vocabulary: list[str]) -> PlantedSequence:
    spans, start = [], 0
    for w in words:
        spans.append((start, start + len(w)))
        start += len(w)
    return PlantedSequence("".join(words), spans, vocabulary, seed, regime)


def _filler(n: int) -> list[str]:
    return [FILLER] * n


def one_chunk(n_repeats: int = 1000, max_filler: int = 19, seed: int = 0) -> PlantedSequence:
    """R1: ``E`` then ``n_repeats`` x (ABCD + E x U{0..max_filler})."""
    rng = np.random.default_rng(seed)
    words = [FILLER]
    for gap in rng.integers(0, max_filler + 1, size=n_repeats):
        words += ["ABCD", *_filler(int(gap))]
    return _assemble(words, seed, "one_chunk", ["ABCD", FILLER])


def several_chunks(
    n_words: int = 1000,
    chunks: Sequence[str] = ("ABCD", "GHI", "JKLMN"),
    max_filler: int = 9,
    seed: int = 0,
) -> PlantedSequence:
    """R2: words drawn uniformly from ``chunks``, each followed by E x U{0..max_filler}."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    for idx, gap in zip(
        rng.integers(0, len(chunks), size=n_words),
        rng.integers(0, max_filler + 1, size=n_words),
        strict=True,
    ):
        words += [chunks[idx], *_filler(int(gap))]
    return _assemble(words, seed, "several_chunks", [*chunks, FILLER])


TRANSFER_CHUNKS = ("ABCDLMN",)  # R2's transfer set: a new word sharing pieces with old ones


def probabilistic_chunks(
    n_draws: int = 10_000,
    words: Sequence[str] = ("CDAB", "AB", "ABCD", FILLER),
    probs: Sequence[float] = (0.1, 0.1, 0.1, 0.7),
    seed: int = 0,
) -> PlantedSequence:
    """R3: ``n_draws`` words drawn with ``probs``, each followed by one ``E``."""
    if not np.isclose(sum(probs), 1.0) or len(probs) != len(words):
        raise InputError("probs must hold one probability per word and sum to 1")
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for idx in rng.choice(len(words), size=n_draws, p=np.asarray(probs)):
        out += [words[idx], FILLER]
    return _assemble(out, seed, "probabilistic_chunks", list(dict.fromkeys([*words, FILLER])))


def hierarchy_vocabulary(
    n_hierarchy: int, rng: np.random.Generator, atoms: str = "ABCD"
) -> list[str]:
    """A vocabulary grown by appending ``n_hierarchy`` concatenations u+v of existing words."""
    vocab = list(atoms)
    while len(vocab) < len(atoms) + n_hierarchy:
        u, v = rng.integers(0, len(vocab), size=2)
        word = vocab[u] + vocab[v]
        if word not in vocab:  # a repeat would not add a level
            vocab.append(word)
    return vocab


def hierarchy(
    n_symbols: int = 100_000, n_hierarchy: int = 10, filler_prob: float = 0.8, seed: int = 0
) -> PlantedSequence:
    """R4: words of a growing hierarchy, deeper words more frequent, ``E`` with ``filler_prob``.

    Word probabilities are ``(1 - filler_prob) * sort_ascending(Dirichlet(1))`` in
    vocabulary order, so the most recently built (deepest) words are the most frequent.
    """
    rng = np.random.default_rng(seed)
    vocab = hierarchy_vocabulary(n_hierarchy, rng)
    word_p = np.sort(rng.dirichlet(np.ones(len(vocab)))) * (1.0 - filler_prob)
    p = np.append(word_p, filler_prob)
    choices = [*vocab, FILLER]
    words: list[str] = []
    total = 0
    # draw in blocks: the expected word length bounds how many draws we need
    while total < n_symbols:
        for idx in rng.choice(len(choices), size=max(1024, n_symbols // 4), p=p):
            words.append(choices[idx])
            total += len(choices[idx])
            if total >= n_symbols:
                break
    seq = _assemble(words, seed, "hierarchy", [*vocab, FILLER])
    keep = [(a, min(b, n_symbols)) for a, b in seq.spans if a < n_symbols]
    return PlantedSequence(seq.symbols[:n_symbols], keep, seq.vocabulary, seed, "hierarchy")


REGIMES: dict[str, Callable[..., PlantedSequence]] = {
    "one_chunk": one_chunk,
    "several_chunks": several_chunks,
    "probabilistic_chunks": probabilistic_chunks,
    "hierarchy": hierarchy,
}


def generate(regime: str, seed: int = 0, **kwargs) -> PlantedSequence:
    if regime not in REGIMES:
        raise InputError(f"unknown regime '{regime}': choose from {', '.join(REGIMES)}")
    return REGIMES[regime](seed=seed, **kwargs)


# --- greedy longest-match parsing ---------------------------------------------------------

_END = object()  # trie key marking that the path so far is a word


class Trie:
    """Prefix tree over tuples of hashable symbols, for greedy longest-match parsing."""

    def __init__(self, words=()):
        self.root: dict = {}
        self.depth = 0
        for w in words:
            self.add(w)

    def add(self, word: Sequence[Hashable]) -> None:
        node = self.root
        for s in word:
            node = node.setdefault(s, {})
        node[_END] = True
        self.depth = max(self.depth, len(word))

    def parse(self, symbols: Sequence[Hashable]) -> list[tuple]:
        """Greedy longest match; a symbol no word starts with becomes its own singleton."""
        out, i, n, root = [], 0, len(symbols), self.root
        while i < n:
            node, j, best = root, i, i + 1
            while j < n:
                node = node.get(symbols[j])
                if node is None:
                    break
                j += 1
                if _END in node:
                    best = j
            out.append(tuple(symbols[i:best]))
            i = best
        return out


def greedy_parse(symbols: Sequence[Hashable], vocabulary) -> list[tuple]:
    """Parse ``symbols`` into words of ``vocabulary`` by greedy longest match."""
    return Trie(tuple(w) for w in vocabulary).parse(symbols)


def true_parse_length(seq: PlantedSequence | str, vocabulary=None) -> int:
    """G: the number of words in a greedy longest-match parse over the true vocabulary."""
    if isinstance(seq, PlantedSequence):
        vocabulary = seq.vocabulary if vocabulary is None else vocabulary
        seq = seq.symbols
    if vocabulary is None:
        raise InputError("true_parse_length needs a vocabulary for a plain sequence")
    return len(greedy_parse(seq, vocabulary))
