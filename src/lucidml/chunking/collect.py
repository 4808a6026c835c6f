"""Run sentences through a causal LM and keep the residual stream at every index.

Index map (as Hugging Face ``hidden_states``): H^0 is the embedding output = the input
of ``layers[0]``; H^l is the output of ``layers[l-1]`` = the input of ``layers[l]``; H^n
is the final-norm output. Each sentence runs on its own (with BOS), right-padded in
batches; padding is dropped, so row t of every H^l is one real token.

The states are read by hooks on the residual stream (``lucidml.core.hooks``), and the
forward pass stops once the highest requested index is read: collecting index 15 of a
30-block model costs half a pass, and no pass computes the vocabulary logits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.core.hooks import capture, decoder_blocks, resid_module
from lucidml.core.progress import track
from lucidml.errors import InputError

# a full stop after these is not a sentence end
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "jr", "sr")
_SPLIT = re.compile(r"(?<=[.?!])\s+")


def split_sentences(text: str) -> list[str]:
    """Split after ``.``, ``?`` or ``!`` followed by space, except after common abbreviations."""
    pieces, current = [], ""
    for part in _SPLIT.split(text.strip()):
        current = f"{current} {part}" if current else part
        last = current.rstrip(".?!").split()[-1].lower() if current.split() else ""
        if current.endswith(".") and last in _ABBREVIATIONS:
            continue
        pieces.append(current.strip())
        current = ""
    if current:
        pieces.append(current.strip())
    return [p for p in pieces if p]


@dataclass
class Collection:
    """Residual-stream activations of a text, one row per token."""

    hidden: dict[int, torch.Tensor]  # layer index -> (T, d) float32
    token_ids: np.ndarray  # (T,)
    sentence_ids: np.ndarray  # (T,)
    n_layers: int  # number of decoder blocks; valid indices are 0..n_layers

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def layers(self) -> list[int]:
        return sorted(self.hidden)


def encode_sentences(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Token ids per sentence, with exactly one BOS in front when the tokenizer has one."""
    bos = tokenizer.bos_token_id
    out = []
    for s in sentences:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        out.append(([bos] if bos is not None else []) + list(ids))
    return out


class _Enough(Exception):
    """Raised in the block after the highest requested index: the rest is not needed."""


def _stop(_module, _args):
    raise _Enough


def residual_states(model, input_ids, attention_mask, layers: Sequence[int]):
    """{index: H^l (B, T, d)} of one batch, running the blocks only up to max(layers)."""
    sites = {ell: resid_module(model, ell) for ell in layers}
    blocks = decoder_blocks(model)[1]
    last = max(layers)
    # the base model (no LM head) when there is one: its hidden states are all we read
    body = getattr(model, "base_model", model)
    with capture(model, list(sites.values())) as acts:
        # registered after capture's hooks, so block `last` has its input read before this
        stop = blocks[last].register_forward_pre_hook(_stop) if last < len(blocks) else None
        try:
            body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Enough:
            pass
        finally:
            if stop is not None:
                stop.remove()
    return {ell: acts[site] for ell, site in sites.items()}


@torch.no_grad()
def collect(
    model,
    tokenizer,
    sentences: Sequence[str],
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
) -> Collection:
    """The residual stream at ``layers`` (default all, 0..n) for every token of ``sentences``."""
    n = model.config.num_hidden_layers
    layers = list(range(n + 1)) if layers is None else list(layers)
    bad = [ell for ell in layers if not 0 <= ell <= n]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: this model has indices 0..{n}")
    if not sentences:
        raise InputError("the text holds no sentences")
    encoded = encode_sentences(tokenizer, sentences)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows: dict[int, list[torch.Tensor | None]] = {ell: [None] * len(encoded) for ell in layers}
    order = np.argsort([len(e) for e in encoded], kind="stable")  # similar lengths share a batch
    starts = range(0, len(order), batch_size)
    for start in track(starts, f"collecting {len(layers)} layers", total=len(starts)):
        batch = [int(i) for i in order[start : start + batch_size]]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        states = residual_states(model, ids.to(device), mask.to(device), layers)
        for ell in layers:
            h = states[ell].float().cpu()
            for row, i in enumerate(batch):  # right padding: the real tokens come first
                rows[ell][i] = h[row, : len(encoded[i])]
    stacked = {ell: torch.cat(rows[ell]) for ell in layers}  # back in sentence order
    tokens = np.concatenate([np.asarray(e, dtype=np.int64) for e in encoded])
    sent_ids = np.concatenate([np.full(len(e), i) for i, e in enumerate(encoded)])
    return Collection(stacked, tokens, sent_ids, n)
