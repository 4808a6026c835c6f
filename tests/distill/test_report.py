"""The report a reviewer needs (issue 15): paired intervals, per-run selections, recipe
block, figures scaled to the data, and runs.parquet."""

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from distill_fixtures import tiny_rank
from scipy import stats

matplotlib.use("Agg")

from lucidml.core.report import Report  # noqa: E402
from lucidml.distill import api  # noqa: E402
from lucidml.distill.evaluate import Evaluator  # noqa: E402
from lucidml.distill.plots import (  # noqa: E402
    difference_figure,
    ior_hlr_figure,
    leaderboard_figure,
)
from lucidml.distill.report import add_section, recipe_summary, runs_table, write_runs  # noqa: E402
from lucidml.distill.scores import label_robust_score, paired_difference  # noqa: E402
from lucidml.errors import InputError  # noqa: E402

# --- the paired interval --------------------------------------------------------------


def test_paired_difference_by_hand_and_against_scipy():
    # d = [0.1, 0, 0.05]: mean 0.05, sample std 0.05, t(0.975, 2) = 4.302653
    out = paired_difference([0.9, 0.8, 0.85], [0.8, 0.8, 0.8])
    half = 4.302652729749462 * 0.05 / math.sqrt(3)  # 0.124207
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.05)
    assert (out["low"], out["high"]) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 1, 7), rng.uniform(0.5, 1, 7)
    peer = stats.ttest_rel(a, b).confidence_interval(0.95)
    out = paired_difference(a, b)
    assert (out["low"], out["high"]) == pytest.approx((peer.low, peer.high), abs=1e-12)


def test_paired_difference_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(500):
        noise = rng.normal(0, 0.02, 5)
        out = paired_difference(0.7 + 0.03 + noise, np.full(5, 0.7))
        hits += out["low"] <= 0.03 <= out["high"]
    assert 0.92 <= hits / 500 <= 0.98  # 3 binomial sds (0.0097 at 500 draws) around 0.95


def test_paired_difference_of_one_run_has_no_interval_and_unequal_runs_are_refused():
    assert paired_difference([0.8], [0.7]) == pytest.approx(
        {"mean": 0.1, "low": None, "high": None, "n": 1}
    )
    with pytest.raises(InputError, match="equal length"):
        paired_difference([0.8, 0.9], [0.7])


# --- per-run rows from planted selections ---------------------------------------------


def _pick(acc, lr, epoch):
    return {"acc": acc, "lr": lr, "epoch": epoch, "val_acc": acc, "optimistic": False}


def _planted(labels="hard"):
    """Evaluator.results on planted selected checkpoints: two sets, three runs."""
    cfg = tiny_rank(labels=labels, num_eval=3).eval
    ev = Evaluator(None, cfg, device="cpu")
    ev.acc_real_hard, ev.data_key = 0.9, "planted"
    rdm = [
        {"rdm": _pick(0.60 + 0.01 * r, 0.1, 10), "rdm_noaug": _pick(0.50, 0.05, 5)}
        for r in range(3)
    ]

    def syn(base, hard):
        return [
            {
                "syn_hard": _pick(hard + 0.01 * r, 0.05, 10 + r),
                "syn": _pick(base + (0.02, 0.0, 0.04)[r], 0.1, 5),
                "syn_noaug": _pick(0.55, 0.05, 10),
            }
            for r in range(3)
        ]

    return ev.results(
        {c: 1 for c in range(10)}, {"dm": syn(0.7, 0.65), "random": syn(0.6, 0.6)}, rdm
    )


def test_rows_record_the_selected_lr_and_epoch_of_every_condition():
    rows = _planted()["dm"]["runs"]
    assert [r["epoch_syn_hard"] for r in rows] == [10, 11, 12]
    assert [r["lr_syn_hard"] for r in rows] == [0.05] * 3
    assert [(r["lr_syn"], r["epoch_syn"]) for r in rows] == [(0.1, 5)] * 3
    assert [(r["lr_rdm"], r["epoch_rdm"]) for r in rows] == [(0.1, 10)] * 3
    assert [(r["lr_rdm_noaug"], r["epoch_rdm_noaug"]) for r in rows] == [(0.05, 5)] * 3
    assert [(r["lr_syn_noaug"], r["epoch_syn_noaug"]) for r in rows] == [(0.05, 10)] * 3
    # syn - rdm per run: (0.72 - 0.60, 0.70 - 0.61, 0.74 - 0.62)
    assert [r["gap_aug"] for r in rows] == pytest.approx([0.12, 0.09, 0.12])
    assert [r["gap_noaug"] for r in rows] == pytest.approx([0.05] * 3)


def test_summaries_carry_paired_intervals_with_n():
    dm = _planted()["dm"]
    aug = dm["syn_minus_rdm"]["aug"]
    expected = paired_difference([0.72, 0.70, 0.74], [0.60, 0.61, 0.62])
    assert aug == pytest.approx(expected) and aug["n"] == 3
    assert aug["mean"] == pytest.approx(dm["ior_mean"])
    # no spread without augmentation: the interval is the point
    assert dm["syn_minus_rdm"]["noaug"] == pytest.approx(
        {"mean": 0.05, "low": 0.05, "high": 0.05, "n": 3}
    )
    assert dm["soft_minus_hard"] is None  # hard labels: one condition
    soft = _planted("soft")["dm"]["soft_minus_hard"]  # syn (0.72, 0.70, 0.74) - hard (0.65..)
    assert soft == pytest.approx(paired_difference([0.72, 0.70, 0.74], [0.65, 0.66, 0.67]))


# --- the report and its figures --------------------------------------------------------


def test_report_opens_with_the_recipe_and_shows_every_number(tmp_path):
    methods = _planted("soft")
    cfg = tiny_rank(labels="soft", num_eval=3).eval
    rep = Report("planted")
    add_section(rep, methods, cfg, recipe_summary(cfg, 0.9), "IPC 1, soft labels", "planted")
    md = rep.to_markdown()
    recipe = md.index("| labels | soft, mode M")
    for setting in ("loss | KL", "temperature | 1.2", "augmentation | DSA", "training | 10 epochs"):
        assert md.index(setting) > recipe, setting
    assert "selection | validation split: 10%" in md
    assert recipe < md.index("| method | LRS | ARS | HLR | IOR | n |")
    dm = methods["dm"]["syn_minus_rdm"]["aug"]
    assert f"{dm['mean']:+.4f} [{dm['low']:+.4f}, {dm['high']:+.4f}]" in md
    assert "| 0.05 @ 12 |" in md  # run 2's selected hard-label checkpoint
    assert f"{methods['dm']['acc_rdm_noaug_mean']:.4f} ± " in md
    rep.save(tmp_path)
    for figure in ("leaderboard", "differences", "ior_hlr", "soft_vs_hard"):
        assert (tmp_path / f"{figure}_planted.png").is_file(), figure
    assert recipe_summary(cfg.updated(labels="hard", loss="ce"), 0.9)["temperature"].startswith(
        "unused"
    )


def test_the_score_axis_is_scaled_to_the_scores_not_zero_to_one():
    def row(lrs, ars):
        return {"lrs_mean": lrs, "lrs_std": 0.002, "ars_mean": ars, "ars_std": 0.002}

    methods = {"random": row(0.264, 0.267), "dm": row(0.273, 0.279), "dc": row(0.238, 0.237)}
    low, high = leaderboard_figure(methods, "t").axes[0].get_ylim()
    assert 0.2 < low < 0.236 and 0.281 < high < 0.32  # the 0.04 spread fills the axis


def test_the_difference_bars_are_the_paired_means_with_their_intervals():
    methods = _planted()
    ax = difference_figure(methods, "t").axes[0]
    heights = sorted(round(p.get_height(), 10) for p in ax.patches)
    means = [m["syn_minus_rdm"][k]["mean"] for m in methods.values() for k in ("aug", "noaug")]
    assert heights == sorted(round(v, 10) for v in means)
    low, high = ax.get_ylim()
    assert low < 0 < high and high - low < 0.5  # differences of a few points, not 0-1


def test_the_ior_hlr_line_holds_the_points_with_randoms_lrs():
    methods = _planted()
    ax = ior_hlr_figure(methods, 0.25, "t").axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "--")
    hlr0, ior0 = methods["random"]["hlr_mean"], methods["random"]["ior_mean"]
    # every point of the line has random's alpha = lam * IOR - (1 - lam) * HLR, so its LRS
    alpha0 = label_robust_score(0.9, 0.9 - hlr0, 0.5 + ior0, 0.5, lam=0.25)["alpha"]
    for hlr, ior in zip(line.get_xdata(), line.get_ydata(), strict=True):
        assert 0.25 * ior - 0.75 * hlr == pytest.approx(alpha0, abs=1e-12)
    assert ax.get_xlim()[0] < hlr0 < ax.get_xlim()[1]


# --- runs.parquet ----------------------------------------------------------------------


def test_runs_parquet_holds_one_row_per_set_and_run(tmp_path):
    methods = _planted()
    path = write_runs(tmp_path / "runs.parquet", runs_table(methods, dataset="digits", ipc=1))
    table = pd.read_parquet(path)
    assert len(table) == 6 and sorted(set(table["method"])) == ["dm", "random"]
    dm = table[table["method"] == "dm"].sort_values("run")
    assert dm["acc_syn"].tolist() == pytest.approx([0.72, 0.70, 0.74])
    assert dm["epoch_syn_hard"].tolist() == [10, 11, 12]
    assert set(table["dataset"]) == {"digits"} and set(table["labels"]) == {"hard"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written whole


def test_a_soft_label_rank_reports_soft_against_hard(tmp_path):
    # issue 15: the soft-vs-hard comparison in rank, not only in the demo
    out = tmp_path / "soft"
    cfg = tiny_rank(labels="soft").updated(methods=["random", "noise"])
    # mode S (the teacher labels each set once) costs a quarter of mode M's CPU time here
    api.rank(cfg.with_eval(soft_label_mode="S"), out=out)
    results = json.loads((out / "results.json").read_text())
    for name, r in results["methods"].items():
        gain = [run["acc_syn"] - run["acc_syn_hard"] for run in r["runs"]]
        assert r["soft_minus_hard"]["mean"] == pytest.approx(np.mean(gain)), name
        assert r["soft_minus_hard"]["n"] == 2
    assert results["recipe"]["labels"].startswith("soft, mode S")
    assert (out / "soft_vs_hard_ipc1_soft.png").is_file()
    assert "syn soft − syn hard" in (out / "report.md").read_text()
    table = pd.read_parquet(out / "runs.parquet")
    assert len(table) == 4 and set(table["labels"]) == {"soft"}
