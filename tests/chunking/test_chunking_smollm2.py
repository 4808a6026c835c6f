"""PA and grafting on the real SmolLM2-135M-Instruct (slow: loads the model)."""

import pytest

from lucidml.chunking import api
from lucidml.chunking.config import PAConfig
from lucidml.chunking.corpus import TEST_SENTENCES, everyday_sentences

pytestmark = pytest.mark.slow
LAYERS = [0, 3, 6]


@pytest.fixture(scope="module")
def coffee(smollm2):
    model, tok = smollm2
    fit, val = api.split_text(" ".join(everyday_sentences(500, seed=0)), 0.3)
    cfg = PAConfig(word="coffee", steps=[0], layers=LAYERS)
    return api.pa_analysis(model, tok, cfg, fit, val, TEST_SENTENCES)


def test_pa_on_the_separate_test_text_sits_next_to_token_identity(coffee):
    _, rows, baselines = coffee
    assert all(r["n_pos"] >= 10 for r in rows)  # 13 "coffee"s; "coffeehouse" is not one
    exact = next(r for r in rows if r["layer"] == 0)
    ident = baselines["token_identity"][0]
    # index 0 is the token embedding: PA there is token identity, detection for detection
    assert (exact["tp"], exact["fp"]) == (ident["tp"], ident["fp"])
    assert ident["tpr"] >= 0.9
    best = api.best_layer(rows)  # chosen on validation, among contextual layers
    assert best["layer"] > 0 and best["val_tpr"] >= 0.9
    assert best["tpr_low"] <= best["tpr"] <= best["tpr_high"]
    assert {(r["step"], r["layer"]) for r in baselines["logistic_probe"]} == {
        (0, ell) for ell in LAYERS
    }


def test_smollm2_labels_respect_word_boundaries(smollm2):
    import numpy as np

    from lucidml.chunking import pa
    from lucidml.chunking.collect import encode_sentences

    _, tok = smollm2
    sents = ["I ate a hotdog and a dog barked.", "Grain and Drain got rain.", "A coffeehouse."]
    enc = encode_sentences(tok, sents)
    ids = np.concatenate([np.array(e) for e in enc])
    sid = np.concatenate([np.full(len(e), i) for i, e in enumerate(enc)])
    pieces = tok.convert_ids_to_tokens(ids.tolist())
    assert "dog" in pieces and "rain" in pieces and "house" in pieces  # the traps exist
    assert [pieces[i] for i in pa.word_positions(tok, ids, sid, "dog")] == ["\u0120dog"]
    assert [pieces[i] for i in pa.word_positions(tok, ids, sid, "rain")] == ["\u0120rain"]
    assert len(pa.word_positions(tok, ids, sid, "coffee")) == 0
