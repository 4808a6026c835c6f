"""The lifelong loop: apply each timestep's edits in order, evaluating before and after.

After timestep t the model is scored on that timestep's edits (rewrite, rephrase,
personas, multi-hop, locality) and on a seeded sample of every earlier timestep's
edits (retention), which fills the matrix R[t, t'] of rewrite accuracies.
"""

from __future__ import annotations

import math
import random
import time

import torch

from lucidml.core.progress import get_logger, track
from lucidml.core.runs import Run, atomic_write_text
from lucidml.editing.config import EvalConfig
from lucidml.editing.evaluate import (
    EXACT_MATCH,
    FIRST_TOKEN,
    canary_text,
    evaluate_records,
    perplexity,
)

STATE_KEY = "state"
log = get_logger("editing")


def backward_transfer(R: list[list[float]]) -> float:
    """BWT = mean over t' < T of R[T, t'] - R[t', t'], for the last timestep T."""
    T = len(R) - 1
    if T < 1:
        return float("nan")
    return sum(R[T][j] - R[j][j] for j in range(T)) / T


def running_means(rows: list[dict], keys: list[str]) -> list[dict]:
    """For each timestep, the mean of each metric over timesteps so far (NaNs skipped)."""
    out = []
    for t in range(len(rows)):
        entry = {}
        for k in keys:
            vals = [
                r[k] for r in rows[: t + 1] if isinstance(r.get(k), float) and not math.isnan(r[k])
            ]
            entry[k] = sum(vals) / len(vals) if vals else float("nan")
        out.append(entry)
    return out


def weighted_mean(values: list[float], weights: list[int]) -> float:
    """Retention over every earlier edit scored: each timestep weighs its sample size."""
    if not weights:
        return float("nan")
    return sum(v * n for v, n in zip(values, weights, strict=True)) / sum(weights)


def past_sample(records: list[dict], past_max: int, seed: int, t: int) -> list[dict]:
    if len(records) <= past_max:
        return records
    return random.Random(seed * 1000 + t).sample(records, past_max)


def _weight_drift(model, initial: dict[str, torch.Tensor]) -> float:
    total = 0.0
    for name, p in model.named_parameters():
        if name in initial:
            total += float((p.detach() - initial[name]).float().pow(2).sum())
    return math.sqrt(total)


def _changed_params(model, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n in initial and not torch.equal(p.detach(), initial[n])
    }


def run_lifelong(
    model,
    tokenizer,
    editor,
    timesteps: list[list[dict]],
    eval_cfg: EvalConfig | None = None,
    run: Run | None = None,
    skip_known: bool = False,
    seed: int = 0,
) -> dict:
    """Run ``editor`` over the timesteps; checkpoints after each one when ``run`` is given.

    With a ``run`` that already holds a checkpoint the loop resumes after the last
    finished timestep. Returns per-timestep rows, running means, R and BWT.
    """
    eval_cfg = eval_cfg or EvalConfig()
    editor.check(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows: list[dict] = []
    R: list[list[float]] = []
    start = 0
    state = run.resume(STATE_KEY) if run is not None else None
    if state is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in state["model"].items():
                params[name].copy_(value)
        editor.load_state_dict(state["editor"])
        rows, R, start = state["rows"], state["R"], state["next_timestep"]
    canary = canary_text() if eval_cfg.canary else None
    for t in track(range(start, len(timesteps)), "timesteps"):
        records = timesteps[t]
        pre, pre_details = evaluate_records(model, tokenizer, records, eval_cfg, editor.contexts)
        if canary is not None:
            # weights do not change between timesteps: the last post value is this pre value
            last = rows[-1].get("canary_ppl") if rows else None
            if last is None:
                last = perplexity(model, tokenizer, canary, max_tokens=eval_cfg.canary_tokens)
            pre["canary_ppl"] = last
        to_apply = records
        if skip_known:
            to_apply = [r for r, a in zip(records, pre_details["rewrite"], strict=True) if a < 1]
        began = time.perf_counter()
        model = editor.apply(model, tokenizer, to_apply)
        seconds = time.perf_counter() - began
        post, _ = evaluate_records(
            model,
            tokenizer,
            records,
            eval_cfg,
            editor.contexts,
            loc_reference=pre_details["loc_predictions"],
        )
        if canary is not None:
            post["canary_ppl"] = perplexity(
                model, tokenizer, canary, max_tokens=eval_cfg.canary_tokens
            )
        R_row = []
        past_strict = {FIRST_TOKEN: [], EXACT_MATCH: []}  # per earlier timestep, like R_row
        for j in range(t):
            sample = past_sample(timesteps[j], eval_cfg.past_max, seed, j)
            m, _ = evaluate_records(
                model,
                tokenizer,
                [{"update": r["update"], "ans": r["ans"]} for r in sample],
                eval_cfg,
                editor.contexts,
            )
            R_row.append(m["rewrite"])
            for suffix, values in past_strict.items():
                values.append(m["rewrite" + suffix])
        R_row.append(post["rewrite"])
        R.append(R_row)
        past_n = [min(len(timesteps[j]), eval_cfg.past_max) for j in range(t)]
        past = weighted_mean(R_row[:t], past_n)
        rows.append(
            {
                "timestep": t,
                "n_edits": len(to_apply),
                **post,
                **{f"pre_{k}": v for k, v in pre.items() if k != "n"},
                "past": past,
                **{"past" + k: weighted_mean(v, past_n) for k, v in past_strict.items()},
                "seconds_per_edit": seconds / max(len(to_apply), 1),
                "weight_drift": _weight_drift(model, initial),
            }
        )
        if run is not None:
            state = {
                "next_timestep": t + 1,
                "rows": rows,
                "R": R,
                "model": _changed_params(model, initial),
                "editor": editor.state_dict(),
            }
            run.checkpoint(STATE_KEY, _on_cpu(state))  # resumable on another device
            atomic_write_text(run / "metrics.jsonl", "".join(_json_line(r) for r in rows))
        log.info(
            "timestep %d: %d edits, rewrite %.3f, loc_gold %.3f, past %.3f",
            t,
            len(to_apply),
            post["rewrite"],
            post.get("loc_gold", math.nan),
            past,
        )
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("timestep", "n_edits", "n")))
    return {
        "timesteps": rows,
        "running": running_means(rows, keys),
        "R": R,
        "bwt": backward_transfer(R),
        "final": running_means(rows, keys)[-1] if rows else {},
        "model": model,
    }


def _on_cpu(obj):
    """The same nested state with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _json_line(row: dict) -> str:
    import json

    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
    return json.dumps(clean) + "\n"
