"""Teacher-forced scoring of "Q: {question} A: {answer}" and the WikiBigEdit metrics.

Answer tokens are found from the tokenizer's offset mappings (a token belongs to the
answer when its character span ends inside the answer), so the span is right for any
tokenizer and either padding side. Left padding also gets explicit position ids, so a
padded row is scored exactly like the same row alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lucidml.core.progress import track
from lucidml.editing.config import EvalConfig

# The shot is about an entity no Wikidata stream edits. An entity that edits touch (our
# first shot was about France, whose head of government changes) puts the edited
# subject into every scored prompt: each edit then shifts every probe's answer, and on
# SmolLM2 ten sequential ROME counterfactuals left a locality agreement of 0.69 with the
# France shot and 0.85 with this one.
FEW_SHOT = "Q: Who wrote Hamlet? A: William Shakespeare\n"


def format_example(question: str, answer: str, context: str = "") -> tuple[str, int]:
    """The scored text and the character offset where the answer starts."""
    prompt = f"{context}Q: {question} A: "
    return prompt + answer, len(prompt)


def answer_mask(offsets: torch.Tensor, special: torch.Tensor, answer_start: int) -> torch.Tensor:
    """Which tokens are answer tokens: not special, and ending after the answer starts.

    ``offsets`` is (T, 2) character spans, ``special`` is (T,) with 1 for special tokens
    and padding. A token like " Paris" whose span includes the space before the answer
    still counts, while "A" and ":" end before the answer and do not.
    """
    return (offsets[:, 1] > answer_start) & (special == 0)


def token_hits(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced accuracy per row and argmax predictions for every position.

    Position j is predicted from the logits at j-1. ``mask`` marks answer tokens; rows
    without any answer token score NaN. Returns (accuracy (B,), predictions (B, T-1)).
    """
    pred = logits[:, :-1].argmax(-1)
    target, m = input_ids[:, 1:], mask[:, 1:]
    hits = ((pred == target) & m).sum(-1).float()
    return hits / m.sum(-1).float(), pred


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    answer_mask: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.position_ids, self.answer_mask)
            )
        )


def encode_texts(
    tokenizer, texts: list[str], answer_starts: list[int], padding_side: str | None = None
) -> Batch:
    """Tokenise texts whose answers start at the given character offsets."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side or old_side
    try:
        enc = tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    finally:
        tokenizer.padding_side = old_side
    special = enc["special_tokens_mask"] | (enc["attention_mask"] == 0).long()
    mask = torch.stack(
        [
            answer_mask(enc["offset_mapping"][i], special[i], answer_starts[i])
            for i in range(len(texts))
        ]
    )
    attn = enc["attention_mask"]
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return Batch(enc["input_ids"], attn, positions, mask)


def encode(
    tokenizer,
    questions: list[str],
    answers: list[str],
    contexts: list[str],
    padding_side: str | None = None,
) -> Batch:
    """Tokenise formatted examples, padded on ``padding_side`` (default: the tokenizer's)."""
    texts, starts = zip(
        *(format_example(q, a, c) for q, a, c in zip(questions, answers, contexts, strict=True)),
        strict=True,
    )
    return encode_texts(tokenizer, list(texts), list(starts), padding_side)


def _contexts(n: int, contexts: list[str] | None, few_shot: bool) -> list[str]:
    if contexts is not None:
        return list(contexts)
    return [FEW_SHOT if few_shot else ""] * n


@dataclass
class Scores:
    accuracy: list[float]
    predictions: list[torch.Tensor]  # argmax ids at each example's answer positions


def _answer_window(mask: torch.Tensor) -> int:
    """How many final positions hold every row's answer and the token before it."""
    first = torch.where(mask.any(-1), mask.float().argmax(-1), mask.shape[1] - 1)
    return int((mask.shape[1] - first).max()) + 1


def keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def score(
    model,
    tokenizer,
    questions: list[str],
    answers: list[str],
    contexts: list[str] | None = None,
    few_shot: bool = True,
    batch_size: int = 16,
    padding_side: str | None = "left",
) -> Scores:
    """Teacher-forced token accuracy of each (question, answer) pair.

    With left padding (the default) every answer ends its row, so the LM head runs only
    on the last positions that predict answer tokens (``logits_to_keep``): on SmolLM2
    the head is a fifth of a forward pass. Any padding side gives the same scores.
    """
    ctx = _contexts(len(questions), contexts, few_shot)
    device = next(model.parameters()).device
    trim = keeps_logits(model)
    acc, preds = [], []
    for i in track(range(0, len(questions), batch_size), "scoring batches"):
        sl = slice(i, i + batch_size)
        b = encode(tokenizer, questions[sl], answers[sl], ctx[sl], padding_side).to(device)
        keep = _answer_window(b.answer_mask) if trim else b.input_ids.shape[1]
        extra = {"logits_to_keep": keep} if trim else {}
        logits = model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            position_ids=b.position_ids,
            **extra,
        ).logits[:, -keep:]
        ids, mask = b.input_ids[:, -keep:], b.answer_mask[:, -keep:]
        a, p = token_hits(logits.float(), ids, mask)
        acc += a.tolist()
        m = mask[:, 1:]
        preds += [p[j][m[j]].cpu() for j in range(len(p))]
    return Scores(acc, preds)


def token_accuracy(
    model, tokenizer, question: str, answer: str, few_shot: bool = True, context: str | None = None
) -> float:
    """Teacher-forced token accuracy of ``answer`` after "Q: {question} A:" (in [0, 1])."""
    ctx = None if context is None else [context]
    return score(model, tokenizer, [question], [answer], ctx, few_shot).accuracy[0]


@torch.no_grad()
def exact_match(
    model,
    tokenizer,
    question: str,
    answer: str,
    few_shot: bool = True,
    context: str | None = None,
    aliases: tuple[str, ...] = (),
) -> bool:
    """Greedy generation (at most |answer| + 8 tokens) starts with the answer or an alias."""
    ctx = _contexts(1, None if context is None else [context], few_shot)[0]
    prompt, _ = format_example(question, "", ctx)
    enc = tokenizer(prompt.rstrip(), return_tensors="pt")
    n = len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + 8
    device = next(model.parameters()).device
    out = model.generate(
        **{k: v.to(device) for k, v in enc.items()},
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    text = " ".join(text.split()).casefold()
    return any(text.startswith(" ".join(a.split()).casefold()) for a in (answer, *aliases))


def canary_text() -> str:
    """General English prose for the perplexity canary: two of scikit-learn's bundled
    dataset descriptions (no Wikidata facts, so edits should leave it alone)."""
    from importlib import resources

    folder = resources.files("sklearn.datasets").joinpath("descr")
    return "\n\n".join(folder.joinpath(n).read_text() for n in ("iris.rst", "wine_data.rst"))


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 256, max_tokens: int = 2048) -> float:
    """exp(mean next-token NLL) of ``text`` in non-overlapping windows (first max_tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[i : i + window]], device=device)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk, attention_mask=torch.ones_like(chunk)).logits[0, :-1]
        logits = logits.float()
        total += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return math.exp(total / count) if count else float("nan")


def agreement(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Share of answer positions whose argmax is the same before and after an edit."""
    same = sum(int((a == b).sum()) for a, b in zip(before, after, strict=True))
    total = sum(a.numel() for a in before)
    return same / total if total else float("nan")


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def evaluate_records(
    model,
    tokenizer,
    records: list[dict],
    cfg: EvalConfig | None = None,
    context_fn=None,
    loc_reference: list[torch.Tensor] | None = None,
) -> tuple[dict, dict]:
    """WikiBigEdit metrics for one set of records.

    ``context_fn(questions) -> list[str] | None`` lets an editor (RAG) put text before
    each question. ``loc_reference`` are the locality predictions of the model before
    the edits, for ``loc_agree``. Returns (metrics, details) where details holds the
    per-record rewrite scores and the locality predictions.
    """
    cfg = cfg or EvalConfig()
    # every probe of every record goes through one batched scoring pass
    probes: list[tuple[str, str, str]] = []  # (metric, question, answer)
    for r in records:
        probes.append(("rewrite", r["update"], r["ans"]))
        if r.get("rephrase"):
            probes.append(("rephrase", r["rephrase"], r["ans"]))
        for style, q in sorted((r.get("personas") or {}).items()):
            probes.append((f"personas_{style}", q, r["ans"]))
        if r.get("mhop"):
            probes.append(("mhop", r["mhop"], r["mhop_ans"]))
        if r.get("loc"):
            probes.append(("loc_gold", r["loc"], r["loc_ans"]))
    qs = [q for _, q, _ in probes]
    ctx = context_fn(qs) if context_fn is not None and qs else None
    s = score(model, tokenizer, qs, [a for *_, a in probes], ctx, cfg.few_shot, cfg.batch_size)
    by_metric: dict[str, list[int]] = {}
    for i, (metric, _, _) in enumerate(probes):
        by_metric.setdefault(metric, []).append(i)
    metrics = {"n": len(records)}
    for metric, idx in by_metric.items():
        metrics[metric] = _mean([s.accuracy[i] for i in idx])
    rewrite = [s.accuracy[i] for i in by_metric.get("rewrite", [])]
    styles = [m for m in by_metric if m.startswith("personas_")]
    if styles:
        metrics["personas"] = _mean([metrics[m] for m in styles])
    loc_preds = [s.predictions[i] for i in by_metric.get("loc_gold", [])]
    if loc_preds and loc_reference is not None:
        metrics["loc_agree"] = agreement(loc_reference, loc_preds)
    if cfg.exact_match:
        ctx = context_fn([r["update"] for r in records]) if context_fn else None
        metrics["exact_match"] = _mean(
            [
                float(
                    exact_match(
                        model,
                        tokenizer,
                        r["update"],
                        r["ans"],
                        cfg.few_shot,
                        None if ctx is None else ctx[i],
                    )
                )
                for i, r in enumerate(records)
            ]
        )
    metrics["rewrite"] = _mean(rewrite)
    return metrics, {"rewrite": rewrite, "loc_predictions": loc_preds}
