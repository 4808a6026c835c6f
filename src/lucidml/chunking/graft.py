"""Grafting: a family of writes into the residual stream of a causal LM.

An injection acts at one layer index: ``replace`` sets the template's neurons to its
mean (the paper's graft), ``freeze`` sets them to 0, and ``add`` adds a direction d
scaled to a fraction s of the residual norm at each position, h <- h + s*||h||*d/||d||
(d: the template's mean vector, or the contrastive direction word mean minus the mean
of all other tokens). The write goes where the template was read: the input of
``layers[l]`` for l < n (a pre-hook, via ``lucidml.core.hooks.resid_module``) and the
final-norm output for l = n.

Positions are ``"last"`` (the last position of each pass), ``"all"``, or indices into the
prompt (negative ones count from its end, so they also hold under left padding). By
default only the prompt pass is edited (a pass that carries more than one position);
with ``every_step`` each cached decode step, which carries the one new position, is too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lucidml.chunking.pa import SPACE_MARKS, Template, marks_spaces
from lucidml.core.hooks import n_layers, patch, resid_module
from lucidml.core.progress import track
from lucidml.errors import InputError

MODES = ("replace", "add")
DIRECTIONS = ("contrast", "template")
Positions = str | Sequence[int]  # "last" | "all" | prompt indices


def add_scaled(x: torch.Tensor, direction: torch.Tensor, strength: float) -> torch.Tensor:
    """x + strength * ||x|| * d / ||d||, with ||x|| taken per position (last axis)."""
    unit = direction.to(x.device, x.dtype) / direction.norm()
    return x + strength * x.norm(dim=-1, keepdim=True) * unit


@dataclass
class Injection:
    """What one layer's hook writes into the (batch, positions, d) block it selects."""

    mode: str  # replace | freeze | add
    vector: torch.Tensor  # replace: mu on the mask (|m|,); add: the direction (d,)
    mask: torch.Tensor | None = None  # replace and freeze: the template's neurons
    strength: float = 0.0  # add: the fraction of the residual norm

    @classmethod
    def replace(cls, template: Template) -> Injection:
        return cls("replace", template.mean.float(), template.mask)

    @classmethod
    def freeze(cls, template: Template) -> Injection:
        return cls("freeze", torch.zeros(template.n_dims), template.mask)

    @classmethod
    def add(cls, direction: torch.Tensor, strength: float) -> Injection:
        if not torch.isfinite(direction).all() or float(direction.norm()) == 0:
            raise InputError("the direction to add is zero or not finite")
        return cls("add", direction.float(), None, float(strength))

    @property
    def width(self) -> int:
        return self.vector.numel() if self.mask is None else self.mask.numel()

    def apply(self, block: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return add_scaled(block, self.vector, self.strength)
        block = block.clone()
        block[..., self.mask.to(block.device)] = self.vector.to(block.device, block.dtype)
        return block


def pass_positions(positions: Positions, T: int) -> list[int]:
    """The positions of a pass of length T that ``positions`` selects."""
    if positions == "all":
        return list(range(T))
    if positions == "last":
        return [T - 1]
    return sorted({p % T for p in positions if -T <= p < T})


def check_positions(positions: Positions, prompt_lengths: Sequence[int]) -> None:
    """Indices must fall inside every prompt, or some prompts would go unedited."""
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise InputError(f"positions must be 'last', 'all' or indices, got '{positions}'")
        return
    if not positions:
        raise InputError("no positions given: name prompt indices, 'last' or 'all'")
    shortest = min(prompt_lengths)
    bad = [p for p in positions if not -shortest <= p < shortest]
    if bad:
        raise InputError(
            f"position {bad[0]} lies beyond the shortest prompt ({shortest} tokens): "
            f"use indices in {-shortest}..{shortest - 1}"
        )


def _writer(injection: Injection, positions: Positions, every_step: bool, counter: list | None):
    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and not every_step:
            return x
        pos = pass_positions(positions, x.shape[1])
        if not pos:
            return x
        if counter is not None:
            counter.append(len(pos))
        x = x.clone()
        idx = torch.tensor(pos, device=x.device)
        x[:, idx] = injection.apply(x[:, idx])
        return x

    return edit


@contextmanager
def inject(
    model,
    injections: Mapping[int, Injection],
    positions: Positions = "last",
    every_step: bool = False,
    counter: list | None = None,
):
    """Inside the block, every layer index of ``injections`` gets its write at the
    selected positions. ``counter`` (a list) receives the number of positions edited
    by each hook call, for checks."""
    n = n_layers(model)
    bad = [ell for ell in injections if not 0 <= ell <= n]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: this model has indices 0..{n}")
    width = model.config.hidden_size
    for ell, inj in injections.items():
        if inj.width != width:
            raise InputError(
                f"the layer-{ell} template has width {inj.width}, the model's residual "
                f"stream {width}: the templates come from another model"
            )
    with ExitStack() as stack:
        for ell, inj in injections.items():
            fn = _writer(inj, positions, every_step, counter)
            stack.enter_context(patch(model, resid_module(model, ell), fn))
        yield


@contextmanager
def graft(
    model,
    templates: Mapping[int, Template],
    positions: Positions = (-1,),
    every_step: bool = False,
):
    """Inside the block, x[b, p, m] <- mu_m at each templated layer and position (the
    paper's graft)."""
    with inject(
        model, {ell: Injection.replace(t) for ell, t in templates.items()}, positions, every_step
    ):
        yield


@contextmanager
def freeze(
    model,
    templates: Mapping[int, Template],
    positions: Positions = (-1,),
    every_step: bool = False,
):
    """Inside the block, x[b, p, m] <- 0: silence the template's neurons."""
    with inject(
        model, {ell: Injection.freeze(t) for ell, t in templates.items()}, positions, every_step
    ):
        yield


def injections_for(
    templates: Mapping[int, Template], mode: str, direction: str, strength: float
) -> dict[int, Injection]:
    """The injections of a graft configuration, one per templated layer."""
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}': choose from {', '.join(MODES)}")
    if mode == "replace":
        return {ell: Injection.replace(t) for ell, t in templates.items()}
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction '{direction}': choose from {', '.join(DIRECTIONS)}")
    out = {}
    for ell, t in templates.items():
        if direction == "contrast" and t.contrast is None:
            raise InputError(
                f"the layer-{ell} template holds no contrastive direction (written by an "
                "older PA); refit it with `lucid chunking pa` or use --direction template"
            )
        d = t.contrast if direction == "contrast" else t.full_vector()
        out[ell] = Injection.add(d, strength)
    return out


# --- evaluation ---------------------------------------------------------------------------


def builtin_prompts() -> list[str]:
    """The built-in grafting prompts: the corpus's 16 everyday ``PROMPTS`` and the 32 of
    ``data/graft_prompts.txt`` (everyday topics; none names a drink), 48 in all: with
    the 16 alone, no fluent graft gave enough discordant pairs for McNemar p < 0.05."""
    from importlib import resources

    from lucidml.chunking.corpus import PROMPTS

    text = resources.files("lucidml.chunking").joinpath("data/graft_prompts.txt").read_text()
    return list(PROMPTS) + [line.strip() for line in text.splitlines() if line.strip()]


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


def prompt_lengths(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[int]:
    """Tokens per prompt as ``generate`` feeds them (chat template applied)."""
    texts = [_as_prompt(tokenizer, p, chat) for p in prompts]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


@torch.no_grad()
def continuation_perplexity(
    model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], chat: bool = True
) -> np.ndarray:
    """Per pair, exp(mean negative log-likelihood of the continuation's tokens given the
    prompt) under ``model`` as it is called (outside any injection: the fluency judge)."""
    out = []
    for prompt, text in zip(prompts, continuations, strict=True):
        head = tokenizer(_as_prompt(tokenizer, prompt, chat), add_special_tokens=False)
        tail = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tail:
            out.append(float("nan"))
            continue
        start = len(head["input_ids"])
        ids = torch.tensor([head["input_ids"] + tail], device=model.device)
        logits = model(input_ids=ids).logits[0, start - 1 : -1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, start:])
        out.append(float(torch.exp(nll)))
    return np.array(out)


def associated_words(model, tokenizer, word: str, k: int = 10) -> list[str]:
    """The k words whose unembedding rows are closest (cosine) to the word's own: the
    associated concepts a graft of the word should bring up ("coffee" on SmolLM2: tea,
    caffeine, beer, cocoa, chocolate, café, ...). Only whole-word pieces of 3+ letters
    count (for tokenizers that mark spaces, pieces that carry one)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    W = torch.nn.functional.normalize(model.get_output_embeddings().weight.detach().float(), dim=1)
    order = torch.argsort(W @ W[ids[0]], descending=True).tolist()
    marked = marks_spaces(tokenizer)
    words: list[str] = []
    for i in order[:5000]:
        if marked and not str(tokenizer.convert_ids_to_tokens(i)).startswith(SPACE_MARKS):
            continue
        w = tokenizer.decode([i]).strip().lower()
        if len(w) >= 3 and w.isalpha() and w != word.lower() and w not in words:
            words.append(w)
            if len(words) == k:
                break
    return words


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


def _hits(texts: Sequence[str], words: Sequence[str]) -> np.ndarray:
    return np.array([any(mentions(t, w) for w in words) for t in texts], dtype=bool)


def compare_arms(
    control: Sequence[str],
    grafted: Sequence[str],
    word: str,
    concepts: Sequence[str] = (),
    perplexity_control=None,
    perplexity=None,
    seed: int = 0,
) -> dict:
    """Paired control-vs-graft numbers: word and concept rates with 95% Wilson intervals,
    exact McNemar p and a bootstrap CI of the word-rate difference, and mean perplexity
    (under the unmodified model) with bootstrap 95% intervals."""
    from lucidml.core.metrics import bootstrap_ci, wilson_intervals

    if len(control) != len(grafted) or not len(control):
        raise InputError("the control and grafted arms must hold the same, non-zero count")
    n = len(control)
    out: dict = {"n": n}
    for name, words in (("word", [word]), ("concept", list(concepts))):
        if not words:
            continue
        c, g = _hits(control, words), _hits(grafted, words)
        p, lo, hi = paired_stats(c, g, seed)
        low, high = wilson_intervals([int(g.sum()), int(c.sum())], [n, n])
        out |= {
            f"{name}_rate": float(g.mean()),
            f"{name}_rate_low": float(low[0]),
            f"{name}_rate_high": float(high[0]),
            f"{name}_rate_control": float(c.mean()),
            f"{name}_rate_control_low": float(low[1]),
            f"{name}_rate_control_high": float(high[1]),
            f"{name}_mcnemar_p": p,
            f"{name}_diff_ci": [lo, hi],
        }
    out["mcnemar_p"] = out.pop("word_mcnemar_p")
    for key, values in (("perplexity", perplexity), ("perplexity_control", perplexity_control)):
        if values is not None:
            v = np.asarray(values, dtype=np.float64)
            v = v[np.isfinite(v)]
            out[key] = float(v.mean()) if len(v) else float("nan")
            out[f"{key}_ci"] = list(bootstrap_ci(v, seed=seed)) if len(v) > 1 else [None, None]
    return out
