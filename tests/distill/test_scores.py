import itertools
import math

import pytest

from lucidml.distill.scores import augmentation_robust_score, label_robust_score, score_map
from lucidml.errors import InputError


def test_score_map_fixed_points():
    assert score_map(-1) == pytest.approx(0, abs=1e-15)
    assert score_map(0) == pytest.approx(1 / (1 + math.e), abs=1e-12)
    assert score_map(0) == pytest.approx(0.268941, abs=1e-6)
    assert score_map(1) == pytest.approx(1, abs=1e-15)


def test_lrs_issue_example():
    out = label_robust_score(acc_real_hard=0.9, acc_syn_hard=0.6, acc_syn=0.7, acc_rdm=0.5)
    assert out["hlr"] == pytest.approx(0.3)
    assert out["ior"] == pytest.approx(0.2)
    # alpha = 0.5 * 0.2 - 0.5 * 0.3 = -0.05; (e^-0.05 - e^-1) / (e - e^-1)
    assert out["lrs"] == pytest.approx((math.exp(-0.05) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert out["lrs"] == pytest.approx(0.2482, abs=1e-4)


def test_lrs_spec_example():
    out = label_robust_score(0.8789, 0.7026, 0.7026, 0.5226)
    assert out["hlr"] == pytest.approx(0.1763)
    assert out["ior"] == pytest.approx(0.18)
    assert out["alpha"] == pytest.approx(0.00185)
    assert out["lrs"] == pytest.approx(0.269729, abs=1e-6)


def test_lrs_from_ior_and_hlr():
    # IOR 0.20 and HLR 0.10: alpha = 0.05
    out = label_robust_score(0.9, 0.8, 0.7, 0.5)
    assert out["lrs"] == pytest.approx(0.290755, abs=1e-6)


def test_percentages_are_rejected():
    with pytest.raises(InputError, match="acc_real_hard = 87.89"):
        label_robust_score(87.89, 70.26, 70.26, 52.26)
    with pytest.raises(InputError, match="acc_syn_aug"):
        augmentation_robust_score(1.2, 0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="lam"):
        label_robust_score(0.9, 0.8, 0.7, 0.5, lam=2)


def test_ars_known_value():
    out = augmentation_robust_score(
        acc_syn_aug=0.8, acc_rdm_aug=0.6, acc_syn_noaug=0.5, acc_rdm_noaug=0.6, gamma=0.5
    )
    # beta = 0.5 * 0.2 + 0.5 * (-0.1) = 0.05
    assert out["beta"] == pytest.approx(0.05)
    assert out["ars"] == pytest.approx(0.290755, abs=1e-6)
    assert augmentation_robust_score(0.7, 0.7, 0.4, 0.4)["ars"] == pytest.approx(0.268941, abs=1e-6)


def test_scores_lie_in_unit_interval_on_a_grid():
    grid = [0.0, 0.13, 0.5, 0.87, 1.0]
    for a, b, c, d in itertools.product(grid, repeat=4):
        for w in (0.0, 0.3, 1.0):
            assert 0.0 <= label_robust_score(a, b, c, d, lam=w)["lrs"] <= 1.0
            assert 0.0 <= augmentation_robust_score(a, b, c, d, gamma=w)["ars"] <= 1.0
    assert label_robust_score(0, 1, 1, 0, lam=1)["lrs"] == pytest.approx(1)
    assert label_robust_score(1, 0, 0, 1, lam=0)["lrs"] == pytest.approx(0, abs=1e-15)
