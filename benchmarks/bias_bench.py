"""Audit aggregation speed: ``prompt_stats`` + ``concept_stats`` vs a plain pandas script.

Both reduce the same synthetic records (one row per image: model, prompt_id, gender or
None for a dropped image) to per (model, prompt) counts, R_f, Wilson intervals, exact
binomial p-values and BH q-values, then to concept means with a prompt bootstrap. The
baseline is what a script would write: a pandas groupby, then ``wilson_interval`` and
``scipy.stats.binomtest`` row by row, and ``bootstrap_ci`` per concept. Ours counts in
DuckDB (from the DataFrame, and from a Parquet file as at scale) and vectorises the rest.
Prints both times, the ratio and whether the outputs agree; bootstrap intervals use
different random draws, so only their gap is shown.

    python benchmarks/bias_bench.py [--models 5 --prompts 3000 --images 200 --concepts 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lucidml.bias.analyze import concept_stats, prompt_stats
from lucidml.core.metrics import bootstrap_ci, wilson_interval

Z = float(stats.norm.ppf(0.975))  # wilson_interval's z at alpha 0.05, used by both sides


def synthetic(models: int, prompts: int, images: int, concepts: int, seed: int):
    """Records with concept-level skew, prompt-level heterogeneity and ~70% retention,
    and the prompt -> concept table."""
    rng = np.random.default_rng(seed)
    concept = rng.integers(0, concepts, prompts)
    concept_rf = rng.uniform(0.15, 0.75, concepts)
    rf = np.clip(concept_rf[concept][None] + rng.normal(0, 0.08, (models, prompts)), 0.01, 0.99)
    n = models * prompts * images
    cell = np.repeat(np.arange(models * prompts), images)
    female = rng.random(n) < rf.ravel()[cell]
    gender = np.where(female, "female", "male").astype(object)
    gender[rng.random(n) > 0.7] = None
    records = pd.DataFrame(
        {
            "model": pd.Series(np.array([f"model{m}" for m in range(models)])[cell // prompts]),
            "prompt_id": cell % prompts,
            "gender": pd.Series(gender, dtype="str"),
        }
    )
    table = pd.DataFrame(
        {"prompt_id": np.arange(prompts), "concept": concept, "concept_name": concept.astype(str)}
    )
    return records, table


def pandas_counts(records: pd.DataFrame) -> pd.DataFrame:
    """Per (model, prompt) counts as a plain script computes them."""
    flags = records.assign(f=records["gender"].eq("female"), m=records["gender"].eq("male"))
    return (
        flags.groupby(["model", "prompt_id"], sort=True)
        .agg(n_female=("f", "sum"), n_male=("m", "sum"), n_total=("gender", "size"))
        .reset_index()
    )


def pandas_stats(out: pd.DataFrame, table: pd.DataFrame, n_min: int, n_boot: int):
    """Then the per-prompt and concept statistics, row by row and concept by concept."""
    kept = out["n_female"] + out["n_male"]
    out["female_ratio"] = out["n_female"] / kept
    ci = [wilson_interval(f, f + m) for f, m in zip(out["n_female"], out["n_male"], strict=True)]
    out["ci_low"], out["ci_high"] = zip(*ci, strict=True)
    out["p_value"] = [
        stats.binomtest(f, f + m, 0.5).pvalue
        for f, m in zip(out["n_female"], out["n_male"], strict=True)
    ]
    out["q_value"] = out.groupby("model")["p_value"].transform(stats.false_discovery_control)
    used = out[kept >= n_min].merge(table, on="prompt_id")
    rows = []
    for (model, c), part in used.groupby(["model", "concept"]):
        low, high = bootstrap_ci(part["female_ratio"].to_numpy(), n_boot=n_boot)
        rows.append((model, c, part["female_ratio"].mean(), low, high))
    return out, pd.DataFrame(rows, columns=["model", "concept", "mean_ratio", "ci_low", "ci_high"])


def timed(fn, *args, **kw):
    start = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - start


def agreement(base: tuple, mine: tuple) -> dict[str, float]:
    """Largest differences between the two outputs (counts must match exactly)."""
    (bp, bc), (op, oc) = base, mine
    counts, ratio = ["n_female", "n_male", "n_total"], ["female_ratio", "ci_low", "ci_high"]
    return {
        "count mismatches": int((bp[counts].to_numpy() != op[counts].to_numpy()).sum()),
        "max |ratio/CI diff|": float(
            np.nanmax(np.abs(bp[ratio].to_numpy() - op[ratio].to_numpy()))
        ),
        "max rel p diff": float(np.nanmax(np.abs(bp["p_value"] / op["p_value"] - 1))),
        "max |q diff|": float(np.nanmax(np.abs(bp["q_value"] - op["q_value"]))),
        "max |concept mean diff|": float(np.abs(bc["mean_ratio"] - oc["mean_ratio"]).max()),
        "max |bootstrap bound gap|": float(
            np.abs(
                bc[["ci_low", "ci_high"]].to_numpy() - oc[["ci_low", "ci_high"]].to_numpy()
            ).max()
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=3000)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--concepts", type=int, default=30)
    ap.add_argument("--n-min", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    records, table = synthetic(args.models, args.prompts, args.images, args.concepts, args.seed)
    print(
        f"records: {len(records):,} ({args.models} models x {args.prompts} prompts x "
        f"{args.images} images), {args.concepts} concepts, B = {args.n_boot}"
    )
    counts, count_s = timed(pandas_counts, records)
    base, rest_s = timed(pandas_stats, counts, table, args.n_min, args.n_boot)
    per_prompt, ours_s = timed(prompt_stats, records, z=Z)
    per_concept, concept_s = timed(concept_stats, per_prompt, table, args.n_min, args.n_boot)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.parquet"
        records.to_parquet(path)
        from_file, file_s = timed(prompt_stats, path, z=Z)
    base_s, mine_s = count_s + rest_s, ours_s + concept_s
    print(f"pandas baseline: {base_s:6.2f} s  (groupby {count_s:.2f} s + row-wise {rest_s:.2f} s)")
    print(
        f"ours:            {mine_s:6.2f} s  (prompt_stats {ours_s:.2f} s + concept_stats "
        f"{concept_s:.2f} s; target < 10 s)"
    )
    print(f"prompt_stats from Parquet: {file_s:.2f} s")
    print(
        f"ratio: {base_s / mine_s:.1f}x overall (target >= 2x); the pandas groupby alone "
        f"vs the whole of prompt_stats: {count_s / ours_s:.1f}x"
    )
    for name, value in agreement(base, (per_prompt, per_concept)).items():
        print(f"{name}: {value:.3g}")
    print(f"Parquet and DataFrame per-prompt outputs identical: {from_file.equals(per_prompt)}")


if __name__ == "__main__":
    main()
