import numpy as np
import pytest
import torch
from chunking_helpers import lm_states, planted_rows

from lucidml.chunking import pa
from lucidml.chunking.graft import freeze, graft, mentions, occurrence_effect, paired_stats
from lucidml.core.hooks import capture, resid_module
from lucidml.errors import InputError
from lucidml.testing import tiny_llama


def own_values(h: torch.Tensor) -> pa.Template:
    """A full-mask template holding exactly ``h`` (d,)."""
    return pa.Template(
        mask=torch.ones(h.numel(), dtype=torch.bool),
        mean=h.clone(),
        theta=0.0,
        tau=100.0,
        train_positions=np.array([0]),
        n_occurrences=1,
    )


@pytest.fixture(scope="module")
def llama3():
    return tiny_llama(num_layers=3)


def test_index_map_pre_hook_sees_hidden_states(llama3):
    model, tok = llama3
    ids = tok(["the cat sees a dog"], return_tensors="pt")["input_ids"]
    sites = [resid_module(model, ell) for ell in range(4)]
    with torch.no_grad(), capture(model, sites) as acts:
        out = model(ids, output_hidden_states=True)
    for ell, site in enumerate(sites):
        torch.testing.assert_close(acts[site], out.hidden_states[ell])
    assert sites[3].module == "model.norm"


def test_writing_own_values_is_a_no_op_and_off_by_one_is_not(llama3):
    model, tok = llama3
    ids = tok(["the cat sees a dog"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        for ell in range(4):
            with graft(model, {ell: own_values(out.hidden_states[ell][0, 2])}, positions=[2]):
                same = model(ids).logits
            torch.testing.assert_close(same, out.logits, atol=1e-6, rtol=0)
        # the reference wrote index-L values into layers[L+1]
        with graft(model, {2: own_values(out.hidden_states[1][0, 2])}, positions=[2]):
            shifted = model(ids).logits
    assert (shifted - out.logits).abs().max() > 1e-3


def test_edits_act_on_the_prompt_pass_only_unless_every_step(llama3):
    model, tok = llama3
    h = torch.randn(model.config.hidden_size) * 5
    ids = tok(["the cat"], return_tensors="pt")["input_ids"]
    one = ids[:, -1:]  # a one-position pass, like a cached decode step
    with torch.no_grad():
        plain = model(one).logits
        with graft(model, {1: own_values(h)}):
            assert torch.equal(model(one).logits, plain)
            assert not torch.equal(model(ids).logits[:, -1], model(ids[:, :-1]).logits[:, -1])
        with graft(model, {1: own_values(h)}, every_step=True):
            assert not torch.allclose(model(one).logits, plain)


def test_freeze_zeroes_the_masked_neurons(llama3):
    model, tok = llama3
    ids = tok(["the cat sees"], return_tensors="pt")["input_ids"]
    t = own_values(torch.ones(model.config.hidden_size))
    t.mask[::2] = False
    t.mean = t.mean[t.mask]
    with (
        torch.no_grad(),
        freeze(model, {1: t}, positions=[-1]),
        capture(model, [resid_module(model, 1)]) as acts,
    ):
        model(ids)
    x = acts[resid_module(model, 1)]
    assert (x[0, -1, t.mask] == 0).all() and (x[0, -1, ~t.mask] != 0).all()


def test_layer_out_of_range_is_a_clear_error(llama3):
    model, _ = llama3
    with (
        pytest.raises(InputError, match="layer 9 is out of range"),
        graft(model, {9: own_values(torch.zeros(32))}),
    ):
        pass


def test_grafting_a_chunk_template_makes_the_model_continue_the_chunk(chunk_lm):
    model, _ = chunk_lm
    ids, hs, sid = lm_states(model, 40, seed=1)
    pos = pa.match_positions(ids, sid, [(30,)])  # first token of the chunk 30 31 32
    prompts = planted_rows(16, 20, np.random.default_rng(5), p_chunk=0.0)
    swept = pa.fit(hs[1], pos, seed=0)
    # also the smallest swept mask that keeps at least 7/8 of the 64 neurons
    tau = min((r for r in swept.meta["sweep"] if r["n_dims"] >= 56), key=lambda r: r["n_dims"])
    partial = pa.fit(hs[1], pos, seed=0, tau=tau["tau"])
    assert 56 <= partial.n_dims < 64
    with torch.no_grad():
        before = model(prompts).logits[:, -1].softmax(-1)[:, 31]
        with graft(model, {1: swept}):
            full = model(prompts).logits[:, -1].softmax(-1)[:, 31]
        with graft(model, {1: partial}):
            some = model(prompts).logits[:, -1].softmax(-1)[:, 31]
    assert before.max() < 0.05
    assert full.min() > 0.5
    assert some.mean() > 0.5


def test_a_no_op_graft_yields_identical_texts(chunk_lm):
    model, tok = chunk_lm
    t = own_values(torch.zeros(64))
    effect = occurrence_effect(
        model,
        tok,
        ["w3 w4 w5", "w6 w7"],
        "w31",
        {1: t},
        positions=(),
        seed=0,
        max_new_tokens=6,
        chat=False,
    )
    assert effect.control_texts == effect.graft_texts
    assert effect.control_rate == effect.graft_rate and effect.mcnemar_p == 1.0


def test_mentions_and_paired_stats():
    assert mentions("I love Coffee.", "coffee") and not mentions("coffeehouse", "coffee")
    c = np.array([0, 0, 0, 0, 1, 0, 0, 0], bool)
    g = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    p, lo, hi = paired_stats(c, g)
    assert p == pytest.approx(2 * 0.5**6)  # 6 discordant pairs, all towards the graft
    assert 0 < lo <= 0.75 <= hi


def test_collect_matches_one_sentence_at_a_time_and_keeps_sentence_order(llama3):
    from lucidml.chunking.collect import collect, encode_sentences

    model, tok = llama3
    sents = ["the cat sees a big dog .", "a bird .", "my red car is old and small ."]
    col = collect(model, tok, sents, layers=[0, 2, 3], batch_size=2)
    enc = encode_sentences(tok, sents)
    assert col.token_ids.tolist() == [t for e in enc for t in e]
    assert col.sentence_ids.tolist() == [i for i, e in enumerate(enc) for _ in e]
    start = len(enc[0])
    with torch.no_grad():
        alone = model(torch.tensor([enc[1]]), output_hidden_states=True).hidden_states
    for ell in (0, 2, 3):
        torch.testing.assert_close(
            col.hidden[ell][start : start + len(enc[1])], alone[ell][0], atol=1e-5, rtol=1e-4
        )


def test_collect_stops_after_the_highest_requested_index(llama3):
    from lucidml.chunking.collect import collect
    from lucidml.core.hooks import decoder_blocks

    model, tok = llama3
    sents = ["the cat sees a big dog .", "a bird ."]
    calls = []
    blocks = decoder_blocks(model)[1]
    late = [blocks[i].register_forward_hook(lambda *a, i=i: calls.append(i)) for i in (0, 1, 2)]
    try:
        col = collect(model, tok, sents, layers=[0, 1], batch_size=2)
    finally:
        for h in late:
            h.remove()
    assert calls == [0]  # index 1 is block 0's output: blocks 1 and 2 never ran
    full = collect(model, tok, sents, layers=[0, 1, 3], batch_size=2)
    for ell in (0, 1):
        torch.testing.assert_close(col.hidden[ell], full.hidden[ell], atol=0, rtol=0)
