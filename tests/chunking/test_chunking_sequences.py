import numpy as np
import pytest

from lucidml.chunking import sequences as s
from lucidml.errors import InputError


def test_one_chunk_parse_length_is_fillers_plus_chunks():
    seq = s.one_chunk(n_repeats=200, seed=3)
    n_e, n_abcd = seq.symbols.count("E"), seq.symbols.count("ABCD")
    assert n_abcd == 200
    assert s.true_parse_length(seq) == n_e + n_abcd


def test_spans_tile_the_sequence_with_true_words():
    for regime in s.REGIMES:
        kw = {"n_symbols": 5000} if regime == "hierarchy" else {}
        seq = s.generate(regime, seed=1, **kw)
        assert seq.spans[0][0] == 0 and seq.spans[-1][1] == len(seq)
        assert all(prev[1] == nxt[0] for prev, nxt in zip(seq.spans, seq.spans[1:], strict=False))
        whole = seq.spans[:-1]  # the last word may be cut at n_symbols
        assert all(seq.symbols[a:b] in seq.vocabulary for a, b in whole)


def test_greedy_longest_match_takes_the_longest_word():
    # the reference's parser returned the last match; a true longest match gives ABC + AB
    assert s.greedy_parse("ABCAB", ["A", "B", "AB", "ABC"]) == [("A", "B", "C"), ("A", "B")]
    assert s.true_parse_length("ABCAB", ["A", "B", "AB", "ABC"]) == 2
    # symbols outside the vocabulary fall back to singletons
    assert s.greedy_parse("XAB", ["AB"]) == [("X",), ("A", "B")]


def test_hierarchy_without_levels_parses_to_single_symbols():
    seq = s.hierarchy(n_symbols=3000, n_hierarchy=0, seed=0)
    assert len(seq) == 3000
    assert s.true_parse_length(seq) == 3000


def test_parse_length_falls_as_the_hierarchy_grows():
    g = [
        np.mean(
            [
                s.true_parse_length(s.hierarchy(n_symbols=5000, n_hierarchy=n, seed=k))
                for k in range(3)
            ]
        )
        for n in (0, 10, 35)
    ]
    assert g[0] > g[1] > g[2]


def test_hierarchy_words_are_concatenations_of_earlier_words():
    vocab = s.hierarchy_vocabulary(12, np.random.default_rng(0))
    assert vocab[:4] == list("ABCD") and len(vocab) == 16
    for i, w in enumerate(vocab[4:], start=4):
        assert any(w == u + v for u in vocab[:i] for v in vocab[:i])


def test_probabilistic_regime_draws_words_at_their_rates():
    seq = s.probabilistic_chunks(n_draws=20000, seed=0)
    words = [seq.symbols[a:b] for a, b in seq.spans]
    drawn = words[0::2]  # every draw is followed by one filler
    assert all(w == "E" for w in words[1::2])
    assert np.mean([w == "E" for w in drawn]) == pytest.approx(0.7, abs=0.02)
    assert np.mean([w == "CDAB" for w in drawn]) == pytest.approx(0.1, abs=0.01)


def test_unknown_regime_is_a_clear_error():
    with pytest.raises(InputError, match="unknown regime 'r9'"):
        s.generate("r9")
