"""SAE scores against their definitions, naive loops and hand-computed answers."""

import itertools

import numpy as np
import pytest
import torch

from lucidml.errors import InputError, ShapeError
from lucidml.sae.metrics import (
    MonosemanticityAccumulator,
    explained_variance,
    firing_counts,
    group_means,
    hierarchy_depth,
    lca_depth,
    monosemanticity,
    monosemanticity_loss,
    monosemanticity_pairwise,
    reconstruction,
    top_activating,
    uniqueness,
)


def _ms_data(n=400, k=50, e=32, seed=0):
    rng = np.random.default_rng(seed)
    acts = np.maximum(rng.standard_normal((n, k)), 0) * rng.random(k) * 5
    return acts, rng.standard_normal((n, e))


def _mean_pairwise_cosine(emb):
    p = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return (p @ p.T)[np.triu_indices(len(p), 1)].mean()


# ---------------------------------------------------------------- MonoSemanticity


def test_closed_form_equals_pairwise_definition():
    acts, emb = _ms_data()
    closed, pairwise = monosemanticity(acts, emb), monosemanticity_pairwise(acts, emb, 128)
    assert not np.isnan(closed).any()
    np.testing.assert_allclose(closed, pairwise, rtol=0, atol=1e-6)


def test_identical_embeddings_score_one():
    acts, _ = _ms_data(n=100, k=5)
    emb = np.tile(np.random.default_rng(1).standard_normal(16), (100, 1))
    np.testing.assert_allclose(monosemanticity(acts, emb), 1.0, atol=1e-9)


def test_dense_uniform_activations_give_mean_pairwise_cosine():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((400, 32))
    ms = monosemanticity(rng.random((400, 20)), emb)
    assert np.abs(ms - _mean_pairwise_cosine(emb)).max() < 0.005


def test_constant_and_single_image_latents_are_nan():
    acts, emb = _ms_data(n=60, k=4)
    acts[:, 0] = 2.5
    acts[:, 1] = 0
    acts[7, 1] = 1
    for ms in (monosemanticity(acts, emb), monosemanticity_pairwise(acts, emb)):
        assert np.isnan(ms[:2]).all() and not np.isnan(ms[2:]).any()


def test_invariant_to_positive_affine_rescaling_and_shift():
    acts, emb = _ms_data(n=200, k=6)
    rng = np.random.default_rng(2)
    base = monosemanticity(acts, emb)
    np.testing.assert_allclose(
        monosemanticity(acts * rng.uniform(0.1, 10, 6) + rng.normal(0, 5, 6), emb), base, atol=1e-9
    )
    np.testing.assert_allclose(monosemanticity(acts + 100, emb), base, atol=1e-9)


def test_accumulator_over_three_chunks_equals_in_memory():
    acts, emb = _ms_data(n=300, k=10)
    acc = MonosemanticityAccumulator()
    cuts = [(0, 70), (70, 210), (210, 300)]
    for s, e in cuts:
        acc.observe_range(torch.as_tensor(acts[s:e]))
    for s, e in cuts:
        acc.add(acts[s:e], emb[s:e])
    np.testing.assert_allclose(acc.result(), monosemanticity(acts, emb), rtol=0, atol=1e-12)


def test_accumulator_rejects_a_second_pass_of_other_length():
    acts, emb = _ms_data(n=50, k=3)
    acc = MonosemanticityAccumulator()
    acc.observe_range(acts)
    acc.add(acts[:40], emb[:40])
    with pytest.raises(InputError):
        acc.result()


def test_loss_equals_closed_form_mean_and_has_gradients():
    acts, emb = _ms_data(n=120, k=8)
    acts[:, 0] = 1.0  # dead: left out of the mean
    a = torch.tensor(acts, requires_grad=True)
    loss = monosemanticity_loss(a, torch.tensor(emb))
    assert loss.item() == pytest.approx(np.nanmean(monosemanticity(acts, emb)), abs=1e-10)
    loss.backward()
    assert torch.isfinite(a.grad).all() and a.grad[:, 1:].abs().sum() > 0
    assert a.grad[:, 0].abs().sum() == 0


def test_ms_input_errors():
    acts, emb = _ms_data(n=20, k=3)
    with pytest.raises(ShapeError, match="rows"):
        monosemanticity(acts, emb[:19])
    with pytest.raises(ShapeError):
        monosemanticity_loss(torch.tensor(acts), torch.tensor(emb[:19]))
    bad = acts.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        monosemanticity(bad, emb)
    zero = emb.copy()
    zero[4] = 0
    with pytest.raises(InputError, match="zero norm"):
        monosemanticity(acts, zero)


# ---------------------------------------------------------------- top images, uniqueness, depth


def _reference_top(acts, k):
    idx = np.argsort(-acts, axis=0, kind="stable")[:k].T  # stable: ties keep index order
    return idx, np.take_along_axis(acts.T, idx, 1)


def test_streaming_top_k_equals_full_sort_with_ties_to_lower_index():
    rng = np.random.default_rng(3)
    acts = rng.integers(0, 4, (500, 12)).astype(np.float32)  # many ties
    acts[:, 0] = 0  # dead: the first k images
    chunks = [(s, torch.as_tensor(acts[s : s + 37])) for s in range(0, 500, 37)]
    ref_idx, ref_vals = _reference_top(acts, 16)
    for got in (top_activating(iter(chunks), 16), top_activating(acts, 16)):
        np.testing.assert_array_equal(got[0], ref_idx)
        np.testing.assert_array_equal(got[1], ref_vals)
    np.testing.assert_array_equal(ref_idx[0], np.arange(16))


def test_firing_counts_mark_dead_and_sparse():
    acts = np.zeros((30, 3))
    acts[:, 1] = 1
    acts[:4, 2] = 0.5
    chunks = [(s, acts[s : s + 7]) for s in range(0, 30, 7)]
    np.testing.assert_array_equal(firing_counts(iter(chunks)), [0, 30, 4])
    np.testing.assert_array_equal(firing_counts(acts), [0, 30, 4])


def test_sparse_jaccard_equals_naive_loop():
    rng = np.random.default_rng(4)
    top = np.stack([rng.choice(40, 8, replace=False) for _ in range(30)])
    valid = rng.random(30) > 0.2
    got = uniqueness(top, valid=valid)
    sets = [set(t) for t, v in zip(top, valid, strict=True) if v]
    js = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
    assert list(got) == [i / 10 for i in range(10)]
    for t, share in got.items():
        assert share == pytest.approx(np.mean([j > t for j in js]), abs=1e-12)


def test_lca_depth():
    assert lca_depth(["a", "b", "c"], ["a", "b", "d"]) == 2
    assert lca_depth("a/b/c", "a/b/c") == 3
    assert lca_depth("a/b", "x/b") == 0


def test_hierarchy_depth_of_one_species_and_of_mixed_latents():
    paths = ["animal/bird/robin"] * 4 + ["animal/bird/crow"] * 2 + ["plant/tree/oak"] * 2
    top = np.array([[0, 1, 2, 3], [0, 1, 4, 5], [0, 4, 6, 7], [0, 1, 2, 3]])
    depth = hierarchy_depth(top, paths, valid=[True, True, True, False])
    # latent 1: pairs robin-robin (3), crow-crow (3), four robin-crow (2): mean 2.33 -> 2
    # latent 2: robin-crow 2, oak-oak 3, four bird-oak 0: mean 0.83 -> 1
    np.testing.assert_array_equal(depth[:3], [3, 2, 1])
    assert np.isnan(depth[3])


def test_group_means():
    values = [1.0, 3.0, np.nan, 4.0, 6.0, np.nan]
    assert group_means(values, [2, 3, 1])[:2] == [2.0, 5.0]
    assert np.isnan(group_means(values, [2, 3, 1])[2])
    with pytest.raises(ShapeError):
        group_means(values, [2, 2])


# ---------------------------------------------------------------- reconstruction


class _LinearSAE:
    def __init__(self, enc, dec):
        self.enc, self.dec = enc, dec

    def encode(self, x):
        return x @ self.enc

    def decode(self, f):
        return f @ self.dec


class _Store:
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def iter_chunks(self, rows):
        for s in range(0, len(self.x), rows):
            yield s, self.x[s : s + rows]


def _recon_data():
    x = torch.randn(257, 6) + torch.arange(6.0)
    x[:, 2] = -x[:, 2].abs()  # never positive: a dead latent under the identity SAE
    return x


def test_identity_sae_reconstructs_exactly():
    x = _recon_data()
    eye = torch.eye(6)
    out = reconstruction(_LinearSAE(eye, eye), _Store(x), batch_size=50)
    assert out["mse"] == 0 and out["fve"] == pytest.approx(1.0) and out["n"] == 257
    assert out["l0"] == pytest.approx((x > 0).sum().item() / 257)
    assert out["dead_fraction"] == pytest.approx(1 / 6)


def test_zero_decoder_explains_nothing():
    x = _recon_data()
    out = reconstruction(_LinearSAE(torch.eye(6), torch.zeros(6, 6)), x, batch_size=64)
    assert out["fve"] == pytest.approx(0.0, abs=1e-12)
    assert out["mse"] == pytest.approx((x.double() ** 2).sum(1).mean().item())


def test_streaming_fve_equals_explained_variance():
    # A large offset, under which naive sum-of-squares streaming would lose digits.
    x = _recon_data().double() * 100 + 1e4
    enc = torch.randn(6, 12, dtype=torch.float64)
    sae = _LinearSAE(enc, torch.linalg.pinv(enc) + 0.01 * torch.randn(12, 6, dtype=torch.float64))
    out = reconstruction(sae, x, batch_size=17)
    x_hat = sae.decode(sae.encode(x))
    assert 0.5 < out["fve"] < 1
    assert out["fve"] == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert out["mse"] == pytest.approx(((x - x_hat) ** 2).sum(1).mean().item(), rel=1e-9)


def test_explained_variance_ignores_offsets():
    x = np.random.default_rng(5).standard_normal((100, 4))
    assert explained_variance(x, x + 3) == pytest.approx(1.0)
    assert explained_variance(x, np.zeros_like(x)) == pytest.approx(0.0)
    with pytest.raises(ShapeError):
        explained_variance(x, x[:, :3])
