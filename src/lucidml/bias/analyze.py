"""The audit's statistics: per-prompt ratios and tests, concepts, and their uncertainty.

Per (model, base prompt) the images are counted once with DuckDB, so millions of records
(a DataFrame or Parquet files) reduce to a few thousand rows in seconds; everything after
that is NumPy on those rows. Images of one prompt are correlated (same text, same
sampler), so concept-level intervals resample *prompts* (a cluster bootstrap), and the
pooled Wilson interval is kept only to show how much narrower it would be.

Concepts are found once, on the base prompts, and shared by all models, so differences
between models are never differences in grouping.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from scipy import sparse, stats

from lucidml.core.metrics import wilson_intervals
from lucidml.errors import InputError, ShapeError, require_file

PROMPT_COLUMNS = [
    "model",
    "prompt_id",
    "n_female",
    "n_male",
    "female_ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "n_total",
    "retention",
    "bias",
    "q_value",
]
GENDERS = ("female", "male")
TFIDF_DIM = 100  # LSA components of the offline embedder
# Every prompt names a gender-neutral subject, so these words name no concept.
NEUTRAL_WORDS = frozenset({"person", "people", "someone", "somebody", "individual", "adult"})
UNASSIGNED = "unassigned"
GROUP_COLUMNS = [
    "n_prompts",
    "n_excluded",
    "mean_ratio",
    "std_ratio",
    "ci_low",
    "ci_high",
    "pooled_ratio",
    "pooled_ci_low",
    "pooled_ci_high",
    "skewed",
    "direction",
]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"the {what} lack the column(s) {', '.join(missing)}")


def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


# --- per prompt ---------------------------------------------------------------------------

_COUNTS_SQL = """
SELECT model, prompt_id,
       count(*) FILTER (g = 'female' AND kept) AS n_female,
       count(*) FILTER (g = 'male' AND kept) AS n_male,
       count(*) AS n_total,
       count(*) FILTER (g NOT IN ('female', 'male')) AS n_unknown
FROM (SELECT model, prompt_id, CAST(gender AS VARCHAR) AS g, {kept} AS kept FROM records)
GROUP BY model, prompt_id
ORDER BY model, prompt_id
"""


def _relation(records, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    """The records as a DuckDB relation: a DataFrame, a Parquet file, or a folder of
    Parquet parts (the manifest of a sharded run)."""
    if isinstance(records, pd.DataFrame):
        _require(records, ("model", "prompt_id", "gender"), "records")
        cols = [c for c in ("model", "prompt_id", "gender", "kept") if c in records.columns]
        return con.from_df(records[cols])  # other columns (label lists) stay out of DuckDB
    if not isinstance(records, (str, Path)):
        raise InputError(f"records must be a DataFrame or a Parquet path, got {type(records)}")
    path = require_file(records, "records file")
    source = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    try:
        rel = con.read_parquet(source)
    except duckdb.Error as exc:
        raise InputError(f"cannot read records from {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("model", "prompt_id", "gender") if c not in rel.columns]
    if missing:
        raise InputError(f"the records in {path} lack the column(s) {', '.join(missing)}")
    return rel


def _counts(records) -> pd.DataFrame:
    """n_female, n_male, n_total per (model, prompt_id), in one pass over the records.
    An image counts as F or M only if its gender is set and (when there is one) its
    ``kept`` flag is true; every image counts in n_total, so retention can be reported."""
    with duckdb.connect() as con:
        rel = _relation(records, con)
        kept = "CAST(kept AS BOOLEAN)" if "kept" in rel.columns else "TRUE"
        counts = rel.query("records", _COUNTS_SQL.format(kept=kept)).df()
        n_bad = int(counts["n_unknown"].sum())
        if n_bad:
            found = rel.query(
                "records",
                "SELECT DISTINCT CAST(gender AS VARCHAR) FROM records "
                "WHERE CAST(gender AS VARCHAR) NOT IN ('female', 'male') LIMIT 3",
            ).fetchall()
            raise InputError(
                f"gender must be 'female', 'male' or missing, but {n_bad} record(s) have "
                f"other values such as {', '.join(repr(v) for (v,) in found)}"
            )
    return counts.drop(columns="n_unknown")


def binomial_p(k, n) -> np.ndarray:
    """Exact two-sided p of k ~ Bin(n, 1/2), NaN where n = 0.

    Under p = 1/2 the pmf is symmetric, so the outcomes no more likely than k are the two
    tails beyond |k - n/2| and p = min(1, 2 min(P(X <= k), P(X >= k))). That is the value
    scipy.stats.binomtest returns, as one vectorised call (binomtest costs ~1 ms a row)."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    p = np.minimum(1.0, 2 * np.minimum(stats.binom.cdf(k, n, 0.5), stats.binom.sf(k - 1, n, 0.5)))
    return np.where(n > 0, p, np.nan)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg q-values, q_(i) = min_{j>=i} p_(j) m / j clipped to 1.

    NaN p-values (prompts with no kept image) are not hypotheses: they stay NaN and do
    not count in m."""
    p = np.asarray(p, np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    order = np.argsort(p[ok])
    scaled = p[ok][order] * m / np.arange(1, m + 1)
    running = np.minimum.accumulate(scaled[::-1])[::-1]
    q_ok = np.empty(m)
    q_ok[order] = np.minimum(running, 1.0)
    q[ok] = q_ok
    return q


def prompt_stats(records, z: float = 1.96) -> pd.DataFrame:
    """Per (model, prompt_id): counts, R_f = F/(F+M) with its Wilson interval, the exact
    binomial p against 1/2, retention (F+M)/n, bias 2R_f - 1 and BH q within each model.

    ``records`` is one row per image (a DataFrame, a Parquet file or a folder of parts)
    with model, prompt_id (the *base* prompt, so variations pool), gender ("female",
    "male", or missing for a dropped image) and optionally kept."""
    out = _counts(records)
    f, m = out["n_female"].to_numpy(), out["n_male"].to_numpy()
    kept = f + m
    with np.errstate(invalid="ignore", divide="ignore"):
        out["female_ratio"] = f / kept
    out["ci_low"], out["ci_high"] = wilson_intervals(f, kept, z)
    out["p_value"] = binomial_p(f, kept)
    out["retention"] = kept / out["n_total"].to_numpy()
    out["bias"] = 2 * out["female_ratio"] - 1
    out["q_value"] = out.groupby("model", sort=False)["p_value"].transform(benjamini_hochberg)
    return out[PROMPT_COLUMNS]


def excluded_prompts(stats: pd.DataFrame, n_min: int) -> pd.DataFrame:
    """The prompt rows with fewer than ``n_min`` kept images, which concept means leave
    out. They are listed rather than dropped silently, since retention itself may
    depend on the gender shown."""
    _require(stats, ("model", "prompt_id", "n_female", "n_male"), "prompt statistics")
    return stats[stats["n_female"] + stats["n_male"] < n_min].reset_index(drop=True)


def n_min_sweep(
    stats: pd.DataFrame, thresholds=(1, 25, 50, 100, 200), n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Per model and threshold: the prompts kept and their mean R_f with a cluster-bootstrap
    interval. If the mean moves with n_min, the prompts it drops (those with few kept
    images) lean differently from the rest, and a single n_min hides that."""
    _require(
        stats, ("model", "prompt_id", "n_female", "n_male", "female_ratio"), "prompt statistics"
    )
    rows = []
    for model, part in stats.groupby("model", sort=False):
        kept = part["n_female"] + part["n_male"]
        for t in thresholds:
            r = part.loc[kept >= t, "female_ratio"].dropna().to_numpy(np.float64)
            low, high = (
                cluster_bootstrap_ci(r, n_boot, seed=seed) if r.size > 1 else (np.nan, np.nan)
            )
            rows.append(
                {
                    "model": model,
                    "n_min": t,
                    "n_prompts": int(r.size),
                    "mean_ratio": float(r.mean()) if r.size else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


# --- groups of prompts --------------------------------------------------------------------


def cluster_bootstrap_ci(
    ratios, n_boot: int = 2000, alpha: float = 0.05, seed: int | Sequence[int] = 0
) -> tuple[float, float]:
    """Percentile interval of the mean R_f over prompts resampled with replacement.

    Prompts are the independent units (images within a prompt are correlated), so they,
    not images, are resampled. NaN ratios are ignored; no ratio gives (NaN, NaN)."""
    r = np.asarray(ratios, np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, r.size, size=(n_boot, r.size))
    low, high = np.quantile(r[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _group_seed(seed: int, *names) -> list[int]:
    """A bootstrap seed per group that depends on the group's names only, so a group's
    interval does not change when other groups are added or removed."""
    return [seed, zlib.crc32("\x00".join(map(str, names)).encode())]


def _summary(part: pd.DataFrame, n_min: int, n_boot: int, alpha: float, seed, z: float) -> dict:
    """One group's row: mean and std of R_f over its prompts with F+M >= n_min, the
    cluster-bootstrap interval, and the (too narrow) pooled Wilson interval beside it."""
    kept = part["n_female"] + part["n_male"]
    used = part[kept >= n_min]
    r = used["female_ratio"].to_numpy(np.float64)
    # one prompt says nothing about the spread between prompts: no interval, no direction
    low, high = cluster_bootstrap_ci(r, n_boot, alpha, seed) if r.size > 1 else (np.nan, np.nan)
    f, m = int(used["n_female"].sum()), int(used["n_male"].sum())
    pooled_low, pooled_high = wilson_intervals([f], [f + m], z)
    direction = "female" if low > 0.5 else "male" if high < 0.5 else "none"
    return {
        "n_prompts": len(used),
        "n_excluded": len(part) - len(used),
        "mean_ratio": float(r.mean()) if r.size else float("nan"),
        "std_ratio": float(r.std(ddof=1)) if r.size > 1 else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "pooled_ratio": f / (f + m) if f + m else float("nan"),
        "pooled_ci_low": float(pooled_low[0]),
        "pooled_ci_high": float(pooled_high[0]),
        "skewed": direction != "none",
        "direction": direction,
    }


def group_stats(
    stats: pd.DataFrame,
    groups: pd.DataFrame,
    key: str,
    n_min: int = 100,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    z: float = 1.96,
) -> pd.DataFrame:
    """Per (model, group): R_f statistics over the group's prompts, for any grouping of
    prompts (``groups`` maps prompt_id to column ``key``: a concept, a category).

    ``skewed`` means the bootstrap interval excludes 0.5; ``direction`` says to which
    side. Prompts missing from ``groups`` belong to no group."""
    _require(stats, PROMPT_COLUMNS[:5], "prompt statistics")
    _require(groups, ("prompt_id", key), "groups")
    merged = stats.merge(groups[["prompt_id", key]].drop_duplicates("prompt_id"), on="prompt_id")
    rows = [
        {
            "model": model,
            key: group,
            **_summary(part, n_min, n_boot, alpha, _group_seed(seed, model, group), z),
        }
        for (model, group), part in merged.groupby(["model", key], sort=True)
    ]
    return pd.DataFrame(rows, columns=["model", key, *GROUP_COLUMNS])


def concept_stats(
    stats: pd.DataFrame,
    concepts: pd.DataFrame,
    n_min: int = 100,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    z: float = 1.96,
) -> pd.DataFrame:
    """``group_stats`` over concepts (prompt_id, concept, concept_name), with the name."""
    _require(concepts, ("prompt_id", "concept", "concept_name"), "concepts")
    out = group_stats(stats, concepts, "concept", n_min, n_boot, alpha, seed, z)
    names = concepts.drop_duplicates("concept").set_index("concept")["concept_name"]
    return out.assign(concept_name=out["concept"].map(names))


def model_difference(
    stats: pd.DataFrame,
    model_a: str,
    model_b: str,
    concepts: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    n_min: int = 100,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Mean R_f(a) - R_f(b) over prompts both models have (F+M >= n_min for both), with a
    paired bootstrap interval: prompts are resampled together for both models, so the
    shared prompt difficulty cancels. One row for all prompts (concept None), then one
    per concept when ``concepts`` is given."""
    _require(stats, PROMPT_COLUMNS[:5], "prompt statistics")
    for name in (model_a, model_b):
        if not (stats["model"] == name).any():
            raise InputError(f"model '{name}' is not in the prompt statistics")
    used = stats[stats["n_female"] + stats["n_male"] >= n_min]
    a, b = (used.loc[used["model"] == n, ["prompt_id", "female_ratio"]] for n in (model_a, model_b))
    pairs = a.merge(b, on="prompt_id", suffixes=("_a", "_b"))
    parts = [(None, "all prompts", pairs)]
    if concepts is not None:
        _require(concepts, ("prompt_id", "concept", "concept_name"), "concepts")
        names = concepts[["prompt_id", "concept", "concept_name"]].drop_duplicates("prompt_id")
        labelled = pairs.merge(names, on="prompt_id")
        parts += [
            (c, part["concept_name"].iloc[0], part)
            for c, part in labelled.groupby("concept", sort=True)
        ]
    rows = []
    for concept, name, part in parts:
        diff = (part["female_ratio_a"] - part["female_ratio_b"]).to_numpy()
        low, high = cluster_bootstrap_ci(
            diff, n_boot, alpha, _group_seed(seed, model_a, model_b, concept)
        )
        rows.append(
            {
                "model_a": model_a,
                "model_b": model_b,
                "concept": concept,
                "concept_name": name,
                "n_prompts": len(part),
                "mean_a": part["female_ratio_a"].mean(),
                "mean_b": part["female_ratio_b"].mean(),
                "difference": diff.mean() if diff.size else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "significant": bool(low > 0 or high < 0),
            }
        )
    return pd.DataFrame(rows)


# --- reference and labeller corrections ---------------------------------------------------


def amplification(rf_gen, rf_ref) -> dict:
    """How a model's skew compares with the reference data's, per prompt or scalar.

    A = b_gen - b_ref; A_dir = sign(b_ref) A is positive when the model exaggerates the
    data's own skew (and negative when it reverses or softens it); the log odds ratio is
    logit R_f^gen - logit R_f^ref (infinite at ratios 0 or 1)."""
    g, r = np.asarray(rf_gen, np.float64), np.asarray(rf_ref, np.float64)
    b_gen, b_ref = 2 * g - 1, 2 * r - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        log_or = np.log(g / (1 - g)) - np.log(r / (1 - r))
    values = {
        "b_gen": b_gen,
        "b_ref": b_ref,
        "amplification": b_gen - b_ref,
        "directional_amplification": np.sign(b_ref) * (b_gen - b_ref),
        "log_odds_ratio": log_or,
    }
    return {k: _scalar_or_array(v) for k, v in values.items()}


def corrected_ratio(rf, tpr: float, fpr: float) -> float | np.ndarray:
    """R_f corrected for the labeller's errors, (R_f - fpr)/(tpr - fpr) clipped to [0, 1],
    with tpr = P(labelled F | F) and fpr = P(labelled F | M) from a human-labelled audit.
    The inversion only exists when the labeller beats chance (tpr > fpr)."""
    if not tpr > fpr:
        raise InputError(f"the labeller correction needs tpr > fpr, got tpr {tpr}, fpr {fpr}")
    with np.errstate(invalid="ignore"):
        out = np.clip((np.asarray(rf, np.float64) - fpr) / (tpr - fpr), 0.0, 1.0)
    return _scalar_or_array(out)


# --- concepts -----------------------------------------------------------------------------


def _fit_words(vectorizer, texts: list[str]) -> sparse.csr_matrix:
    """The document-term matrix, or a one-sentence error when stop words leave no term."""
    try:
        return vectorizer.fit_transform(texts)
    except ValueError:  # sklearn: "empty vocabulary"
        raise InputError("the prompt texts have no words left after removing stop words") from None


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), so dot products are cosines."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _tfidf_embeddings(texts: list[str]) -> np.ndarray:
    """TF-IDF reduced by truncated SVD (LSA): the offline embedder, dense like a sentence
    embedding and able to join terms that co-occur."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = _fit_words(TfidfVectorizer(stop_words="english", sublinear_tf=True), texts)
    k = min(TFIDF_DIM, x.shape[0] - 1, x.shape[1] - 1)
    x = TruncatedSVD(k, random_state=0).fit_transform(x) if k >= 1 else x.toarray()
    return _unit_rows(x)


def embed_prompts(texts: Sequence[str], embedder: str = "minilm-l6") -> np.ndarray:
    """L2-normalised embeddings, one row per text: "tfidf" (offline, no model), or a
    sentence-transformers model ("minilm-l6", a hub id or a folder)."""
    texts = [str(t) for t in texts]
    if not texts:
        raise InputError("there are no prompt texts to embed")
    if embedder == "tfidf":
        return _tfidf_embeddings(texts)
    from lucidml.core.zoo import load_sentence_encoder

    model = load_sentence_encoder(embedder)
    emb = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    return _unit_rows(emb.astype(np.float64))


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0, 1, ... from the largest cluster down (ties: first seen), -1 kept, so
    ids are readable and do not depend on the clusterer's arbitrary numbering."""
    inside = labels[labels >= 0]
    ids, first, counts = np.unique(inside, return_index=True, return_counts=True)
    rank = np.empty(len(ids), np.int64)
    rank[np.lexsort((first, -counts))] = np.arange(len(ids))
    out = np.full(labels.shape, -1, np.int64)
    out[labels >= 0] = rank[np.searchsorted(ids, inside)]
    return out


def cluster_prompts(
    embeddings,
    method: str = "agglomerative",
    n_clusters: int | None = None,
    distance_threshold: float | None = None,
    min_cluster_size: int = 5,
) -> np.ndarray:
    """Concept ids for embedded prompts, numbered from the largest concept; -1 is
    "unassigned" (HDBSCAN's outliers).

    agglomerative: average linkage on cosine distance, cut at ``n_clusters`` or at
    ``distance_threshold``; with neither, n_clusters = round(sqrt(n / 2)), the usual rule
    of thumb (about 40 concepts for 3,000 prompts). hdbscan: density clusters of at
    least ``min_cluster_size`` prompts, on euclidean distance between the unit rows
    (monotone in cosine distance, and tree-accelerated). Both are deterministic."""
    from sklearn.cluster import HDBSCAN, AgglomerativeClustering

    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2:
        raise ShapeError(f"embeddings must be (n_prompts, dim), got shape {x.shape}")
    n = len(x)
    if method == "agglomerative":
        if n_clusters is not None and distance_threshold is not None:
            raise InputError("give agglomerative clustering n_clusters or distance_threshold")
        if n_clusters is None and distance_threshold is None:
            n_clusters = max(1, round(np.sqrt(n / 2)))
        if n_clusters is not None and not 1 <= n_clusters <= n:
            raise InputError(f"n_clusters must be between 1 and {n} prompts, got {n_clusters}")
        if n < 2:
            return np.zeros(n, np.int64)
        model = AgglomerativeClustering(
            n_clusters=n_clusters,
            distance_threshold=distance_threshold,
            metric="cosine",
            linkage="average",
        )
        return _relabel_by_size(model.fit_predict(x))
    if method == "hdbscan":
        if n < min_cluster_size:  # no cluster can form
            return np.full(n, -1, np.int64)
        model = HDBSCAN(min_cluster_size=min_cluster_size, copy=True)
        return _relabel_by_size(model.fit_predict(_unit_rows(x)))
    raise InputError(f"unknown clustering method '{method}': use agglomerative or hdbscan")


def concept_names(texts: Sequence[str], labels, top: int = 3) -> dict[int, str]:
    """Each concept's ``top`` terms by class-based TF-IDF, w_{t,c} = tf_{t,c} log(1 + A/f_t)
    (A: mean words per cluster, f_t: the term's frequency over all clusters), so terms
    frequent in one concept but rare elsewhere name it. -1 is "unassigned"."""
    texts, labels = [str(t) for t in texts], np.asarray(labels)
    if len(texts) != len(labels):
        raise ShapeError(f"{len(texts)} texts but {len(labels)} concept labels")
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    vectorizer = CountVectorizer(stop_words=sorted(ENGLISH_STOP_WORDS | NEUTRAL_WORDS))
    counts = _fit_words(vectorizer, texts)
    classes, codes = np.unique(labels, return_inverse=True)
    member = sparse.csr_matrix(
        (np.ones(len(labels)), (codes, np.arange(len(labels)))), shape=(len(classes), len(labels))
    )
    tf = (member @ counts).toarray()
    f = tf.sum(axis=0)
    a = tf.sum() / len(classes)
    w = tf * np.log1p(a / f)
    terms = vectorizer.get_feature_names_out()
    names = {}
    for i, c in enumerate(classes):
        best = [j for j in np.argsort(-w[i], kind="stable")[:top] if w[i, j] > 0]
        names[int(c)] = UNASSIGNED if c == -1 else ", ".join(terms[best])
    return names


def concepts(
    prompts: pd.DataFrame, embedder: str = "minilm-l6", method: str = "agglomerative", **kw
) -> pd.DataFrame:
    """One concept per base prompt: prompt_id, concept, concept_name.

    ``prompts`` has prompt_id and text; several rows per prompt_id are its variations.
    Each base prompt is clustered once, at the mean of its variations' embeddings, so no
    single phrasing decides its concept; names are drawn from all variations' words.
    ``kw`` goes to ``cluster_prompts``."""
    _require(prompts, ("prompt_id", "text"), "prompts")
    codes, ids = pd.factorize(prompts["prompt_id"], sort=True)
    emb = embed_prompts(prompts["text"].tolist(), embedder)
    base = np.zeros((len(ids), emb.shape[1]))
    np.add.at(base, codes, emb)
    labels = cluster_prompts(_unit_rows(base), method, **kw)
    names = concept_names(prompts["text"].tolist(), labels[codes])
    return pd.DataFrame(
        {"prompt_id": ids, "concept": labels, "concept_name": [names[c] for c in labels]}
    )
