"""End to end on digits with a small recipe (ConvNet-2 width 16, 40 epochs)."""

import numpy as np
import pytest
import torch

from lucidml.core.runs import derive_seed
from lucidml.distill.baselines import distill
from lucidml.distill.config import DistillConfig
from lucidml.distill.data import random_subset
from lucidml.distill.evaluate import Evaluator
from lucidml.distill.scores import score_map


@pytest.fixture(scope="module")
def hard_eval(digits, tiny_cfg):
    return Evaluator(digits, tiny_cfg).fit()


@pytest.fixture(scope="module")
def ipc10_sets(digits, hard_eval):
    x, y = digits.train_x[hard_eval.train_index], digits.train_y[hard_eval.train_index]
    cfg = DistillConfig(dm_iterations=50, dm_batch_real=64)
    return {m: distill(m, x, y, 10, seed=0, cfg=cfg) for m in ("random", "herding", "dm", "noise")}


def test_teacher_is_accurate(hard_eval):
    assert hard_eval.acc_real_hard >= 0.95


def test_dm_and_herding_beat_random_and_noise_fails_with_hard_labels(hard_eval, ipc10_sets):
    acc = {m: np.mean(hard_eval.accuracy(*xy)) for m, xy in ipc10_sets.items()}
    assert acc["dm"] > acc["random"]
    assert acc["herding"] > acc["random"]
    assert acc["noise"] <= 0.25


def test_soft_label_mode_m_lifts_noise_far_above_chance(digits, hard_eval, ipc10_sets):
    base = hard_eval.cfg
    cfg = base.updated(
        labels="soft",
        soft_label_mode="M",
        loss="kl",
        lr_grid=[0.1],
        recipe=base.recipe.updated(epochs=150),
        augment=base.augment.updated(mix="cutmix"),
    )
    soft_eval = Evaluator(digits, cfg).fit()  # the same teacher as hard_eval, from the cache
    assert np.mean(soft_eval.accuracy(*ipc10_sets["noise"], labels="soft")) > 0.3


def test_class_mean_beats_random_at_ipc1(digits, tiny_cfg):
    ev = Evaluator(digits, tiny_cfg.updated(num_eval=5)).fit()
    x, y = digits.train_x[ev.train_index], digits.train_y[ev.train_index]
    mean_acc = np.mean(ev.accuracy(*distill("classmean", x, y, 1)))
    random_acc = np.mean(ev.accuracy(*distill("random", x, y, 1, seed=0)))
    assert mean_acc > random_acc


def test_own_random_subset_scores_exactly_random(digits, tiny_cfg):
    cfg = tiny_cfg.updated(num_eval=1)
    ev = Evaluator(digits, cfg).fit()
    idx = random_subset(ev.train_y, {c: 2 for c in range(10)}, derive_seed(cfg.seed, 0))
    out = ev.score(ev.train_x[idx], ev.train_y[idx])
    assert out["ior_mean"] == 0.0
    assert out["ars_mean"] == score_map(0.0)
    assert out["ars_mean"] == pytest.approx(0.268941, abs=1e-6)
    for key in (
        "lrs_mean",
        "lrs_std",
        "ars_mean",
        "ars_std",
        "hlr_mean",
        "ior_mean",
        "acc_syn_mean",
        "acc_rdm_mean",
        "acc_syn_noaug_mean",
        "acc_rdm_noaug_mean",
        "acc_real_hard_mean",
    ):
        assert key in out
    assert len(out["runs"]) == 1 and out["runs"][0]["selection"] == "val"

    again = Evaluator(digits, cfg).fit().score(ev.train_x[idx], ev.train_y[idx])
    assert again["runs"] == out["runs"]  # same seed, same numbers (teacher from the cache)


def test_noise_lrs_below_random_and_scores_in_range(digits, tiny_cfg):
    ev = Evaluator(digits, tiny_cfg.updated(num_eval=2)).fit()
    x, y = digits.train_x[ev.train_index], digits.train_y[ev.train_index]
    sets = {m: distill(m, x, y, 2, seed=1) for m in ("random", "noise")}
    out = ev.score_many(sets)
    assert out["noise"]["lrs_mean"] < out["random"]["lrs_mean"]
    for r in out.values():
        assert 0 <= r["lrs_mean"] <= 1 and 0 <= r["ars_mean"] <= 1


def test_test_set_selection_is_flagged(digits, tiny_cfg):
    cfg = tiny_cfg.updated(
        selection="test",
        num_eval=1,
        real=tiny_cfg.real.updated(epochs=5),
        recipe=tiny_cfg.recipe.updated(epochs=10),
    )
    ev = Evaluator(digits, cfg).fit()
    x, y = distill("random", digits.train_x, digits.train_y, 1, seed=3)
    out = ev.score(x, y)
    assert out["optimistic"] and out["runs"][0]["optimistic"]
    assert ev.val is None
    torch.testing.assert_close(
        torch.tensor(out["acc_rdm_mean"]), torch.tensor(out["runs"][0]["acc_rdm"])
    )
