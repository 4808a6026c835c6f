"""Per-image pooling over a store and the scores built on it, against direct formulas."""

import numpy as np
import pytest
import torch

from lucidml.errors import InputError
from lucidml.sae import metrics
from lucidml.sae.images import digit_path
from lucidml.sae.scoring import image_groups, pooled_chunks, random_set_depth, score_latents
from lucidml.sae.store import ActivationStore


def _store(n_images=30, rows_per_image=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_images * rows_per_image, d, generator=g)
    image_index = np.repeat(np.arange(n_images), rows_per_image)
    token = np.tile(np.arange(rows_per_image), n_images)
    ids = [f"img{i}" for i in range(n_images)]
    return ActivationStore.from_tensor(x, ids, image_index, token), x


def test_pooled_chunks_average_each_images_rows_whatever_the_chunk_size():
    store, x = _store()
    direct = x.view(30, 3, -1).mean(1)
    for chunk_rows in (1, 7, 1000):
        parts = list(pooled_chunks(store, lambda r: r, chunk_rows))
        images = np.concatenate([p[0] for p in parts])
        pooled = torch.cat([p[1] for p in parts])
        assert (images == np.arange(30)).all()
        assert torch.allclose(pooled, direct, atol=1e-6)
        peak = torch.cat([p[2] for p in parts])
        assert torch.allclose(peak, x.view(30, 3, -1).amax(1))


def test_rows_of_an_image_must_be_contiguous():
    with pytest.raises(InputError, match="contiguous"):
        image_groups(np.array([0, 1, 0]))


def test_score_latents_equals_the_dense_computation():
    store, x = _store(n_images=40)
    emb = np.random.default_rng(1).normal(size=(40, 5))
    s = score_latents(store, torch.relu, {"e": emb, "twice": 2 * emb}, hai_k=4, chunk_rows=10)
    pooled = torch.relu(x).view(40, 3, -1).mean(1).numpy()
    np.testing.assert_allclose(s.ms["e"], metrics.monosemanticity(pooled, emb), atol=1e-9)
    np.testing.assert_allclose(s.ms["twice"], s.ms["e"], atol=1e-9)  # cosines ignore scale
    idx, _ = metrics.top_activating(pooled, k=4)
    assert (s.top_images == idx).all()
    assert (s.firing == (pooled > 0).sum(0)).all()


def test_random_sets_of_a_balanced_taxonomy_have_the_expected_depth():
    # 10 digits equally often: two random images share parity w.p. ~1/2, so depth ~0.5-1
    paths = [digit_path(i % 10) for i in range(200)]
    r = random_set_depth(paths, k=16, n_sets=200)
    assert 0.4 < r["mean"] < 1.2
    assert digit_path(8) == "even/round/eight" and digit_path(7) == "odd/straight/seven"
