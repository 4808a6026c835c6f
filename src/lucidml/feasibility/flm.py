"""FLM: score every unseen (state, object) pair of a vocabulary with a causal LM.

Work is split by object: one object's queries share a prompt prefix (so they share
its key/value cache), and each object's answer logits are one stored item. Items are
keyed on everything that decides them (model, prompt settings, vocabulary, seen
pairs), so a killed run resumes where it stopped and a rerun reads them back; under
``accelerate launch`` the objects are sharded over processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lucidml.core.distributed import ItemStore, gather, pending
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import digest
from lucidml.errors import InputError, ModelError
from lucidml.feasibility.prompts import ContextBuilder, Prompt, PromptSettings
from lucidml.feasibility.scorer import SCORE_TYPES, YesNoScorer, score_from_logits
from lucidml.feasibility.scores import FeasibilityScores
from lucidml.feasibility.vocab import Vocabulary

log = get_logger("feasibility")
PROMPT_VERSION = 1  # bump when the prompt text changes: cached scores then miss


def render(prompt: Prompt, tokenizer, chat: bool) -> tuple[str, str]:
    """(text, shared prefix) as the model reads them. With ``chat``, the prompt is the
    user turn of the tokenizer's chat template and the cue 'A:' opens the assistant's."""
    if not chat:
        return prompt.text, prompt.prefix
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("chat prompts need a tokenizer with a chat template; this one has none")
    body, cue = prompt.text.rsplit(" A:", 1)[0], "A:"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": body}], add_generation_prompt=True, tokenize=False
    )
    text += cue
    cut = text.find(prompt.prefix)
    prefix = text[: cut + len(prompt.prefix)] if cut >= 0 else ""
    return text, prefix


def similarity_matrices(names_a: Sequence[str], names_b: Sequence[str], encoder) -> tuple:
    """Cosine similarities among states and among objects under a sentence encoder."""

    def cos(names):
        v = encoder.encode(list(names), convert_to_numpy=True, normalize_embeddings=True)
        return v.astype(np.float64) @ v.astype(np.float64).T

    return cos(names_a), cos(names_b)


def prompt_key(
    model_identity, settings: PromptSettings, chat: bool, vocab: Vocabulary, dtype
) -> str:
    """A digest of everything that decides the answer logits of a vocabulary."""
    return digest(
        {
            "version": PROMPT_VERSION,
            "model": model_identity,
            "dtype": str(dtype),
            "settings": asdict(settings),
            "chat": chat,
            "states": vocab.states,
            "objects": vocab.objects,
            "seen": np.argwhere(vocab.seen).tolist(),
        }
    )


def score_vocabulary(
    vocab: Vocabulary,
    model,
    tokenizer,
    settings: PromptSettings,
    score: str = "yes_logit",
    chat: bool = False,
    batch_size: int = 32,
    prefix_cache: bool = True,
    store: ItemStore | None = None,
    similarities: tuple[np.ndarray, np.ndarray] | None = None,
    meta: dict | None = None,
) -> FeasibilityScores | None:
    """The feasibility table of ``vocab`` (None on processes other than the main one)."""
    if score not in SCORE_TYPES:
        raise InputError(f"unknown score '{score}': choose from {', '.join(SCORE_TYPES)}")
    state_sim, object_sim = similarities if similarities is not None else (None, None)
    builder = ContextBuilder(
        vocab.states, vocab.objects, vocab.seen, settings, state_sim, object_sim
    )
    scorer = YesNoScorer(model, tokenizer, batch_size=batch_size, prefix_cache=prefix_cache)
    groups = [o for o in range(len(vocab.objects)) if not vocab.seen[:, o].all()]

    def key(o: int) -> str:
        return f"object-{o:06d}"

    def run_group(o: int) -> dict[str, torch.Tensor]:
        prompts = [builder.build(s, o) for s in np.flatnonzero(~vocab.seen[:, o])]
        rendered = [render(p, tokenizer, chat) for p in prompts]
        got = scorer.score([t for t, _ in rendered], [p for _, p in rendered])
        return {k: torch.from_numpy(getattr(got, k)) for k in ("z_yes", "z_no", "lse")}

    if store is None:
        items = [run_group(o) for o in track(groups, "scoring objects")]
    else:
        todo = pending(groups, store, key)
        if len(todo) < len(groups):
            log.info("%d of %d objects already scored", len(groups) - len(todo), len(groups))
        for o in track(todo, "scoring objects"):
            store.save(key(o), run_group(o))
        items = gather(groups, store, key)
        if items is None:
            return None
    shape = vocab.seen.shape
    z = {k: np.full(shape, np.nan) for k in ("z_yes", "z_no", "lse")}
    for o, item in zip(groups, items, strict=True):
        rows = np.flatnonzero(~vocab.seen[:, o])
        for k in z:
            z[k][rows, o] = item[k].numpy()
    return table_from_logits(vocab, z, score, {**(meta or {}), "tokens": scorer.tokens_processed})


def table_from_logits(
    vocab: Vocabulary, z: dict[str, np.ndarray], score: str, meta: dict
) -> FeasibilityScores:
    """Every score type from the answer logits; seen pairs +inf (probability 1)."""
    seen = vocab.seen
    components = {
        name: np.where(
            seen, np.inf, score_from_logits(z["z_yes"], z["z_no"], z["lse"], name)
        ).astype(np.float32)
        for name in SCORE_TYPES
    }
    probabilities = np.where(seen, 1.0, components["yes_prob"]).astype(np.float32)
    return FeasibilityScores(
        states=vocab.states,
        objects=vocab.objects,
        matrix=components[score],
        seen=seen,
        probabilities=probabilities,
        score_type=score,
        components={k: v for k, v in components.items() if k != score},
        meta=meta,
    )


def cache_store(root: Path, key: str) -> ItemStore:
    return ItemStore(root / key[:24], "safetensors")
