"""Per-probe score tables and the 95% intervals of every mean the lifelong loop reports.

Each evaluation yields one row per probe (question, gold answer, greedy answer and its
three scores). A metric is the mean of one score over one kind of probe; its interval is
the Wilson interval when the scores are 0/1 (first token, exact match) and otherwise a
percentile bootstrap over probes (teacher-forced accuracy, locality agreement). The
pooled ``personas`` metric asks each record several questions, which are not independent:
its interval resamples records (a cluster bootstrap: each record's mean weighted by its
probe count), and its n counts records. A running mean over timesteps is a mean of
per-timestep means; its interval resamples the probes (records, for personas) within each
timestep (a stratified bootstrap).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lucidml.core.metrics import bootstrap_ci, wilson_intervals

# the score columns of a probe table, and the metric suffix each one reports under
SCORES = {"teacher_forced": "", "first_token": "_first_token", "exact_match": "_em"}
PROBE_COLUMNS = (
    "timestep",  # after (or before) which timestep's edits the probe was scored
    "phase",  # before / after this timestep's edits, or past (an earlier timestep's edit)
    "source_timestep",  # the timestep whose record the probe comes from
    "record",  # the record's index within its timestep
    "kind",  # rewrite, rephrase, personas_<style>, mhop, loc_gold
    "question",
    "gold",
    "greedy",  # the greedy answer (only its first token where that rules out a match)
    *SCORES,
    "loc_same",  # locality: answer positions whose argmax is the pre-edit one
    "loc_total",  # locality: answer positions
)
N_BOOT = 1000


def interval(values, weights=None, seed: int = 0) -> tuple[float, float]:
    """95% interval of the (weighted) mean of ``values``: Wilson for 0/1 values without
    weights, else a percentile bootstrap over the items. NaN for no items, and for a
    single graded (not 0/1) item."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if weights is None and np.isin(v, (0.0, 1.0)).all():
        lo, hi = wilson_intervals([v.sum()], [v.size])
        return float(lo[0]), float(hi[0])
    if v.size < 2:  # one graded value says nothing about its spread
        return math.nan, math.nan
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if np.all(v == v[0]):  # every resample has the same mean
        return float(v[0]), float(v[0])
    pairs = np.stack([v * w, w], axis=1)
    return bootstrap_ci(pairs, lambda a: a[:, 0].sum() / a[:, 1].sum(), N_BOOT, seed=seed)


def stratified_interval(groups: list[tuple], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap of the mean over groups of each group's (weighted) mean,
    resampling items within each group; ``groups`` holds (values, weights or None). One
    group gives ``interval``'s answer."""
    groups = [(np.asarray(v, dtype=np.float64), w) for v, w in groups if len(v)]
    if not groups:
        return math.nan, math.nan
    if len(groups) == 1:
        return interval(*groups[0], seed=seed)
    pooled = np.concatenate([v for v, _ in groups])
    binary = all(w is None for _, w in groups) and np.isin(pooled, (0.0, 1.0)).all()
    if binary and np.all(pooled == pooled[0]):
        # all 0 (or all 1): every resample repeats it, an interval of zero width; the mean
        # of the group means is then the pooled proportion, whose Wilson interval stands
        return interval(pooled, seed=seed)
    rng = np.random.default_rng(seed)
    means = np.zeros(N_BOOT)
    for v, w in groups:
        w = np.ones_like(v) if w is None else np.asarray(w, dtype=np.float64)
        idx = rng.integers(0, len(v), size=(N_BOOT, len(v)))
        means += (v[idx] * w[idx]).sum(1) / w[idx].sum(1)
    means /= len(groups)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def metric_values(table: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per metric key, the probe values (and weights) behind its mean, for one
    timestep's probe table: ``rewrite_em``, ``pre_mhop``, ``past_first_token``,
    ``loc_agree``, ``personas`` (all styles pooled, as record means weighted by their
    probe counts, see ``record_means``; every record has every style, so the pooled mean
    is the mean of the style means) and each style."""
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    prefixes = {"after": "", "before": "pre_", "past": ""}
    for phase, prefix in prefixes.items():
        rows = table[table["phase"] == phase]
        if rows.empty:
            continue
        kinds = {k: rows[rows["kind"] == k] for k in rows["kind"].unique()}
        personas = rows[rows["kind"].str.startswith("personas_")]
        if not personas.empty:
            kinds["personas"] = personas
        if phase == "past":
            kinds = {"past": kinds.get("rewrite", rows.iloc[:0])}
        for kind, probes in kinds.items():
            for column, suffix in SCORES.items():
                if kind == "personas":  # several probes per record: one cluster each
                    values, weights = record_means(probes, column)
                else:
                    values = probes[column].to_numpy(dtype=np.float64)
                    values, weights = values[~np.isnan(values)], None
                if values.size:
                    out[f"{prefix}{kind}{suffix}"] = (values, weights)
        if phase == "after":
            loc = rows[(rows["kind"] == "loc_gold") & (rows["loc_total"] > 0)]
            if not loc.empty:
                total = loc["loc_total"].to_numpy(dtype=np.float64)
                out["loc_agree"] = (loc["loc_same"].to_numpy(dtype=np.float64) / total, total)
    return out


def record_means(probes: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Per record (source timestep, record index), the mean of ``column`` over its probes
    (NaNs are no probe), weighted by how many it has: the weighted mean of these is the
    pooled mean, and resampling them is a cluster bootstrap over records. Equal counts
    give no weights (then 0/1 record means take the Wilson interval, as 0/1 probes do)."""
    scored = probes[probes[column].notna()]
    if scored.empty:
        return np.zeros(0), None
    grouped = scored.groupby(["source_timestep", "record"], sort=True)[column]
    means = grouped.mean().to_numpy(dtype=np.float64)
    counts = grouped.size().to_numpy(dtype=np.float64)
    return means, None if np.all(counts == counts[0]) else counts


def with_intervals(metrics: dict, values: dict[str, tuple], seed: int = 0) -> dict:
    """``metrics`` with ``<key>_n`` and ``<key>_ci`` ([low, high]) for each key that
    ``values`` holds (per timestep: one group each)."""
    out = dict(metrics)
    for key, (v, w) in values.items():
        out[f"{key}_n"] = len(v)
        out[f"{key}_ci"] = list(interval(v, w, seed=seed))
    return out


def running_intervals(per_timestep: list[dict[str, tuple]], seed: int = 0) -> dict:
    """``<key>_n`` (probes over all timesteps) and ``<key>_ci`` of each running mean."""
    keys = dict.fromkeys(k for values in per_timestep for k in values)
    out = {}
    for key in keys:
        groups = [values[key] for values in per_timestep if key in values]
        out[f"{key}_n"] = int(sum(len(v) for v, _ in groups))
        out[f"{key}_ci"] = list(stratified_interval(groups, seed=seed))
    return out


def probe_table(rows: list[dict]) -> pd.DataFrame:
    """Probe rows as a table with the documented columns, in that order."""
    frame = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    for column in (*SCORES, "loc_same", "loc_total"):
        frame[column] = frame[column].astype("float64")
    for column in ("timestep", "source_timestep", "record"):
        frame[column] = frame[column].astype("int64")
    return frame
