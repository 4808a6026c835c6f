import numpy as np
import pytest

from lucidml.chunking import dsc, sequences
from lucidml.errors import ShapeError


def test_alternating_trajectory_halves_the_parse_every_round():
    states = [("x",), ("y",)] * 256
    d = dsc.learn_dictionary(states, n_rounds=6, merges_per_round=5, min_freq=10)
    assert [h["parse_length"] for h in d.history] == [256, 128, 64, 32, 16, 8]
    assert d.parse(states) == [tuple(states[:64])] * 8


def test_planted_levels_come_back_sorted():
    rng = np.random.default_rng(0)
    levels = np.array([-2.0, -1.0, 0.0, 1.5, 3.0])
    truth = rng.integers(0, 5, size=(600, 3))
    H = levels[truth] + rng.normal(scale=0.05, size=truth.shape)
    disc = dsc.discretize(H, n_bins=5)
    assert disc.centers.shape == (3, 5)
    np.testing.assert_allclose(disc.centers, np.tile(levels, (3, 1)), atol=0.02)
    np.testing.assert_array_equal(disc.levels, truth)
    # a state id is a distinct tuple of levels
    assert disc.codes.shape == (600,)
    assert disc.n_states == len({tuple(r) for r in truth})
    assert [disc.states[c] for c in disc.codes[:5]] == [tuple(r) for r in truth[:5]]
    # new activity is read with the same centres
    assert disc.encode(levels[truth[:4]] + 0.1) == [tuple(r) for r in truth[:4]]


def test_discretize_handles_neurons_with_few_values_and_checks_shape():
    H = np.stack([np.r_[np.zeros(10), np.ones(10)], np.arange(20.0)], axis=1)
    disc = dsc.discretize(H, n_bins=5)
    assert set(disc.levels[:, 0]) == {0, 1}
    assert disc.centers.shape == (2, 5)
    with pytest.raises(ShapeError):
        dsc.discretize(np.zeros(5))


def test_transport_writes_the_level_centres():
    H = np.array([[0.0, 10.0], [1.0, 20.0], [0.0, 20.0], [1.0, 10.0]])
    disc = dsc.discretize(H, n_bins=2)
    np.testing.assert_allclose(disc.transport((1, 0)), [1.0, 10.0])
    np.testing.assert_allclose(disc.transport(disc.codes[1]), [1.0, 20.0])


def test_lookup_decoder_counts_unseen_states_as_errors():
    states = ["s1", "s1", "s2", "s1", "s2", "s3"]
    symbols = ["A", "A", "B", "C", "B", "D"]
    out = dsc.decode_accuracy(states, symbols, train_steps=3)
    # test part: s1 -> A (true C, wrong), s2 -> B (right), s3 unseen (wrong)
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["coverage"] == pytest.approx(2 / 3)


def test_dictionary_recovers_planted_chunks():
    seq = sequences.several_chunks(n_words=400, seed=0)
    d = dsc.learn_dictionary(list(seq.symbols))
    for word in ("ABCD", "GHI", "JKLMN"):
        assert tuple(word) in d.chunks
    assert len(d.parse(list(seq.symbols))) < len(seq)


def test_boundary_scores_against_planted_spans():
    parse = [("A", "B"), ("C",), ("D", "E")]
    spans = [(0, 2), (2, 4), (4, 5)]
    # found inner boundaries {2, 3}, true inner boundaries {2, 4}
    assert dsc.boundary_scores(parse, spans) == {"precision": 0.5, "recall": 0.5}
