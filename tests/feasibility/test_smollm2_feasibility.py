"""FLM with the real SmolLM2 on the project's labelled vocabulary (slow: loads the LLM)."""

import pytest

from lucidml.feasibility import baseline_scores, ranking, score_pairs
from lucidml.feasibility.api import DEMO_PROMPTS, _split_unseen
from lucidml.feasibility.vocab import demo_vocabulary

pytestmark = pytest.mark.slow


def test_flm_ranks_held_out_pairs_above_chance_next_to_the_baseline(smollm2, tmp_path):
    vocab = demo_vocabulary()
    _, test = _split_unseen(vocab)
    # the prompt the demo chose on the validation pairs (no test pair decided it)
    prompt = DEMO_PROMPTS["no seen pairs, 8 No"]
    flm = score_pairs(
        vocab.states, vocab.objects, [], model=smollm2, vocab=vocab, device="cpu", **prompt
    )
    base = baseline_scores(vocab.states, vocab.objects, [], vocab=vocab, device="cpu")
    flm_r, base_r = ranking(flm, vocab.feasible, test), ranking(base, vocab.feasible, test)
    print(
        f"test ROC-AUC: FLM {flm_r['roc_auc']:.3f} {flm_r['roc_auc_ci95']}, "
        f"MiniLM CompCos {base_r['roc_auc']:.3f} {base_r['roc_auc_ci95']}"
    )
    assert flm_r["roc_auc"] >= 0.6
    assert base_r["roc_auc"] >= 0.6
    assert flm_r["n_pairs"] == base_r["n_pairs"] == int(test.sum())
