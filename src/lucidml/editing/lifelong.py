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
from lucidml.core.runs import Run, atomic_write_bytes, atomic_write_text
from lucidml.editing.config import EvalConfig
from lucidml.editing.evaluate import (
    EXACT_MATCH,
    FIRST_TOKEN,
    canary_text,
    evaluate_records,
    normalise_answer,
    perplexity,
    score,
)
from lucidml.editing.state import load_state, refuse_pickled_state, save_state
from lucidml.editing.summary import metric_values, probe_table, running_intervals, with_intervals

STATE_KEY = "state"
PROBES_FILE = "probes.parquet"  # one row per scored probe, next to results.json
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


def past_sample(n_records: int, past_max: int, seed: int, t: int) -> list[int]:
    """The indices of timestep ``t``'s records scored for retention (seeded, in order)."""
    if n_records <= past_max:
        return list(range(n_records))
    return sorted(random.Random(seed * 1000 + t).sample(range(n_records), past_max))


def answer_in_question(question: str, answer: str) -> bool:
    """Whether the answer string appears in the question (case-folded): a probe the
    model can answer by copying."""
    return normalise_answer(answer) in " ".join(question.split()).casefold()


def degenerate_multihop(model, tokenizer, timesteps: list[list[dict]], cfg: EvalConfig):
    """The (timestep, record) pairs whose multi-hop probe measures no edit: its answer
    appears in its question, or the unedited model already answers it by greedy exact
    match. Returns (pairs, counts by reason)."""
    copied, asked = [], []
    for t, records in enumerate(timesteps):
        for i, r in enumerate(records):
            if not r.get("mhop"):
                continue
            if answer_in_question(r["mhop"], r["mhop_ans"]):
                copied.append((t, i))
            else:
                asked.append((t, i))
    known = []
    if asked:
        s = score(
            model,
            tokenizer,
            [timesteps[t][i]["mhop"] for t, i in asked],
            [timesteps[t][i]["mhop_ans"] for t, i in asked],
            few_shot=cfg.few_shot,
            batch_size=cfg.batch_size,
        )
        known = [pair for pair, em in zip(asked, s.exact_match, strict=True) if em == 1.0]
    counts = {"answer_in_question": len(copied), "known_before_edits": len(known)}
    return sorted(copied + known), counts


def without_multihop(timesteps: list[list[dict]], pairs) -> list[list[dict]]:
    """The timesteps with the multi-hop probe of each (timestep, record) pair removed."""
    drop = {tuple(p) for p in pairs}
    return [
        [dict(r, mhop=None, mhop_ans=None) if (t, i) in drop else r for i, r in enumerate(recs)]
        for t, recs in enumerate(timesteps)
    ]


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


def _probe_rows(details: dict, t: int, phase: str, source: int, records: list[int]):
    """The evaluation's probe rows, labelled with when they were scored and whence."""
    return [
        {
            **row,
            "timestep": t,
            "phase": phase,
            "source_timestep": source,
            "record": records[row["record"]],
        }
        for row in details["probes"]
    ]


def _parquet_bytes(frame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


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

    Multi-hop probes that measure no edit (``degenerate_multihop``, decided on the
    unedited model) are dropped and counted. Every mean gets ``<key>_n`` and a 95%
    interval ``<key>_ci``; every scored probe is a row of the returned ``probes`` table
    (``summary.PROBE_COLUMNS``), which a ``run`` also writes as ``probes.parquet``.
    With a ``run`` that already holds a checkpoint (JSON and safetensors, see
    ``editing.state``) the loop resumes after the last finished timestep. Returns
    per-timestep rows, running means, R and BWT.
    """
    import pandas as pd

    eval_cfg = eval_cfg or EvalConfig()
    editor.check(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows: list[dict] = []
    R: list[list[float]] = []
    start = 0
    probes = probe_table([])
    if run is not None:
        refuse_pickled_state(run / "checkpoints", STATE_KEY)
    state = load_state(run / "checkpoints", STATE_KEY) if run is not None else None
    if state is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in state["model"].items():
                params[name].copy_(value)
        editor.load_state_dict(state["editor"])
        rows, R, start = state["rows"], state["R"], state["next_timestep"]
        dropped, mhop_dropped = state["mhop_dropped_pairs"], state["mhop_dropped"]
        if (run / PROBES_FILE).is_file():
            probes = pd.read_parquet(run / PROBES_FILE)
            probes = probes[probes["timestep"] < start].reset_index(drop=True)
    else:
        dropped, mhop_dropped = degenerate_multihop(model, tokenizer, timesteps, eval_cfg)
    if mhop_dropped["answer_in_question"] or mhop_dropped["known_before_edits"]:
        log.info("multi-hop probes dropped: %s", mhop_dropped)
    timesteps = without_multihop(timesteps, dropped)
    canary = canary_text() if eval_cfg.canary else None
    for t in track(range(start, len(timesteps)), "timesteps"):
        records = timesteps[t]
        everyone = list(range(len(records)))
        pre, pre_details = evaluate_records(model, tokenizer, records, eval_cfg, editor.contexts)
        new_probes = _probe_rows(pre_details, t, "before", t, everyone)
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
        post, post_details = evaluate_records(
            model,
            tokenizer,
            records,
            eval_cfg,
            editor.contexts,
            loc_reference=pre_details["loc_predictions"],
        )
        new_probes += _probe_rows(post_details, t, "after", t, everyone)
        if canary is not None:
            post["canary_ppl"] = perplexity(
                model, tokenizer, canary, max_tokens=eval_cfg.canary_tokens
            )
        R_row = []
        past_strict = {FIRST_TOKEN: [], EXACT_MATCH: []}  # per earlier timestep, like R_row
        for j in range(t):
            sample = past_sample(len(timesteps[j]), eval_cfg.past_max, seed, j)
            m, past_details = evaluate_records(
                model,
                tokenizer,
                [
                    {"update": timesteps[j][i]["update"], "ans": timesteps[j][i]["ans"]}
                    for i in sample
                ],
                eval_cfg,
                editor.contexts,
            )
            new_probes += _probe_rows(past_details, t, "past", j, sample)
            R_row.append(m["rewrite"])
            for suffix, values in past_strict.items():
                values.append(m["rewrite" + suffix])
        R_row.append(post["rewrite"])
        R.append(R_row)
        past_n = [min(len(timesteps[j]), eval_cfg.past_max) for j in range(t)]
        past = weighted_mean(R_row[:t], past_n)
        step_probes = probe_table(new_probes)
        row = {
            "timestep": t,
            "n_edits": len(to_apply),
            **post,
            **{f"pre_{k}": v for k, v in pre.items() if k != "n"},
            "past": past,
            **{"past" + k: weighted_mean(v, past_n) for k, v in past_strict.items()},
            "seconds_per_edit": seconds / max(len(to_apply), 1),
            "weight_drift": _weight_drift(model, initial),
        }
        rows.append(with_intervals(row, metric_values(step_probes), seed=seed))
        probes = pd.concat([probes, step_probes], ignore_index=True) if len(probes) else step_probes
        if run is not None:
            # the probes first: a checkpoint never names a timestep whose probes are missing
            atomic_write_bytes(run / PROBES_FILE, _parquet_bytes(probes))
            state = {
                "next_timestep": t + 1,
                "rows": rows,
                "R": R,
                "model": _changed_params(model, initial),
                "editor": editor.state_dict(),
                "mhop_dropped_pairs": [list(p) for p in dropped],
                "mhop_dropped": mhop_dropped,
            }
            save_state(run / "checkpoints", STATE_KEY, t, state)  # tensors saved on the CPU
            atomic_write_text(run / "metrics.jsonl", "".join(_json_line(r) for r in rows))
        log.info(
            "timestep %d: %d edits, rewrite %.3f, loc_gold %.3f, past %.3f",
            t,
            len(to_apply),
            post["rewrite"],
            post.get("loc_gold", math.nan),
            past,
        )
    skip = ("timestep", "n_edits", "n")
    keys = [
        k
        for k in dict.fromkeys(k for r in rows for k in r)
        if k not in skip and not k.endswith(("_n", "_ci"))
    ]
    running = running_means(rows, keys)
    per_step = [metric_values(probes[probes["timestep"] == t]) for t in range(len(rows))]
    return {
        "timesteps": rows,
        "running": running,
        "R": R,
        "bwt": backward_transfer(R),
        "final": {**running[-1], **running_intervals(per_step, seed=seed)} if rows else {},
        "mhop_dropped": mhop_dropped,
        "probes": probes,
        "model": model,
    }


def _json_line(row: dict) -> str:
    import json

    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
    return json.dumps(clean) + "\n"
