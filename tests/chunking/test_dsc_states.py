"""DSC's association merge rule, and the planted chunks recovered from trained RNN states."""

import json
from math import comb

import pytest

from lucidml.chunking import dsc
from lucidml.cli import main

# "ab" then a run of 1, 2, 3, 4 fillers x, ten times: 180 units, a and b 40 each, x 100
FILLER_RUNS = [s for _ in range(10) for n in (1, 2, 3, 4) for s in ["a", "b", *"x" * n]]


def test_association_numbers_by_hand():
    # xx: 60 pairs, expected 100*100/180 = 55.6, ratio 1.08; ab: 40 pairs, expected
    # 40*40/180 = 8.9, ratio 4.5; p = P(X >= 40), X ~ Binomial(179, 40*40/180^2)
    ratio, p = dsc.pair_association([60, 40], [100, 40], [100, 40], 180)
    assert ratio[0] == pytest.approx(60 * 180 / 100**2)
    assert ratio[1] == pytest.approx(4.5)
    q = 1600 / 180**2
    tail = sum(comb(179, k) * q**k * (1 - q) ** (179 - k) for k in range(40, 180))
    assert p[1] == pytest.approx(tail, rel=1e-9)
    assert p[0] > 0.1 > 1e-12 > p[1]


def test_frequent_but_independent_filler_pair_is_not_merged():
    assert len(FILLER_RUNS) == 180
    freq = dsc.learn_dictionary(FILLER_RUNS, n_rounds=1, merges_per_round=5, min_freq=10)
    # the frequency rule takes xx (60) first, then ab, bx (40) and xa (39)
    assert freq.history[0]["added"] == [("x", "x"), ("a", "b"), ("b", "x"), ("x", "a")]
    assoc = dsc.learn_dictionary(
        FILLER_RUNS, n_rounds=6, merges_per_round=5, min_freq=10, rule="association"
    )
    # round 1: only ab (ratio 4.5); bx and xa are 40/(40*100/180) = 1.8 and 1.76 < 2.
    # round 2 over ab (40) and x (100) in 140 units: (ab, x) 40/28.6 = 1.4, (x, ab)
    # 39/28.6, (x, x) 60/71.4: nothing is associated, so it stops
    assert assoc.history == [
        {"round": 1, "parse_length": 140, "added": [("a", "b")]},
        {"round": 2, "parse_length": 140, "added": []},
    ]
    assert assoc.chunks == [("a",), ("b",), ("x",), ("a", "b")]


def test_association_stops_on_a_single_repeated_unit_where_frequency_keeps_doubling():
    states = [("x",), ("y",)] * 256
    freq = dsc.learn_dictionary(states, n_rounds=6, merges_per_round=5, min_freq=10)
    assert [h["parse_length"] for h in freq.history] == [256, 128, 64, 32, 16, 8]
    assoc = dsc.learn_dictionary(states, 6, 5, 10, rule="association")
    # xy: 256 pairs against 256*256/512 = 128 expected; then (xy, xy) is 255 against 256
    assert [h["parse_length"] for h in assoc.history] == [256, 256]


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_unknown_merge_rule_is_one_clear_error(tmp_path, capsys):
    from lucidml.errors import InputError

    with pytest.raises(InputError, match="unknown merge rule 'bpe'"):
        dsc.learn_dictionary(["a", "b"], rule="bpe")
    out = tmp_path / "bad"
    code, err = run(["chunking", "rnn", "--merge-rule", "bpe", "--out", str(out)], capsys)
    assert code == 2 and "merge_rule" in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("regime", "planted"),
    [("one_chunk", ["ABCD"]), ("probabilistic_chunks", ["CDAB", "AB", "ABCD"])],
)
def test_cli_defaults_recover_the_planted_chunks_from_trained_rnn_states(
    tmp_path, capsys, regime, planted
):
    out = tmp_path / regime
    code, err = run(["chunking", "rnn", "--regime", regime, "--out", str(out), "-q"], capsys)
    assert code == 0, err
    r = json.loads((out / "results.json").read_text())
    assert r["merge_rule"] == "association" and r["sequence_length"] == 10_000
    # every planted word is a learnt chunk of population states of its own
    assert r["true_chunks"] == planted
    assert r["true_chunks_exact"] == planted
    # and the parse carries some of their planted occurrences as exactly that word
    assert all(r["true_chunks_parsed"][w] > 0 for w in planted)
    # the yardstick: the same states in shuffled order give no chunk at all
    assert r["shuffled_true_chunks_exact"] == []
