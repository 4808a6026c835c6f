"""Known answers for the datagen fidelity and diversity metrics (spec section 5)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import scipy.linalg
import torch

from lucidml.datagen import metrics
from lucidml.datagen.metrics import fidelity_report, frechet_distance, near_duplicate_rate, prdc
from lucidml.errors import InputError, ShapeError


def exact_moments(n: int, mean, std, seed: int) -> np.ndarray:
    """n rows whose sample mean is exactly ``mean`` and sample covariance exactly diag(std^2)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    u, _, _ = np.linalg.svd(z, full_matrices=False)  # orthonormal, zero-mean columns
    return np.asarray(mean) + u * np.sqrt(n - 1) * np.asarray(std)


# --- Fréchet distance ----------------------------------------------------------------------


def test_fd_of_a_shifted_copy_is_d_m_squared():
    a = np.random.default_rng(0).normal(size=(20_000, 8))
    assert frechet_distance(a, a + 0.5) == pytest.approx(8 * 0.5**2, abs=1e-9)


def test_fd_of_two_gaussian_samples_is_d_m_squared_within_2_percent():
    # One 20,000-row pair has a relative sd of about 1.4% here (from the sample means),
    # so five independent pairs are averaged to keep a 2% tolerance far from chance.
    rng = np.random.default_rng(1)
    fds = [
        frechet_distance(rng.normal(size=(20_000, 8)), rng.normal(size=(20_000, 8)) + 0.5)
        for _ in range(5)
    ]
    assert np.mean(fds) == pytest.approx(2.0, rel=0.02)


def test_fd_of_diagonal_gaussians_matches_the_closed_form():
    mu1, s1 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 3.0])
    mu2, s2 = np.array([1.0, 1.0, 0.0, -0.5]), np.array([2.0, 1.0, 0.5, 1.0])
    a, b = exact_moments(500, mu1, s1, seed=2), exact_moments(300, mu2, s2, seed=3)
    closed = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # 1 + 0 + 4 + 1 + 1+1+0+4 = 12
    assert closed == 12.0
    assert frechet_distance(a, b) == pytest.approx(closed, abs=1e-8)


def test_fd_matches_scipy_sqrtm_on_correlated_features():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real  # the pytorch-fid formula
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_fd_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    rng = np.random.default_rng(5)
    wide = rng.normal(size=(10, 32))  # 10 rows in 32 dimensions: singular covariance
    assert frechet_distance(wide, wide) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(torch.from_numpy(wide).float(), wide) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize(
    ("a", "b", "error", "words"),
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), InputError, "at least 2 rows"),
        (np.zeros((4, 3)), np.zeros((5, 2)), ShapeError, "features per row"),
        (np.full((4, 3), np.nan), np.zeros((5, 3)), InputError, "NaN"),
        (np.zeros(4), np.zeros((5, 3)), ShapeError, "(rows, features)"),
    ],
)
def test_fd_refuses_bad_feature_sets(a, b, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        frechet_distance(a, b)


# --- precision, recall, density, coverage --------------------------------------------------


def reference_prdc(real, fake, k):
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
        return {key: float(v) for key, v in compute_prdc(real, fake, k).items()}


@pytest.mark.parametrize(("n", "m", "k", "shift"), [(300, 250, 5, 0.3), (120, 400, 3, 1.0)])
def test_prdc_matches_the_prdc_package(n, m, k, shift):
    rng = np.random.default_rng(n)
    real, fake = rng.normal(size=(n, 8)), rng.normal(size=(m, 8)) + shift
    ours, theirs = prdc(real, fake, k), reference_prdc(real, fake, k)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_prdc_is_the_same_in_small_chunks(monkeypatch):
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(90, 4)), rng.normal(size=(70, 4)) + 0.2
    whole = prdc(real, fake, 4)
    monkeypatch.setattr(metrics, "CHUNK_BYTES", 8 * 90 * 7)  # 7 rows per block
    assert prdc(real, fake, 4) == whole


def test_prdc_of_two_samples_of_one_gaussian_has_density_1_and_known_coverage():
    n = m = 2000
    k = 5
    theory = 1 - np.prod([(n - i) / (n + m - i) for i in range(1, k + 1)])
    assert theory == pytest.approx(0.969, abs=5e-4)
    rng = np.random.default_rng(7)
    # Three independent pairs: one pair's coverage has sd about 0.004.
    runs = [prdc(rng.normal(size=(n, 8)), rng.normal(size=(m, 8)), k) for _ in range(3)]
    assert np.mean([r["density"] for r in runs]) == pytest.approx(1.0, abs=0.06)
    assert np.mean([r["coverage"] for r in runs]) == pytest.approx(theory, abs=0.01)


def test_prdc_of_far_disjoint_clusters_is_zero():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 100.0
    assert prdc(real, fake, 5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_precision_is_1_when_fake_is_a_subset_of_real():
    real = np.random.default_rng(9).normal(size=(200, 5))
    assert prdc(real, real[::3], 5)["precision"] == 1.0


def test_prdc_of_a_set_with_itself_has_precision_recall_coverage_1():
    x = np.random.default_rng(10).normal(size=(150, 6))
    out = prdc(x, x, 5)
    assert (out["precision"], out["recall"], out["coverage"]) == (1.0, 1.0, 1.0)


def test_prdc_refuses_k_not_below_the_number_of_rows():
    x = np.zeros((5, 2)) + np.arange(5)[:, None]
    with pytest.raises(InputError, match="k = 5 needs"):
        prdc(x, x, 5)


# --- near-duplicate rate -------------------------------------------------------------------


def test_near_duplicate_rate_by_hand():
    shots = np.array([[0.0], [1.0], [3.0]])  # nearest-shot distances 1, 1, 2: median 1
    fake = np.array([[0.4], [2.0], [5.0], [2.9]])  # nearest shot 0.4, 1.0, 2.0, 0.1
    assert near_duplicate_rate(fake, shots) == 0.5


def test_planted_copies_are_near_duplicates_and_far_points_are_not():
    rng = np.random.default_rng(11)
    shots = rng.normal(size=(8, 16))
    copies = np.repeat(shots, 5, axis=0) + 1e-6 * rng.normal(size=(40, 16))
    assert near_duplicate_rate(copies, shots) == 1.0
    assert near_duplicate_rate(rng.normal(size=(40, 16)) + 50.0, shots) == 0.0


def test_near_duplicate_rate_needs_two_shots():
    with pytest.raises(InputError, match="shots needs at least 2 rows"):
        near_duplicate_rate(np.zeros((3, 2)), np.zeros((1, 2)))


# --- per-class and pooled report -----------------------------------------------------------


def test_fidelity_report_per_class_pooled_and_baseline():
    rng = np.random.default_rng(12)
    centres = np.array([[0.0] * 4, [10.0] * 4])
    real_y, fake_y, shot_y = np.repeat([0, 1], [30, 3]), np.repeat([0, 1], 20), np.repeat([0, 1], 4)
    real = centres[real_y] + rng.normal(size=(33, 4))
    fake = centres[fake_y] + rng.normal(size=(40, 4))
    shots = centres[shot_y] + rng.normal(size=(8, 4))
    report = fidelity_report(real, real_y, fake, fake_y, shots, shot_y, k=5)

    pooled = report["pooled"]
    assert pooled["fd"] == frechet_distance(real, fake)
    assert {key: pooled[key] for key in ("precision", "recall", "density", "coverage")} == prdc(
        real, fake, 5
    )
    assert pooled["near_duplicate_rate"] == near_duplicate_rate(fake, shots)
    low, high = pooled["near_duplicate_ci95"]
    assert low <= pooled["near_duplicate_rate"] <= high
    assert (pooled["n_real"], pooled["n_fake"], pooled["n_shots"]) == (33, 40, 8)

    one = report["per_class"]["1"]  # three real rows: k clamped to 2
    assert one["k"] == 2
    assert one["fd"] == frechet_distance(real[real_y == 1], fake[fake_y == 1])
    assert one["coverage"] == prdc(real[real_y == 1], fake[fake_y == 1], 2)["coverage"]
    assert report["per_class"]["0"]["k"] == 5

    base = report["baseline"]["pooled"]
    assert base["fd"] == frechet_distance(real, shots)
    assert base["k"] == 5 and base["n_fake"] == 8
    assert report["baseline"]["per_class"]["0"]["k"] == 3  # 4 shots per class: k = 4 - 1


def test_fidelity_report_refuses_a_class_with_one_synthetic_row():
    x = np.random.default_rng(13).normal(size=(6, 2))
    with pytest.raises(InputError, match="class 1 has 1 synthetic rows"):
        fidelity_report(x, np.array([0, 0, 0, 1, 1, 1]), x[:4], np.array([0, 0, 0, 1]))


def test_anchored_rate_finds_images_near_their_own_sources():
    from lucidml.datagen.metrics import anchored_rate

    shots = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    # each image sits next to its first source
    fake = shots[[0, 1, 2, 3]] + 0.1
    rate, chance = anchored_rate(fake, [(0, 1), (1, 2), (2, 3), (3, 0)], shots)
    assert rate == 1.0 and chance == 0.5
    # next to a shot that is not one of its sources
    rate, _ = anchored_rate(fake, [(1, 2), (2, 3), (3, 0), (0, 1)], shots)
    assert rate == 0.0
