import json

import numpy as np
import pytest
import torch
from chunking_helpers import CHUNKS, lm_states

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
