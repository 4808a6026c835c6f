"""Scoring of "Q: {question} A: {answer}" and the WikiBigEdit metrics.

Three numbers per probe, because teacher forcing alone credits the later tokens of a
multi-token name that the model merely copies once it has been shown the first: the
teacher-forced token accuracy, first-token accuracy (the argmax at the first answer
position, from the same forward pass) and greedy exact match (the model's own answer,
decoded from the prompt alone, equals the gold answer after ``normalise_answer``).

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


def first_token_hits(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, 1.0 when the argmax before the first answer token is that token (NaN
    for rows without an answer token), and that argmax: the greedy answer's first token."""
    has_answer = mask[:, 1:].any(-1)
    first = mask[:, 1:].float().argmax(-1)  # index into the shifted (prediction) positions
    rows = torch.arange(len(input_ids), device=input_ids.device)
    predicted = logits[rows, first].argmax(-1)
    hit = predicted == input_ids[rows, first + 1]
    nan = torch.full_like(hit, float("nan"), dtype=torch.float)
    return torch.where(has_answer, hit.float(), nan), predicted


def could_match(first_token_text: str, answer: str) -> bool:
    """Whether a greedy answer starting with this text can still equal ``answer`` once
    normalised (case-folded, whitespace collapsed): its start must be the answer's."""
    start = " ".join(first_token_text.split()).casefold()
    return " ".join(answer.split()).casefold().startswith(start)


_TRAILING_PUNCTUATION = ".,;:!?'\""


def normalise_answer(text: str) -> str:
    """Case-folded, whitespace collapsed, trailing punctuation and whitespace stripped."""
    return " ".join(text.split()).casefold().rstrip(_TRAILING_PUNCTUATION).strip()


def takes_cache(model) -> bool:
    """Whether the model's forward takes ``past_key_values`` (transformers' causal LMs)."""
    import inspect

    return "past_key_values" in inspect.signature(model.forward).parameters


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[torch.Tensor], n_tokens: list[int]) -> list[str]:
    """Greedy decoding of ``n_tokens[i]`` tokens after each prompt (token ids), batched.

    The prompts are the scored rows' tokens before the first answer token, so the
    answer starts where teacher forcing scores it, whether or not the tokenizer merges
    the space before it. Left padding with explicit position ids, so each row decodes
    as it would alone.
    The model's KV cache is used when its forward takes one; other models (the tests'
    lookup models) get the whole sequence again at every step.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], attn[i, width - len(p) :] = p, 1
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cached, trim = takes_cache(model), keeps_logits(model)
    step_ids, step_pos, past, new = ids, positions, None, []
    for _ in range(max(n_tokens, default=0)):
        extra = {"logits_to_keep": 1} if trim else {}
        if cached:
            extra |= {"past_key_values": past, "use_cache": True}
        out = model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, **extra)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(token)
        attn = torch.cat([attn, torch.ones_like(token)], dim=1)
        if cached:
            past, step_ids, step_pos = out.past_key_values, token, step_pos[:, -1:] + 1
        else:
            ids = torch.cat([ids, token], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            step_ids, step_pos = ids, positions
    gen = torch.cat(new, dim=1) if new else ids[:, :0]
    return [tokenizer.decode(gen[i, :n], skip_special_tokens=True) for i, n in enumerate(n_tokens)]


@dataclass
class Scores:
    accuracy: list[float]  # teacher-forced token accuracy
    predictions: list[torch.Tensor]  # argmax ids at each example's answer positions
    first_token: list[float]  # 1.0 when the first answer token is the argmax
    exact_match: list[float]  # 1.0 when the greedy answer equals the gold one (normalised)
    # the greedy answers, as decoded; only the first token where that rules out a match
    greedy: list[str]


def _answer_window(mask: torch.Tensor) -> int:
    """How many final positions hold every row's answer and the token before it."""
    first = torch.where(mask.any(-1), mask.float().argmax(-1), mask.shape[1] - 1)
    return int((mask.shape[1] - first).max()) + 1


def keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _before_answer(b: Batch, row: int) -> torch.Tensor:
    """A scored row's real tokens before its first answer token (the greedy prompt)."""
    first = int(b.answer_mask[row].float().argmax())
    return b.input_ids[row, :first][b.attention_mask[row, :first].bool()].cpu()


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
    greedy: bool = True,
) -> Scores:
    """Teacher-forced token accuracy, first-token accuracy and (``greedy``) greedy exact
    match of each (question, answer) pair.

    With left padding (the default) every answer ends its row, so the LM head runs only
    on the last positions that predict answer tokens (``logits_to_keep``): on SmolLM2
    the head is a fifth of a forward pass. Any padding side gives the same scores.
    The greedy answer is decoded from the tokens before the answer alone, as many
    tokens as the gold answer has in the scored text; without ``greedy`` exact match is NaN.
    Pairs are scored in order of answer length, so a batch's greedy decode runs few
    steps past its rows' own answers; the results come back in the given order.
    """
    ctx = _contexts(len(questions), contexts, few_shot)
    order = sorted(range(len(questions)), key=lambda i: len(answers[i]))
    questions, answers, ctx = ([xs[i] for i in order] for xs in (questions, answers, ctx))
    device = next(model.parameters()).device
    trim = keeps_logits(model)
    acc, preds, first, em, texts = [], [], [], [], []
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
        hits, first_predicted = first_token_hits(logits, ids, mask)
        first += hits.tolist()
        m = mask[:, 1:]
        preds += [p[j][m[j]].cpu() for j in range(len(p))]
        n_tokens = b.answer_mask.sum(-1).tolist()
        if not greedy:
            em += [math.nan] * len(n_tokens)
            texts += [""] * len(n_tokens)
            continue
        prompts = [_before_answer(b, j) for j in range(len(n_tokens))]
        answers_sl = answers[sl]
        # The greedy first token is the argmax just computed (same prefix). A row whose
        # first token already departs from the answer cannot match: EM 0 without
        # decoding; before edits that is nearly every row, so decoding stays cheap.
        starts = [tokenizer.decode([t], skip_special_tokens=True) for t in first_predicted]
        live = [j for j, a in enumerate(answers_sl) if n_tokens[j] and could_match(starts[j], a)]
        decoded = greedy_answers(
            model, tokenizer, [prompts[j] for j in live], [n_tokens[j] for j in live]
        )
        batch_texts = list(starts)
        for j, text in zip(live, decoded, strict=True):
            batch_texts[j] = text
        for j, text in enumerate(batch_texts):
            texts.append(text)
            same = j in live and normalise_answer(text) == normalise_answer(answers_sl[j])
            em.append(float(same) if n_tokens[j] else math.nan)

    def given_order(values: list) -> list:
        out = [None] * len(values)
        for position, i in enumerate(order):
            out[i] = values[position]
        return out

    return Scores(*(given_order(v) for v in (acc, preds, first, em, texts)))


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


# suffixes of the two stricter metrics beside each teacher-forced one ("rewrite_em")
FIRST_TOKEN, EXACT_MATCH = "_first_token", "_em"


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
    per-record rewrite scores, the locality predictions and one row per probe (record
    index, kind, question, gold and greedy answers, the three scores, and the locality
    agreement counts when ``loc_reference`` is given).
    """
    cfg = cfg or EvalConfig()
    # every probe of every record goes through one batched scoring pass
    probes: list[tuple[str, str, str]] = []  # (metric, question, answer)
    owners: list[int] = []  # the record each probe belongs to
    for i, r in enumerate(records):
        before = len(probes)
        probes.append(("rewrite", r["update"], r["ans"]))
        if r.get("rephrase"):
            probes.append(("rephrase", r["rephrase"], r["ans"]))
        for style, q in sorted((r.get("personas") or {}).items()):
            probes.append((f"personas_{style}", q, r["ans"]))
        if r.get("mhop"):
            probes.append(("mhop", r["mhop"], r["mhop_ans"]))
        if r.get("loc"):
            probes.append(("loc_gold", r["loc"], r["loc_ans"]))
        owners += [i] * (len(probes) - before)
    qs = [q for _, q, _ in probes]
    ctx = context_fn(qs) if context_fn is not None and qs else None
    s = score(model, tokenizer, qs, [a for *_, a in probes], ctx, cfg.few_shot, cfg.batch_size)
    by_metric: dict[str, list[int]] = {}
    for i, (metric, _, _) in enumerate(probes):
        by_metric.setdefault(metric, []).append(i)
    metrics = {"n": len(records)}
    per_probe = {"": s.accuracy, FIRST_TOKEN: s.first_token, EXACT_MATCH: s.exact_match}
    for metric, idx in by_metric.items():
        for suffix, values in per_probe.items():
            metrics[metric + suffix] = _mean([values[i] for i in idx])
    rewrite = [s.accuracy[i] for i in by_metric.get("rewrite", [])]
    styles = [m for m in by_metric if m.startswith("personas_")]
    if styles:
        for suffix in per_probe:
            metrics["personas" + suffix] = _mean([metrics[m + suffix] for m in styles])
    loc_preds = [s.predictions[i] for i in by_metric.get("loc_gold", [])]
    if loc_preds and loc_reference is not None:
        metrics["loc_agree"] = agreement(loc_reference, loc_preds)
    rows = [
        {
            "record": owner,
            "kind": kind,
            "question": q,
            "gold": a,
            "greedy": s.greedy[i],
            "teacher_forced": s.accuracy[i],
            "first_token": s.first_token[i],
            "exact_match": s.exact_match[i],
            "loc_same": math.nan,
            "loc_total": math.nan,
        }
        for i, ((kind, q, a), owner) in enumerate(zip(probes, owners, strict=True))
    ]
    if loc_preds and loc_reference is not None:
        loc_rows = [rows[i] for i in by_metric["loc_gold"]]
        for row, ref, pred in zip(loc_rows, loc_reference, loc_preds, strict=True):
            row["loc_same"], row["loc_total"] = float((ref == pred).sum()), float(ref.numel())
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
    for suffix in (FIRST_TOKEN, EXACT_MATCH):  # present even without records
        metrics.setdefault("rewrite" + suffix, math.nan)
    return metrics, {"rewrite": rewrite, "loc_predictions": loc_preds, "probes": rows}
