"""Next-token Yes/No logits of many prompts, batched, with a shared-prefix cache.

For each prompt the scorer returns three numbers read at the last position: z_yes
(the largest logit over the first tokens of " Yes" and "Yes"), z_no (likewise for No)
and logsumexp over the vocabulary. Every score type is a function of these, so one
pass serves them all:

- ``yes_logit`` = z_yes (the paper's)
- ``log_odds``  = z_yes - z_no
- ``yes_prob``  = sigmoid(z_yes - z_no)
- ``log_p_yes`` = z_yes - logsumexp(z)

Batches are left-padded with an attention mask and explicit position ids
p_t = max(0, cumsum(mask)_t - 1), so models with absolute position embeddings see the
same positions as an unpadded sequence. Prompts that share a prefix (an object's
instruction and examples) encode it once; its key/value cache is copied over each
batch, and the suffixes continue at positions offset by the prefix length. A prefix is
only reused when tokenising it alone gives the first tokens of the whole prompt, so
tokenisation never changes.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.errors import InputError, ModelError

SCORE_TYPES = ("yes_logit", "log_odds", "yes_prob", "log_p_yes")
YES_VARIANTS = (" Yes", "Yes")
NO_VARIANTS = (" No", "No")


def score_from_logits(
    z_yes: np.ndarray, z_no: np.ndarray, lse: np.ndarray, score: str
) -> np.ndarray:
    """One score type from the three logits read at the answer position."""
    if score == "yes_logit":
        return np.asarray(z_yes, dtype=np.float64)
    if score == "log_odds":
        return np.asarray(z_yes, dtype=np.float64) - z_no
    if score == "yes_prob":
        return 1.0 / (1.0 + np.exp(-(np.asarray(z_yes, dtype=np.float64) - z_no)))
    if score == "log_p_yes":
        return np.asarray(z_yes, dtype=np.float64) - lse
    raise InputError(f"unknown score '{score}': choose from {', '.join(SCORE_TYPES)}")


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The first token of each Yes and each No variant; a tokenizer that cannot spell
    them apart (or maps them to its unknown token) is refused."""

    def first_ids(variants):
        ids = set()
        for v in variants:
            enc = tokenizer(v, add_special_tokens=False)["input_ids"]
            if enc and enc[0] != tokenizer.unk_token_id:
                ids.add(enc[0])
        return sorted(ids)

    yes, no = first_ids(YES_VARIANTS), first_ids(NO_VARIANTS)
    if not yes or not no:
        raise ModelError("the model's tokenizer has no token for 'Yes' or 'No'")
    if set(yes) & set(no):
        raise ModelError("the model's tokenizer gives 'Yes' and 'No' the same first token")
    return yes, no


@dataclass
class AnswerLogits:
    z_yes: np.ndarray
    z_no: np.ndarray
    lse: np.ndarray


class YesNoScorer:
    """Reads z_yes, z_no and logsumexp(z) after each prompt with a causal LM."""

    def __init__(self, model, tokenizer, batch_size: int = 32, prefix_cache: bool = True):
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tok = model, tokenizer
        self.batch_size, self.prefix_cache = batch_size, prefix_cache
        self.yes_ids, self.no_ids = answer_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        params = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers 5.2x renamed past_key_values to cache (input and output)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.tokens_processed = 0  # counts the tokens sent through the model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tok(text)["input_ids"]

    # --- reading the answer position ---------------------------------------------------

    def _read(self, logits: torch.Tensor) -> AnswerLogits:
        z = logits[:, -1].double()
        return AnswerLogits(
            z[:, self.yes_ids].amax(-1).cpu().numpy(),
            z[:, self.no_ids].amax(-1).cpu().numpy(),
            torch.logsumexp(z, -1).cpu().numpy(),
        )

    def _left_pad(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def positions(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0) + offset

    @torch.no_grad()
    def _forward(self, seqs: Sequence[list[int]], prefix=None) -> AnswerLogits:
        ids, mask = self._left_pad(seqs)
        self.tokens_processed += int(mask.sum())
        if prefix is None:
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=self.positions(mask), **self._keep
            )
            return self._read(out.logits)
        prefix_len, cache = prefix
        past = copy.deepcopy(cache)  # a cache grows in place: each batch gets its own copy
        past.batch_repeat_interleave(len(seqs))
        full_mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, prefix_len), mask], 1)
        out = self.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=self.positions(mask, prefix_len),
            use_cache=True,
            **{self._cache_arg: past},
            **self._keep,
        )
        return self._read(out.logits)

    @torch.no_grad()
    def _encode_prefix(self, prefix_ids: list[int]):
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=self.device)
        self.tokens_processed += len(prefix_ids)
        out = self.model(input_ids=ids, use_cache=True, **self._keep)
        return len(prefix_ids), out[self._cache_arg]

    # --- public ----------------------------------------------------------------------------

    def score_one(self, text: str) -> AnswerLogits:
        """One full forward for one prompt: the yardstick the batched paths must equal."""
        return self._forward([self.encode(text)])

    def score(
        self,
        texts: Sequence[str],
        prefixes: Sequence[str] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> AnswerLogits:
        """Answer logits of every text. With ``prefixes`` (one per text, each a prefix of
        its text) and the prefix cache on, texts sharing a prefix reuse its encoding."""
        n = len(texts)
        z_yes, z_no, lse = np.empty(n), np.empty(n), np.empty(n)
        full = [self.encode(t) for t in texts]
        groups: dict[str, list[int]] = {}
        for i in range(n):
            key = prefixes[i] if (prefixes is not None and self.prefix_cache) else ""
            groups.setdefault(key, []).append(i)
        for prefix_text, members in groups.items():
            shared: list[int] = []
            if prefix_text:
                prefix_ids = self.encode(prefix_text)
                cut = len(prefix_ids)
                shared = [i for i in members if len(full[i]) > cut and full[i][:cut] == prefix_ids]
            if shared:
                prefix = self._encode_prefix(prefix_ids)
                suffixes = {i: full[i][cut:] for i in shared}
                self._run(shared, suffixes, prefix, z_yes, z_no, lse, on_batch)
            alone = sorted(set(members) - set(shared))  # no usable prefix: whole prompts
            self._run(alone, {i: full[i] for i in alone}, None, z_yes, z_no, lse, on_batch)
        return AnswerLogits(z_yes, z_no, lse)

    def _run(self, members, seqs, prefix, z_yes, z_no, lse, on_batch) -> None:
        # Similar lengths in one batch waste less padding.
        order = sorted(members, key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            got = self._forward([seqs[i] for i in batch], prefix)
            z_yes[batch], z_no[batch], lse[batch] = got.z_yes, got.z_no, got.lse
            if on_batch is not None:
                on_batch(len(batch))
