import json

import numpy as np
import pytest
import torch
from chunking_helpers import CHUNKS, byte_bpe_tokenizer, lm_states, planted_rows, train_planted_lm

from lucidml.chunking import pa
from lucidml.errors import InputError


def planted_gaussians(rng, T=2000, d=64, n_pos=50):
    H = rng.normal(size=(T, d))
    pos = np.sort(rng.choice(T, n_pos, replace=False))
    H[pos, :10] = np.linspace(-1, 1, 10) + rng.normal(scale=0.05, size=(n_pos, 10))
    return H, pos


def test_planted_gaussians_mask_is_the_planted_dims_and_nothing_else_fires():
    exact, fprs, tprs = 0, [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        H, pos = planted_gaussians(rng)
        t = pa.fit(H, pos, tau=0.2, seed=seed)
        exact += bool((t.mask.numpy() == (np.arange(64) < 10)).all())
        H2, pos2 = planted_gaussians(rng)
        m = pa.detection_metrics(t.detect(H2), pos2)
        fprs.append(m["fpr"])
        tprs.append(m["tpr"])
    assert exact / 60 >= 0.95
    assert max(fprs) == 0.0
    # theta is the max of only 5 in-sample deviations: about half the held-out hits pass
    assert 0.3 < np.mean(tprs) < 0.7


def test_fit_by_hand_on_a_tiny_matrix():
    H = np.array([[1.0, 0.0], [1.2, 5.0], [0.9, -5.0], [3.0, 0.0], [1.1, 9.0]])
    t = pa.fit(H, [0, 1, 2, 4], n_train=3, tau=0.5, seed=0)
    train = list(t.train_positions)
    mu = H[train, 0].mean()
    assert t.mask.tolist() == [True, False]  # neuron 1 strays far on the training rows
    assert t.mean.item() == pytest.approx(mu)
    assert t.theta == pytest.approx(max((H[i, 0] - mu) ** 2 for i in train), rel=1e-6)
    np.testing.assert_allclose(t.score(H), (H[:, 0] - mu) ** 2, rtol=1e-5)


def test_mask_grows_with_tolerance_and_empty_masks_are_skipped():
    rng = np.random.default_rng(0)
    H, pos = planted_gaussians(rng)
    train = pa._draw_train(pos, 5, 0)
    records = pa.sweep(H, pos, train, sorted(pa.TOLERANCES))
    sizes = [r["n_dims"] for r in records]
    assert sizes == sorted(sizes) and sizes[-1] == 64
    assert min(sizes) > 0
    assert len(records) < len(pa.TOLERANCES)  # the tiniest tolerances keep no neuron
    with pytest.raises(InputError, match="empty mask"):
        pa.fit(H, pos, tau=1e-9)


def test_steps_shift_labels_and_stay_inside_sentences():
    ids = np.array([5, 7, 9, 5, 7, 9, 5, 7])
    sent = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert pa.match_positions(ids, sent, [(7, 9)]).tolist() == [2, 5]
    assert pa.match_positions(ids, sent, [(7, 9)], step=1).tolist() == [1, 4]
    assert pa.match_positions(ids, sent, [(7, 9)], step=-1).tolist() == [3, 6]
    assert pa.match_positions(ids, sent, [(7, 9)], step=2).tolist() == [0]  # 5-2=3 is sentence 0
    # a match that would straddle a sentence boundary is not a match
    assert pa.match_positions(ids, sent, [(5, 7)]).tolist() == [1, 7]


def test_sub_tokens_label_the_last_piece_and_do_not_match_inside_other_words():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "[UNK]": 0,
        "cheese": 1,
        "##cake": 2,
        "pan": 3,
        "cake": 4,
        "i": 5,
        "like": 6,
        "Cheese": 7,
    }
    raw = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert tok("cheesecake", add_special_tokens=False)["input_ids"] == [1, 2]
    assert (1, 2) in pa.variant_ids(tok, "cheesecake") and (7, 2) in pa.variant_ids(
        tok, "cheesecake"
    )
    ids = np.array(
        tok("i like cheesecake i like pancake i like cake", add_special_tokens=False)["input_ids"]
    )
    pos = pa.word_positions(tok, ids, np.zeros(len(ids), int), "cheesecake")
    assert pos.tolist() == [3] and ids[3] == 2  # "##cake" after "cheese"; pancake gets none


def _labelled(tok, text, word):
    ids = np.array([tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]])
    pos = pa.word_positions(tok, ids, np.zeros(len(ids), int), word)
    return pos.tolist(), tok.convert_ids_to_tokens(ids.tolist())


def test_byte_level_bpe_labels_respect_word_boundaries():
    tok = byte_bpe_tokenizer(["dog", "hot", "rain", "G", "D", "coffee", "house", "and", "a"])
    pos, pieces = _labelled(tok, "hotdog and a dog", "dog")
    assert pieces[1:3] == ["hot", "dog"]  # the tokenizer does split "hotdog" as feared
    assert pos == [5] and pieces[5] == "\u0120dog"  # one "dog": the standalone one
    pos, pieces = _labelled(tok, "Grain and Drain", "rain")
    assert pieces[2] == "rain" and pos == []  # "G"+"rain", "ĠD"+"rain": no "rain"
    pos, pieces = _labelled(tok, "rain and a coffeehouse coffee.", "coffee")
    assert pieces[4:6] == ["\u0120coffee", "house"] and pos == [6]  # "coffee" before "."
    assert _labelled(tok, "rain and a coffeehouse coffee.", "rain")[0] == [1]  # text start
    assert _labelled(tok, '"dog" and a dog', "dog")[0] == [2, 6]  # after a quote mark


def test_wordpiece_continuations_do_not_end_a_word():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[CLS]": 1, "cheese": 2, "##cake": 3, "i": 4, "like": 5}
    raw = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="[CLS]")
    pos, pieces = _labelled(tok, "i like cheesecake i like cheese", "cheese")
    assert pieces[3:5] == ["cheese", "##cake"] and pos == [7]


def test_variants_are_built_from_the_whole_word():
    assert pa.word_variants("Cheesecake") == [
        "Cheesecake",
        " Cheesecake",
        "cheesecake",
        " cheesecake",
        "CHEESECAKE",
        " CHEESECAKE",
    ]


def test_sweep_auc_and_metrics_by_hand():
    assert pa.sweep_auc([0.0], [1.0]) == pytest.approx(1.0)  # a perfect detector
    assert pa.sweep_auc([0.5], [0.5]) == pytest.approx(0.5)
    assert pa.sweep_auc([0.2], [0.6]) == pytest.approx(0.5 * 0.2 * 0.6 + 0.8 * 0.8)
    m = pa.detection_metrics(np.array([1, 1, 0, 0, 1], bool), [0, 2], exclude=[4])
    assert (m["tpr"], m["fpr"], m["accuracy"]) == (0.5, 0.5, 0.5)


def test_template_bank_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    H, pos = planted_gaussians(rng)
    bank = pa.TemplateBank(info={"model": "m"})
    bank[("w", 0, 3)] = pa.fit(H, pos, seed=1)
    bank.save(tmp_path)
    back = pa.TemplateBank.load(tmp_path)
    t0, t1 = bank[("w", 0, 3)], back[("w", 0, 3)]
    assert torch.equal(t0.mask, t1.mask) and torch.allclose(t0.mean, t1.mean)
    assert (t0.theta, t0.tau) == (t1.theta, t1.tau)
    np.testing.assert_array_equal(t0.detect(H), t1.detect(H))
    assert back.info == {"model": "m"}
    with pytest.raises(InputError, match="no template"):
        back[("w", 1, 3)]


def test_pa_on_a_tiny_transformer_trained_on_planted_chunks(chunk_lm):
    model, _ = chunk_lm
    ids, hs, sid = lm_states(model, 40, seed=1)
    ids2, hs2, sid2 = lm_states(model, 40, seed=2)
    word = tuple(CHUNKS[2])  # label the chunk's last token
    pos, pos2 = pa.match_positions(ids, sid, [word]), pa.match_positions(ids2, sid2, [word])
    for layer in (0, 1):  # index 0 (embeddings) is exact; 1 is the middle of 0..2
        t = pa.fit(hs[layer], pos, n_train=5, seed=0)
        m = pa.detection_metrics(t.detect(hs2[layer]), pos2)
        assert m["tpr"] >= (1.0 if layer == 0 else 0.8)
        assert m["fpr"] <= 0.02


def test_a_template_survives_its_json_round_trip_exactly():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(200, 16, generator=g)
    pos = np.arange(0, 200, 10)
    H[pos, :4] = 2.0 + 0.01 * torch.randn(len(pos), 4, generator=g)
    t = pa.fit(H, pos, seed=0)
    back = pa.Template.from_json(json.loads(json.dumps(t.to_json())))
    assert torch.equal(back.mask, t.mask) and torch.equal(back.mean, t.mean)
    assert (back.theta, back.tau, back.n_occurrences) == (t.theta, t.tau, t.n_occurrences)
    assert np.array_equal(back.train_positions, t.train_positions)
    assert np.array_equal(back.score(H), t.score(H))


def test_validated_theta_beats_the_max_of_five_on_held_out_planted_gaussians():
    tprs_paper, tprs_val, fprs = [], [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        (H, pos), (Hv, pv), (Ht, pt) = (planted_gaussians(rng) for _ in range(3))
        paper = pa.fit(H, pos, tau=0.2, seed=seed)
        t = pa.fit_validated(H, pos, Hv, pv, seed=seed)
        assert t.mask[:10].all()  # the planted dims are always kept
        m = pa.detection_metrics(t.detect(Ht), pt)
        tprs_paper.append(pa.detection_metrics(paper.detect(Ht), pt)["tpr"])
        tprs_val.append(m["tpr"])
        fprs.append(m["fpr"])
    # theta chosen on validation lets through what the max of 5 deviations misses
    assert np.mean(tprs_val) > 0.9 > 0.7 > np.mean(tprs_paper)
    assert max(fprs) <= 0.01


def test_youden_threshold_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    t, j = pa.youden_threshold(scores, [3, 4, 1])
    assert t == pytest.approx(0.4) and j == pytest.approx(1.0)  # >= 0.4 splits them exactly
    t, j = pa.youden_threshold(scores, [0, 4])  # best cut keeps 0.9: TPR 1/2, FPR 0
    assert j == pytest.approx(0.5)
    assert pa.youden_threshold(scores, [])[0] == float("inf")


def test_baselines_by_hand():
    H = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0], [2.0, 4.0], [9.0, 9.0]])
    # rows 1, 3 labelled; row 4 excluded: (2.5, 3) - (0.5, 0)
    assert pa.mean_difference(H, [1, 3], exclude=[4]).tolist() == [2.0, 3.0]
    ident = pa.token_identity([5, 7, 5, 8], [1, 3], [7, 8, 5, 9, 7])
    assert ident.tolist() == [True, True, False, False, True]
    m = pa.rate_intervals(pa.detection_metrics(np.array([1, 1, 0, 0], bool), [0, 2]))
    from lucidml.core.metrics import wilson_interval

    assert (m["tpr_low"], m["tpr_high"]) == pytest.approx(wilson_interval(1, 2), abs=1e-4)
    assert m["n_pos"] == 2 and m["n_neg"] == 2


def test_a_logistic_probe_finds_a_planted_shift():
    rng = np.random.default_rng(0)

    def shifted():
        H = rng.normal(size=(2000, 64))
        pos = np.sort(rng.choice(2000, 50, replace=False))
        H[pos, :10] += 3.0  # linearly separable, unlike PA's planted point
        return H, pos

    (H, pos), (H2, pos2) = shifted(), shifted()
    probe = pa.logistic_probe(H, pos)
    t, _ = pa.youden_threshold(probe.decision_function(H), pos)
    m = pa.detection_metrics(probe.decision_function(H2) >= t, pos2)
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.02


@pytest.fixture(scope="module")
def stray_lm():
    """Like ``chunk_lm``, but token 31 (the middle of chunk 30 31 32) also occurs alone,
    so predicting what follows it needs its context: 32 inside the chunk, noise outside."""
    return train_planted_lm(stray=31, p_stray=0.05)[0]


def _inside_outside(model, seed: int):
    rows = planted_rows(40, 64, np.random.default_rng(seed), stray=31, p_stray=0.05)
    with torch.no_grad():
        hs = model(input_ids=rows, output_hidden_states=True).hidden_states
    flat = rows.flatten().numpy()
    inside = pa.match_positions(flat, np.repeat(np.arange(40), 64), [(30, 31)])
    outside = np.setdiff1d(np.flatnonzero(flat == 31), inside)
    return [h.reshape(-1, 64) for h in hs], inside, outside


def test_pa_tells_a_chunk_token_inside_its_chunk_from_the_same_token_outside(stray_lm):
    (hs, pos, _), (hs_v, pos_v, _) = _inside_outside(stray_lm, 1), _inside_outside(stray_lm, 2)
    hs_t, inside, outside = _inside_outside(stray_lm, 3)
    assert len(inside) >= 20 and len(outside) >= 20
    rates = {}
    for layer in (0, 1):
        t = pa.fit_validated(hs[layer], pos, hs_v[layer], pos_v, seed=0)
        detected = t.detect(hs_t[layer])
        rates[layer] = (detected[inside].mean(), detected[outside].mean())
    assert rates[0] == (1.0, 1.0)  # the token embedding cannot tell them apart
    assert rates[1][0] >= 0.8 and rates[1][1] <= 0.2  # the contextual layer can
