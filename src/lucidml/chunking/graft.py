"""Grafting and freezing: write templates into the residual stream of a causal LM.

The write goes where the template was read: the input of ``layers[l]`` for l < n (a
pre-hook, via ``lucidml.core.hooks.resid_module``) and the final-norm output for l = n.
By default it acts on the prompt pass only: a pass that carries more than one position.
Cached decode steps carry one position and are left alone unless ``every_step=True``.
Positions are indices into the prompt; negative ones count from its end, so they also
hold under left padding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.chunking.pa import Template
from lucidml.core.hooks import n_layers, patch, resid_module
from lucidml.core.progress import track
from lucidml.errors import InputError


def _writer(template: Template, positions: Sequence[int], every_step: bool, mode: str):
    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and not every_step:
            return x
        T = x.shape[1]
        pos = sorted({p % T for p in positions if -T <= p < T})
        if not pos:
            return x
        x = x.clone()
        mask = template.mask.to(x.device)
        idx = torch.tensor(pos, device=x.device)
        block = x[:, idx]  # (B, P, d)
        value = template.mean.to(x.device, x.dtype) if mode == "graft" else 0.0
        block[..., mask] = value
        x[:, idx] = block
        return x

    return edit


@contextmanager
def _edit_layers(
    model, templates: Mapping[int, Template], positions: Sequence[int], every_step: bool, mode: str
):
    n = n_layers(model)
    bad = [ell for ell in templates if not 0 <= ell <= n]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: this model has indices 0..{n}")
    with ExitStack() as stack:
        for ell, template in templates.items():
            fn = _writer(template, positions, every_step, mode)
            stack.enter_context(patch(model, resid_module(model, ell), fn))
        yield


@contextmanager
def graft(
    model,
    templates: Mapping[int, Template],
    positions: Sequence[int] = (-1,),
    every_step: bool = False,
):
    """Inside the block, x[b, p, m] <- mu_m at each templated layer and position."""
    with _edit_layers(model, templates, positions, every_step, "graft"):
        yield


@contextmanager
def freeze(
    model,
    templates: Mapping[int, Template],
    positions: Sequence[int] = (-1,),
    every_step: bool = False,
):
    """Inside the block, x[b, p, m] <- 0: silence the template's neurons."""
    with _edit_layers(model, templates, positions, every_step, "freeze"):
        yield


# --- evaluation ---------------------------------------------------------------------------


def mentions(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    seed: int,
    top_p: float = 0.9,
    temperature: float = 1.0,
    max_new_tokens: int = 180,
    chat: bool = True,
    batch_size: int = 16,
) -> list[str]:
    """Sampled continuations (prompt excluded), batched with left padding, seeded per batch."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts = [_as_prompt(tokenizer, p, chat) for p in prompts]
    out = []
    try:
        starts = range(0, len(texts), batch_size)
        for b in track(starts, "sampling", total=len(starts)):
            enc = tokenizer(
                texts[b : b + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            torch.manual_seed(seed + b)
            tokens = track(range(max_new_tokens), "new tokens")
            try:
                gen = model.generate(
                    **enc,
                    do_sample=True,
                    top_p=top_p,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    stopping_criteria=[_Ticks(tokens)],
                )
            finally:
                tokens.close()  # ends the bar, also when generation stopped early
            new = gen[:, enc["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


class _Ticks:
    """A stopping criterion that advances a progress bar once per generated token and never
    stops generation; it draws no random numbers, so the samples are a plain ``generate``'s.
    (``generate`` calls any callable in ``stopping_criteria``; not subclassing
    ``transformers.StoppingCriteria`` keeps transformers out of the RNN commands' imports.)"""

    def __init__(self, ticks):
        self.ticks = ticks

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        next(self.ticks, None)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _as_prompt(tokenizer, prompt: str, chat: bool) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    bos = tokenizer.bos_token or ""
    return bos + prompt


@dataclass
class GraftEffect:
    control_rate: float
    graft_rate: float
    mcnemar_p: float
    ci_low: float  # bootstrap 95% CI of graft_rate - control_rate
    ci_high: float
    control_texts: list[str]
    graft_texts: list[str]

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_texts")}


def paired_stats(
    control: np.ndarray, grafted: np.ndarray, seed: int = 0, n_boot: int = 2000
) -> tuple[float, float, float]:
    """Exact McNemar p on discordant pairs and a bootstrap 95% CI of the rate difference."""
    from scipy.stats import binomtest

    b = int((grafted & ~control).sum())
    c = int((control & ~grafted).sum())
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(control), size=(n_boot, len(control)))
    diffs = grafted[idx].mean(1) - control[idx].mean(1)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return float(p), float(lo), float(hi)


def occurrence_effect(
    model,
    tokenizer,
    prompts: Sequence[str],
    word: str,
    templates: Mapping[int, Template],
    positions: Sequence[int] = (-1,),
    seed: int = 0,
    control_texts: Sequence[str] | None = None,
    **sampling,
) -> GraftEffect:
    """Share of continuations mentioning ``word``: control vs grafted, identical sampling.

    ``control_texts`` reuses a control arm generated earlier with the same prompts,
    seed and sampling settings (the control does not depend on the word).
    """
    if not prompts:
        raise InputError("the prompt set is empty")
    control = (
        list(control_texts)
        if control_texts is not None
        else generate(model, tokenizer, prompts, seed, **sampling)
    )
    with graft(model, templates, positions):
        grafted = generate(model, tokenizer, prompts, seed, **sampling)
    return score_arms(control, grafted, word, seed)


def score_arms(
    control: Sequence[str], grafted: Sequence[str], word: str, seed: int = 0
) -> GraftEffect:
    """Occurrence rates of ``word`` in paired control and grafted continuations."""
    c = np.array([mentions(t, word) for t in control])
    g = np.array([mentions(t, word) for t in grafted])
    p, lo, hi = paired_stats(c, g, seed)
    return GraftEffect(float(c.mean()), float(g.mean()), p, lo, hi, list(control), list(grafted))
