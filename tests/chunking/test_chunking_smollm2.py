"""PA and grafting on the real SmolLM2-135M-Instruct (slow: loads the model)."""

import pytest

from lucidml.chunking import api
from lucidml.chunking.config import PAConfig
from lucidml.chunking.corpus import PROMPTS, everyday_sentences
from lucidml.chunking.graft import occurrence_effect

pytestmark = pytest.mark.slow
LAYERS = [0, *range(2, 10), 14, 20, 26]


@pytest.fixture(scope="module")
def coffee(smollm2):
    model, tok = smollm2
    fit, held = api.split_text(" ".join(everyday_sentences(500, seed=0)), 0.3)
    cfg = PAConfig(word="coffee", steps=[0], layers=LAYERS)
    return api.pa_analysis(model, tok, cfg, fit, held)


def test_pa_detects_a_frequent_word_in_held_out_sentences(coffee):
    _, rows = coffee
    assert all(r["n_heldout"] >= 5 for r in rows)
    exact = next(r for r in rows if r["layer"] == 0)
    assert exact["tpr"] == 1.0 and exact["fpr"] == 0.0  # token embeddings are exact
    best = api.best_layer(rows)  # contextual layers only
    assert best["layer"] > 0
    assert best["tpr"] >= 0.7 and best["fpr"] <= 0.05


def test_grafting_raises_the_word_rate_above_the_control(smollm2, coffee):
    model, tok = smollm2
    bank, _ = coffee
    templates = {ell: bank[("coffee", 0, ell)] for ell in range(2, 10)}
    effect = occurrence_effect(model, tok, PROMPTS, "coffee", templates, seed=0, max_new_tokens=40)
    assert effect.graft_rate > effect.control_rate
