import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import adjusted_rand_score

from lucidml.bias import analyze as an
from lucidml.errors import InputError

KITCHEN = ["kitchen", "stove", "oven", "recipe", "soup", "baking", "pantry", "spatula"]
MACHINERY = ["engine", "turbine", "gearbox", "piston", "lathe", "welding", "hydraulic", "bolts"]
BANKING = ["bank", "loan", "mortgage", "ledger", "interest", "deposit", "invoice", "dividend"]


def records(counts: dict) -> pd.DataFrame:
    """One row per image from {(model, prompt_id): (n_female, n_male, n_dropped)}."""
    keys, fmd = list(counts), np.array(list(counts.values())).reshape(-1, 3)
    rows = np.repeat(np.arange(len(keys)), fmd.sum(1))
    gender = np.repeat(np.tile(np.array(["female", "male", None], object), len(keys)), fmd.ravel())
    return pd.DataFrame(
        {
            "model": [keys[i][0] for i in rows],
            "prompt_id": [keys[i][1] for i in rows],
            "gender": gender,
        }
    )


def planted(ratios: dict, n: int, rng, spread: float = 0.05, model: str = "m") -> pd.DataFrame:
    """Records with prompt-level heterogeneity: each prompt's true R_f is drawn around
    its planted value, then its n images are Bernoulli."""
    counts = {}
    for prompt, rf in ratios.items():
        p = np.clip(rf + rng.normal(0, spread), 0.01, 0.99)
        f = int(rng.binomial(n, p))
        counts[(model, prompt)] = (f, n - f, 0)
    return records(counts)


def vocabulary_prompts(rng) -> tuple[list[str], np.ndarray]:
    texts, truth = [], []
    for label, words in enumerate((KITCHEN, MACHINERY, BANKING)):
        for _ in range(10):
            texts.append("a person " + " ".join(rng.choice(words, size=3, replace=False)))
            truth.append(label)
    return texts, np.array(truth)


def test_ratio_bias_and_retention_count_dropped_images():
    s = an.prompt_stats(records({("m", "p"): (30, 70, 20)}))
    assert list(s.columns) == an.PROMPT_COLUMNS
    row = s.iloc[0]
    assert (row.n_female, row.n_male, row.n_total) == (30, 70, 120)
    assert row.female_ratio == pytest.approx(0.3)
    assert row.bias == pytest.approx(-0.4)
    assert row.retention == pytest.approx(100 / 120)


def test_wilson_intervals_known_values():
    s = an.prompt_stats(records({("m", 1): (5, 5, 0), ("m", 2): (0, 10, 0), ("m", 3): (80, 20, 0)}))
    expected = [(0.2366, 0.7634), (0.0, 0.2775), (0.7112, 0.8666)]
    for (_, row), (lo, hi) in zip(s.iterrows(), expected, strict=True):
        assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), abs=1e-4)


def test_exact_binomial_known_values_and_agreement_with_binomtest():
    s = an.prompt_stats(records({("m", 1): (2, 8, 0), ("m", 2): (0, 10, 0)}))
    assert s.p_value.tolist() == pytest.approx([0.109375, 0.001953125], rel=1e-12)
    k, n = np.array([(k, n) for n in range(0, 21) for k in range(n + 1)]).T
    expected = [
        sps.binomtest(int(a), int(b), 0.5).pvalue if b else np.nan
        for a, b in zip(k, n, strict=True)
    ]
    np.testing.assert_allclose(an.binomial_p(k, n), expected, rtol=1e-10)


def test_benjamini_hochberg_known_values_nan_aware_and_per_model():
    q = an.benjamini_hochberg([0.01, 0.02, 0.03, 0.5])
    assert q == pytest.approx([0.04, 0.04, 0.04, 0.5])
    q = an.benjamini_hochberg([np.nan, 0.02, 0.01])
    assert np.isnan(q[0]) and q[1:] == pytest.approx([0.02, 0.02])
    # the second model's prompts are a separate family of hypotheses
    s = an.prompt_stats(records({("a", 1): (2, 8, 0), ("b", 1): (2, 8, 0), ("b", 2): (5, 5, 0)}))
    assert s.q_value.tolist() == pytest.approx([0.109375, 0.21875, 1.0])


def test_wilson_coverage_on_bernoulli_data():
    rng = np.random.default_rng(0)
    f = rng.binomial(100, 0.3, size=1000)
    s = an.prompt_stats(records({("m", i): (int(k), 100 - int(k), 0) for i, k in enumerate(f)}))
    covered = ((s.ci_low <= 0.3) & (s.ci_high >= 0.3)).mean()
    assert 0.93 <= covered <= 0.97


def test_cluster_bootstrap_coverage_with_prompt_heterogeneity():
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(200):
        p = rng.beta(6, 14, size=30)  # true mean 0.3, sd 0.1 across prompts
        ratios = rng.binomial(100, p) / 100
        lo, hi = an.cluster_bootstrap_ci(ratios, seed=rep)
        hits += lo <= 0.3 <= hi
    assert 0.85 <= hits / 200 <= 0.99
    assert an.cluster_bootstrap_ci([0.2, 0.4], seed=1) == an.cluster_bootstrap_ci(
        [0.2, 0.4], seed=1
    )
    assert np.isnan(an.cluster_bootstrap_ci([np.nan])[0])


def test_tfidf_agglomerative_recovers_disjoint_vocabularies_and_names_them():
    texts, truth = vocabulary_prompts(np.random.default_rng(0))
    emb = an.embed_prompts(texts, "tfidf")
    assert np.linalg.norm(emb, axis=1) == pytest.approx(np.ones(len(texts)))
    labels = an.cluster_prompts(emb, n_clusters=3)
    assert adjusted_rand_score(truth, labels) == 1.0
    names = an.concept_names(texts, labels)
    for c in range(3):
        own = (KITCHEN, MACHINERY, BANKING)[truth[labels == c][0]]
        terms = names[c].split(", ")
        assert len(terms) == 3 and set(terms) <= set(own)


def test_concepts_cluster_base_prompts_once_over_their_variations():
    texts, truth = vocabulary_prompts(np.random.default_rng(1))
    prompts = pd.DataFrame(
        {
            "prompt_id": np.repeat(np.arange(30), 2),
            "text": [t for text in texts for t in (text, text.replace("a person", "someone"))],
        }
    )
    c = an.concepts(prompts, embedder="tfidf", n_clusters=3)
    assert list(c.columns) == ["prompt_id", "concept", "concept_name"]
    assert c.prompt_id.tolist() == list(range(30))
    assert adjusted_rand_score(truth, c.concept) == 1.0
    assert not c.concept_name.str.contains("someone|person").any()


def test_hdbscan_marks_outliers_unassigned():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    x = np.vstack([centres[i] + rng.normal(0, 0.05, (8, 8)) for i in range(3)])
    x = np.vstack([x, -np.ones(8)])  # far from every cluster
    labels = an.cluster_prompts(x, method="hdbscan", min_cluster_size=5)
    assert adjusted_rand_score(np.repeat([0, 1, 2], 8), labels[:-1]) == 1.0
    assert labels[-1] == -1
    names = an.concept_names(["soup pot"] * 8 + ["gear bolt"] * 8 + ["loan bank"] * 9, labels)
    assert names[-1] == "unassigned"
    assert an.cluster_prompts(x[:3], method="hdbscan").tolist() == [-1, -1, -1]


def test_planted_concept_directions_are_recovered():
    rng = np.random.default_rng(0)
    planted_rf = {"care": 0.7, "technical": 0.2, "finance": 0.25}
    ratios = {f"{name}{i}": rf for name, rf in planted_rf.items() for i in range(10)}
    s = an.prompt_stats(planted(ratios, 200, rng))
    groups = pd.DataFrame(
        {
            "prompt_id": list(ratios),
            "concept": [list(planted_rf).index(p.rstrip("0123456789")) for p in ratios],
            "concept_name": [p.rstrip("0123456789") for p in ratios],
        }
    )
    c = an.concept_stats(s, groups, n_boot=500).set_index("concept_name")
    assert list(c.sort_values("mean_ratio").index) == ["technical", "finance", "care"]
    assert c.direction.to_dict() == {"care": "female", "technical": "male", "finance": "male"}
    assert c.skewed.all() and (c.n_prompts == 10).all()
    assert s.female_ratio.mean() < 0.5
    # the pooled Wilson interval ignores prompt heterogeneity and is narrower
    assert ((c.pooled_ci_high - c.pooled_ci_low) < (c.ci_high - c.ci_low)).all()
    # categories share the code path: the same grouping gives the same numbers
    g = an.group_stats(s, groups, "concept", n_boot=500)
    pd.testing.assert_frame_equal(g, c.reset_index()[g.columns])


def test_prompts_below_n_min_are_listed_and_left_out():
    s = an.prompt_stats(records({("m", 1): (60, 60, 0), ("m", 2): (10, 5, 100)}))
    excluded = an.excluded_prompts(s, 100)
    assert excluded.prompt_id.tolist() == [2]
    c = an.group_stats(s, pd.DataFrame({"prompt_id": [1, 2], "category": "activity"}), "category")
    assert (c.n_prompts.item(), c.n_excluded.item(), c.mean_ratio.item()) == (1, 1, 0.5)


def test_model_difference_is_paired_by_prompt():
    rng = np.random.default_rng(0)
    ratios = {i: rf for i, rf in enumerate(rng.uniform(0.2, 0.8, size=40))}
    shifted = {i: rf - 0.2 for i, rf in ratios.items()}
    recs = pd.concat([planted(ratios, 200, rng, 0, "a"), planted(shifted, 200, rng, 0, "b")])
    s = an.prompt_stats(recs)
    concepts = pd.DataFrame({"prompt_id": list(ratios), "concept": np.arange(40) % 2})
    concepts["concept_name"] = concepts.concept.map({0: "even", 1: "odd"})
    d = an.model_difference(s, "a", "b", concepts, n_boot=500)
    assert d.concept_name.tolist() == ["all prompts", "even", "odd"]
    assert d.difference.tolist() == pytest.approx([0.2] * 3, abs=0.03)
    assert d.significant.all() and (d.ci_low > 0.1).all()
    # pairing removes the spread of prompt ratios: far narrower than the unpaired spread
    assert d.ci_high[0] - d.ci_low[0] < 0.05
    with pytest.raises(InputError, match="model 'c'"):
        an.model_difference(s, "a", "c")


def test_amplification_and_labeller_correction():
    a = an.amplification(0.2, 0.35)
    assert a["amplification"] == pytest.approx(-0.3)
    assert a["directional_amplification"] == pytest.approx(0.3)
    assert a["log_odds_ratio"] == pytest.approx(np.log(0.25) - np.log(0.35 / 0.65))
    v = an.amplification(np.array([0.2, 0.8]), np.array([0.35, 0.65]))
    assert v["directional_amplification"] == pytest.approx([0.3, 0.3])
    assert an.corrected_ratio(0.4, 0.9, 0.1) == pytest.approx(0.375)
    assert an.corrected_ratio(np.array([0.05, 0.95]), 0.9, 0.1).tolist() == [0.0, 1.0]
    with pytest.raises(InputError, match="tpr > fpr"):
        an.corrected_ratio(0.4, 0.1, 0.1)


def test_parquet_file_and_folder_give_the_same_stats_as_the_frame(tmp_path):
    df = planted({i: 0.4 for i in range(20)}, 50, np.random.default_rng(0))
    df.loc[::7, "gender"] = None
    expected = an.prompt_stats(df)
    df.to_parquet(tmp_path / "records.parquet")
    pd.testing.assert_frame_equal(an.prompt_stats(tmp_path / "records.parquet"), expected)
    parts = tmp_path / "shards"
    parts.mkdir()
    df.iloc[:500].to_parquet(parts / "part-0.parquet")
    df.iloc[500:].to_parquet(parts / "part-1.parquet")
    pd.testing.assert_frame_equal(an.prompt_stats(str(parts)), expected)


def test_kept_flag_and_bad_inputs():
    df = records({("m", 1): (3, 3, 0)}).assign(kept=[True] * 5 + [False])
    row = an.prompt_stats(df).iloc[0]
    assert (row.n_female, row.n_male, row.n_total) == (3, 2, 6)
    with pytest.raises(InputError, match="gender"):
        an.prompt_stats(df.drop(columns="gender"))
    with pytest.raises(InputError, match="'unclear'"):
        an.prompt_stats(df.assign(gender="unclear"))
    with pytest.raises(InputError, match="does not exist"):
        an.prompt_stats("/nonexistent/records.parquet")
    with pytest.raises(InputError, match="unknown clustering"):
        an.cluster_prompts(np.eye(3), method="kmeans")


@pytest.mark.slow
def test_minilm_groups_paraphrases():
    texts = ["a person cooking dinner", "someone preparing a meal", "a person repairing an engine"]
    labels = an.cluster_prompts(an.embed_prompts(texts), n_clusters=2)
    assert labels[0] == labels[1] != labels[2]


def test_n_min_sweep_shows_when_dropped_prompts_lean_differently():
    from lucidml.bias.analyze import n_min_sweep

    # ten well-sampled prompts at R_f 0.2, ten thinly sampled ones at 0.8
    stats = pd.DataFrame(
        {
            "model": ["m"] * 20,
            "prompt_id": [f"p{i}" for i in range(20)],
            "n_female": [40] * 10 + [8] * 10,
            "n_male": [160] * 10 + [2] * 10,
        }
    )
    stats["female_ratio"] = stats["n_female"] / (stats["n_female"] + stats["n_male"])
    sweep = n_min_sweep(stats, thresholds=(1, 100), n_boot=200).set_index("n_min")
    assert sweep.loc[1, "n_prompts"] == 20 and sweep.loc[100, "n_prompts"] == 10
    assert sweep.loc[1, "mean_ratio"] == pytest.approx(0.5)
    assert sweep.loc[100, "mean_ratio"] == pytest.approx(0.2)
    assert sweep.loc[100, "ci_low"] == pytest.approx(0.2) == sweep.loc[100, "ci_high"]
