import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from lucidml.chunking import ucd
from lucidml.errors import InputError


def clusters_on_sphere(seed: int, k: int = 6, d: int = 16, n: int = 600, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(k, d))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    return mu[y] + rng.normal(scale=noise, size=(n, d)), y, mu


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_planted_clusters_are_recovered_with_dead_chunk_reseeding(seed):
    H, y, _ = clusters_on_sphere(seed)
    m = ucd.fit(H, 6, seed=seed, epochs=30)
    assert adjusted_rand_score(y, m.assignments) >= 0.9
    assert m.dead_per_epoch[-1] == 0


def test_without_reseeding_a_dead_chunk_can_merge_two_clusters():
    # seed 0 starts with one chunk that never wins: two planted clusters share a chunk
    H, y, _ = clusters_on_sphere(0)
    m = ucd.fit(H, 6, seed=0, reseed_dead=False, epochs=30)
    assert m.dead_per_epoch[-1] >= 1 and len(m.live) == 5
    assert adjusted_rand_score(y, m.assignments) < 0.9


def test_loss_is_minus_mean_best_cosine():
    H, _, mu = clusters_on_sphere(1, noise=0.0)
    m = ucd.ChunkModel(torch.tensor(mu, dtype=torch.float32), np.zeros(1), [], [])
    assert m.loss(H) == pytest.approx(-1.0, abs=1e-5)
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    m2 = ucd.ChunkModel(torch.tensor([[1.0, 1.0]]) / 2**0.5, np.zeros(1), [], [])
    assert m2.loss(X) == pytest.approx(-(2**-0.5))
    assert m2.assign(X).tolist() == [0, 0]


def test_many_chunks_report_dead_ones_and_bad_sizes_are_errors():
    H, y, _ = clusters_on_sphere(3, k=3, n=300)
    m = ucd.fit(H, 12, seed=0, epochs=30, reseed_dead=False)
    # three winners absorb the clusters; the others are reported dead
    assert m.dead_per_epoch[-1] >= 8 and len(m.live) == 3
    assert adjusted_rand_score(y, m.assignments) >= 0.9
    with pytest.raises(InputError, match="n_chunks"):
        ucd.fit(H, 1000)


def test_one_chunk_baseline_is_the_mean_direction():
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = ucd.one_chunk(X)
    torch.testing.assert_close(c, torch.tensor([[2**-0.5, 2**-0.5]]))
    assert ucd.state_losses(X, c) == pytest.approx([-(2**-0.5)] * 2)


def test_kmeans_baseline_recovers_planted_clusters_and_beats_one_chunk():
    H, y, _ = clusters_on_sphere(0)
    H2, _, _ = clusters_on_sphere(0)  # same centres, fresh noise
    centers = ucd.kmeans_chunks(H, 6, seed=0)
    assert adjusted_rand_score(y, ucd.best_cosine(ucd._unit_rows(H), centers)[1].numpy()) >= 0.9
    km, one = ucd.state_losses(H2, centers).mean(), ucd.state_losses(H2, ucd.one_chunk(H)).mean()
    assert km < -0.9 and one > -0.6  # six directions explain what one cannot (cos ~0.93 noise)
    with pytest.raises(InputError, match="n_chunks"):
        ucd.kmeans_chunks(H, 10_000)
