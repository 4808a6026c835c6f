import numpy as np
import pytest
import torch
from chunking_helpers import lm_states, planted_rows

from lucidml.chunking import pa
from lucidml.chunking.graft import (
    Injection,
    add_scaled,
    associated_words,
    check_positions,
    compare_arms,
    continuation_perplexity,
    freeze,
    generate,
    graft,
    inject,
    mentions,
    paired_stats,
)
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


def test_a_zero_strength_graft_yields_identical_texts(chunk_lm):
    model, tok = chunk_lm
    prompts = ["w3 w4 w5", "w6 w7"]
    kw = dict(seed=0, max_new_tokens=6, chat=False)
    control = generate(model, tok, prompts, **kw)
    with inject(model, {1: Injection.add(torch.ones(64), 0.0)}, "all", every_step=True):
        grafted = generate(model, tok, prompts, **kw)
    assert control == grafted
    row = compare_arms(control, grafted, "w31")
    assert row["word_rate"] == row["word_rate_control"] and row["mcnemar_p"] == 1.0


def test_add_changes_the_residual_by_exactly_s_norm_h_along_d(llama3):
    model, tok = llama3
    ids = tok(["the cat sees a dog"], return_tensors="pt")["input_ids"]
    site, T = resid_module(model, 2), ids.shape[1]
    d = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with capture(model, [site]) as plain:
            base = model(ids).logits
        for positions, edited in (("all", list(range(T))), ([1, -1], [1, T - 1])):
            with (
                inject(model, {2: Injection.add(d, 0.3)}, positions),
                capture(model, [site]) as acts,
            ):
                model(ids)
            h, x = plain[site][0], acts[site][0]
            want = h.clone()
            want[edited] += 0.3 * h[edited].norm(dim=-1, keepdim=True) * d / d.norm()
            torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)
        with inject(model, {2: Injection.add(d, 0.0)}, "all"):
            assert torch.equal(model(ids).logits, base)  # strength 0 is the identity
    x = torch.tensor([[3.0, 4.0]])
    assert add_scaled(x, torch.tensor([0.0, 2.0]), 0.5).tolist() == [[3.0, 6.5]]  # 0.5*5*(0,1)


def test_every_step_edits_each_generated_position(chunk_lm):
    model, tok = chunk_lm
    d, kw = torch.ones(64), dict(seed=0, max_new_tokens=5, chat=False)
    prompt_len = len(tok("w3 w4 w5", add_special_tokens=False)["input_ids"]) + 1  # with BOS
    for positions, first in (("all", prompt_len), ("last", 1), ([-2, -1], 2)):
        counts: list = []
        with inject(model, {1: Injection.add(d, 0.1)}, positions, every_step=True, counter=counts):
            generate(model, tok, ["w3 w4 w5"], **kw)
        assert counts == [first, 1, 1, 1, 1]  # the prompt pass, then one per decode step
        counts = []
        with inject(model, {1: Injection.add(d, 0.1)}, positions, counter=counts):
            generate(model, tok, ["w3 w4 w5"], **kw)
        assert counts == [first]


def test_bad_injections_are_clear_errors(llama3):
    model, _ = llama3
    with (
        pytest.raises(InputError, match="width 16, the model's residual stream 32"),
        inject(model, {1: Injection.add(torch.ones(16), 0.1)}),
    ):
        pass
    with pytest.raises(InputError, match="zero"):
        Injection.add(torch.zeros(32), 0.1)
    with pytest.raises(InputError, match="position 7 lies beyond the shortest prompt"):
        check_positions([-1, 7], [9, 7, 12])
    check_positions([-7, 6], [9, 7, 12])
    check_positions("all", [1])


def test_continuation_perplexity_matches_the_model_loss(llama3):
    model, tok = llama3
    ppl = continuation_perplexity(model, tok, ["the cat"], [" sees a dog"], chat=False)
    head = tok(
        "<s>the cat" if tok.bos_token == "<s>" else tok.bos_token + "the cat",
        add_special_tokens=False,
    )["input_ids"]
    tail = tok(" sees a dog", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    labels = ids.clone()
    labels[0, : len(head)] = -100  # the prompt is context, not scored
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss
    assert ppl[0] == pytest.approx(float(torch.exp(loss)), rel=1e-5)


def test_associated_words_are_the_nearest_unembedding_rows():
    model, tok = tiny_llama(num_layers=1)
    W = model.get_output_embeddings().weight
    words = [w for w in tok.get_vocab() if len(w) >= 3 and w.isalpha()]
    anchor, near, nearer = words[:3]
    with torch.no_grad():  # plant two rows along the anchor's: 3x (cosine 1), then a tilt
        a = W[tok.convert_tokens_to_ids(anchor)].clone()
        W[tok.convert_tokens_to_ids(nearer)] = 3 * a
        W[tok.convert_tokens_to_ids(near)] = a + 0.3 * a.norm() * torch.eye(len(a))[0]
    assert associated_words(model, tok, anchor, k=2) == [nearer, near]


def test_compare_arms_rates_intervals_and_mcnemar_by_hand():
    from lucidml.core.metrics import wilson_interval

    control = ["tea", "nothing", "tea", "nothing"]
    grafted = ["coffee", "a cup of coffee", "tea", "espresso"]
    row = compare_arms(control, grafted, "coffee", ["espresso", "latte"], [2, 4], [3, 5])
    assert (row["n"], row["word_rate"], row["word_rate_control"]) == (4, 0.5, 0.0)
    assert (row["word_rate_low"], row["word_rate_high"]) == pytest.approx(
        wilson_interval(2, 4), abs=1e-4
    )
    assert row["mcnemar_p"] == pytest.approx(0.5)  # 2 discordant pairs, both to the graft
    assert (row["concept_rate"], row["concept_rate_control"]) == (0.25, 0.0)
    assert (row["perplexity"], row["perplexity_control"]) == (4.0, 3.0)


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
