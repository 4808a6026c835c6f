"""The FLM prompt: which seen pairs go in context, and how the lines read.

A prompt is an instruction, then known examples, then the query::

    Answer Yes if such a thing can be found in the real world, and No if it cannot.
    Q: Does a boiled mountain exist in the real world? A: No
    Q: Does a sliced apple exist in the real world? A: Yes      <- same object as the query
    Q: Does a wet apple exist in the real world? A: Yes
    Q: Does a peeled egg exist in the real world? A: Yes        <- same state as the query
    Q: Does a peeled banana exist in the real world? A:

The parts shared by every query about one object (instruction, "No" examples, the
same-object block) come first, so the scorer encodes them once per object and reuses
their key/value cache. Only seen (training) pairs and the given known-infeasible pairs
ever enter a context; the query, validation and test pairs never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lucidml.errors import InputError

INSTRUCTION = "Answer Yes if such a thing can be found in the real world, and No if it cannot."
# Known-infeasible examples used when the caller gives none (pairs inside the user's
# vocabulary are dropped first, so an evaluated pair never appears in a context).
DEFAULT_NEGATIVES = (
    ("boiled", "mountain"),
    ("folded", "ocean"),
    ("sliced", "cloud"),
    ("peeled", "song"),
    ("rusty", "rainbow"),
    ("ripe", "hammer"),
    ("melted", "shadow"),
    ("inflated", "pebble"),
)

# The article follows the sound, not the letter, for these words.
_AN_WORDS = {"hour", "hourly", "honest", "honour", "honor", "heir", "herb"}
_A_WORDS = {"one", "once", "unicorn", "uniform", "unique", "unit", "united", "universal"}
_A_PREFIXES = ("use", "usu", "uten", "euro", "ewe", "ubiq")


def article(word: str) -> str:
    """'a' or 'an' before ``word`` (vowel letter rule, with common exceptions)."""
    w = word.strip().lower()
    first = w.split()[0] if w else ""
    if first in _AN_WORDS:
        return "an"
    if first in _A_WORDS or first.startswith(_A_PREFIXES):
        return "a"
    return "an" if first[:1] in "aeiou" and first else "a"


def question(state: str, obj: str) -> str:
    phrase = f"{state} {obj}"
    return f"Does {article(phrase)} {phrase} exist in the real world?"


def example_line(state: str, obj: str, answer: str) -> str:
    return f"Q: {question(state, obj)} A: {answer}"


def query_line(state: str, obj: str) -> str:
    """The query stops after 'A:' so the next token is the answer."""
    return f"Q: {question(state, obj)} A:"


@dataclass(frozen=True)
class PromptSettings:
    """Everything that decides a prompt's text (and so a cached score)."""

    n_examples: int = 8
    n_object_examples: int | None = None  # None: half of n_examples
    n_state_examples: int | None = None  # None: half of n_examples
    object_block: str = "fixed"  # "fixed" (seeded, shared by an object's queries) or "ranked"
    negatives: tuple[tuple[str, str], ...] = DEFAULT_NEGATIVES
    n_negatives: int = 2
    instruction: str = INSTRUCTION
    seed: int = 0

    def __post_init__(self):
        if self.n_examples < 0 or self.n_negatives < 0:
            raise InputError("n_examples and n_negatives must be at least 0")
        if self.object_block not in ("fixed", "ranked"):
            raise InputError(f"object_block must be 'fixed' or 'ranked', got '{self.object_block}'")

    @property
    def per_object(self) -> int:
        k = self.n_object_examples
        return self.n_examples // 2 if k is None else min(k, self.n_examples)

    @property
    def per_state(self) -> int:
        k = self.n_state_examples
        return (self.n_examples - self.per_object) if k is None else k


@dataclass(frozen=True)
class Prompt:
    state: int
    obj: int
    prefix: str  # shared by every query about this object (ends with a newline)
    text: str  # the whole prompt; starts with ``prefix``


class ContextBuilder:
    """Builds the prompt of each unseen (state, object) query.

    ``state_similarity`` (S, S) and ``object_similarity`` (O, O), when given (e.g.
    cosines of sentence embeddings), rank the same-state block by the similarity of
    objects, and with ``object_block="ranked"`` the same-object block by the similarity
    of states; otherwise both blocks follow a seeded order.
    """

    def __init__(
        self,
        states: Sequence[str],
        objects: Sequence[str],
        seen: np.ndarray,
        settings: PromptSettings = PromptSettings(),
        state_similarity: np.ndarray | None = None,
        object_similarity: np.ndarray | None = None,
    ):
        self.states, self.objects, self.settings = list(states), list(objects), settings
        self.seen = np.asarray(seen, dtype=bool)
        self.state_sim, self.object_sim = state_similarity, object_similarity
        if settings.object_block == "ranked" and state_similarity is None:
            raise InputError("object_block 'ranked' needs state similarities (an encoder)")
        rng = np.random.default_rng(settings.seed)
        # One seeded order per object and per state, fixed for all of its queries.
        self._object_order = [rng.permutation(np.flatnonzero(col)) for col in self.seen.T]
        self._state_order = [rng.permutation(np.flatnonzero(row)) for row in self.seen]
        self._seen_list = np.argwhere(self.seen)
        vocab = {(s, o) for s in self.states for o in self.objects}
        usable = [p for p in settings.negatives if tuple(p) not in vocab]
        self.negatives = usable[: settings.n_negatives]

    def _same_object(self, s: int, o: int) -> list[int]:
        k = self.settings.per_object
        if self.settings.object_block == "ranked":
            cands = np.flatnonzero(self.seen[:, o])
            order = cands[np.argsort(-self.state_sim[s, cands], kind="stable")]
        else:
            order = self._object_order[o]
        return [int(x) for x in order if x != s][:k]

    def _same_state(self, s: int, o: int) -> list[int]:
        k = self.settings.per_state
        if self.object_sim is not None:
            cands = np.flatnonzero(self.seen[s])
            order = cands[np.argsort(-self.object_sim[o, cands], kind="stable")]
        else:
            order = self._state_order[s]
        return [int(x) for x in order if x != o][:k]

    def examples(self, s: int, o: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(prefix examples, query-specific examples) of query (s, o) as index pairs."""
        same_obj = [(x, o) for x in self._same_object(s, o)]
        chosen = set(same_obj)
        rest = [(s, x) for x in self._same_state(s, o) if (s, x) not in chosen]
        chosen.update(rest)
        missing = self.settings.n_examples - len(chosen)
        if missing > 0:
            # Top up with other seen pairs, in an order fixed by the seed and the query.
            rng = np.random.default_rng([self.settings.seed, s, o])
            for i in rng.permutation(len(self._seen_list)):
                pair = tuple(int(v) for v in self._seen_list[i])
                if pair not in chosen and pair != (s, o):
                    rest.append(pair)
                    chosen.add(pair)
                    if len(chosen) >= self.settings.n_examples:
                        break
        return same_obj, rest

    def build(self, s: int, o: int) -> Prompt:
        same_obj, rest = self.examples(s, o)
        head = [self.settings.instruction]
        head += [example_line(st, ob, "No") for st, ob in self.negatives]
        body = [example_line(self.states[a], self.objects[b], "Yes") for a, b in same_obj]
        tail = [example_line(self.states[a], self.objects[b], "Yes") for a, b in rest]
        if self.settings.object_block == "fixed":
            prefix = "\n".join(head + body) + "\n"
        else:
            prefix = "\n".join(head) + "\n"
        text = "\n".join(head + body + tail + [query_line(self.states[s], self.objects[o])])
        return Prompt(s, o, prefix, text)
