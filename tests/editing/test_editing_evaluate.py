import math

import pytest
import torch

from lucidml.editing import evaluate as E
from lucidml.testing import char_tokenizer


class OracleLM(torch.nn.Module):
    """Predicts each next token of its input exactly (shift=1), or the current one (shift=0)."""

    def __init__(self, vocab: int, shift: int = 1):
        super().__init__()
        self.vocab, self.shift = vocab, shift
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        target = torch.roll(input_ids, -self.shift, dims=1)
        logits = torch.nn.functional.one_hot(target, self.vocab).float()

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_token_hits_known_answers():
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[False, False, True, True]])
    gold = torch.nn.functional.one_hot(torch.roll(ids, -1, 1), 10).float()
    acc, _ = E.token_hits(gold, ids, mask)
    assert acc.item() == 1.0
    acc, _ = E.token_hits(torch.nn.functional.one_hot(ids, 10).float(), ids, mask)
    assert acc.item() == 0.0


@pytest.mark.parametrize("make_tok", ["word", "char"])
def test_answer_span_any_tokenizer_and_padding(tiny_lm, make_tok):
    tok = tiny_lm[1] if make_tok == "word" else char_tokenizer(add_eos=False)
    qs = ["what is the capital of france ?", "who leads peru ?"]
    ans = ["paris", "alice bob"]
    spans = {}
    for side in ("left", "right"):
        b = E.encode(tok, qs, ans, ["", "q : one a : two\n"], side)
        spans[side] = [
            tok.decode(b.input_ids[i][b.answer_mask[i]]).replace(" ", "") for i in range(2)
        ]
    assert spans["left"] == spans["right"] == ["paris", "alicebob"]


def test_oracle_scores_one_and_padding_side_irrelevant(tiny_lm):
    model, tok = tiny_lm
    oracle = OracleLM(len(tok))
    assert E.token_accuracy(oracle, tok, "what is the capital of france ?", "paris") == 1.0
    assert (
        E.token_accuracy(OracleLM(len(tok), shift=0), tok, "who leads peru ?", "alice bob") == 0.0
    )
    qs = ["what is the capital of france ?", "who leads peru ?", "who is the head coach ?"]
    ans = ["paris", "alice bob carol", "dave"]
    left = E.score(model, tok, qs, ans, padding_side="left", batch_size=3)
    right = E.score(model, tok, qs, ans, padding_side="right", batch_size=3)
    single = [E.token_accuracy(model, tok, q, a) for q, a in zip(qs, ans, strict=True)]
    assert left.accuracy == pytest.approx(right.accuracy)
    assert right.accuracy == pytest.approx(single)
    for a, b in zip(left.predictions, right.predictions, strict=True):
        assert torch.equal(a, b)


def test_metrics_for_an_unchanged_model(tiny_lm):
    model, tok = tiny_lm
    recs = [
        {
            "update": "who leads peru ?",
            "ans": "alice",
            "rephrase": "who is the head of peru ?",
            "personas": {"pirate": "q : who leads peru ?"},
            "loc": "who leads chile ?",
            "loc_ans": "bob",
            "mhop": None,
        },
        {
            "update": "who leads oman ?",
            "ans": "carol",
            "loc": "who leads fiji ?",
            "loc_ans": "dave",
        },
    ]
    before, details = E.evaluate_records(model, tok, recs)
    after, _ = E.evaluate_records(model, tok, recs, loc_reference=details["loc_predictions"])
    assert after["loc_agree"] == 1.0
    assert set(after) >= {"rewrite", "rephrase", "personas", "personas_pirate", "loc_gold"}
    assert "mhop" not in after and after["n"] == 2
    oracle, _ = E.evaluate_records(OracleLM(len(tok)), tok, recs)
    assert oracle["rewrite"] == oracle["loc_gold"] == oracle["personas"] == 1.0
    assert E.agreement([torch.tensor([1, 2])], [torch.tensor([1, 3])]) == 0.5
    assert math.isnan(E.agreement([], []))


def test_exact_match_greedy(tiny_lm):
    from lucidml.editing import methods

    model, tok = tiny_lm
    facts = [
        {"update": "who leads peru ?", "ans": "alice bob"},
        {"update": "who leads chile ?", "ans": "carol"},
    ]
    methods.get("ft", epochs=60, lr=1e-2, batch_size=2).apply(model, tok, facts)
    assert E.exact_match(model, tok, "who leads peru ?", "alice bob")
    assert E.exact_match(model, tok, "who leads chile ?", "carol")
    assert not E.exact_match(model, tok, "who leads chile ?", "dave")
    assert E.exact_match(model, tok, "who leads chile ?", "dave", aliases=("carol",))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_lm):
    model, tok = tiny_lm
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: uniform next-token distribution
    text = " ".join(["the capital of peru is lima ."] * 80)
    assert E.perplexity(model, tok, text, window=64) == pytest.approx(len(tok), rel=1e-4)
    assert E.perplexity(model, tok, "the") != E.perplexity(model, tok, "the")  # one token: nan


class BigramLM(torch.nn.Module):
    """Predicts the next word from the current one alone, by a fixed table (else <unk>).

    It "copies" the rest of a name it is shown the start of, without knowing how the
    answer starts: the case that teacher-forced accuracy alone mistakes for knowledge.
    """

    def __init__(self, tok, table: dict[str, str]):
        super().__init__()
        self.vocab = len(tok)
        self.next = torch.full((self.vocab,), tok.unk_token_id)
        for word, nxt in table.items():
            self.next[tok.convert_tokens_to_ids(word)] = tok.convert_tokens_to_ids(nxt)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = type("Out", (), {})()
        out.logits = torch.nn.functional.one_hot(self.next[input_ids], self.vocab).float()
        return out


def test_first_token_and_exact_match_known_answers(tiny_lm):
    _, tok = tiny_lm
    # after "A :" it says "dave"; it continues alice -> bob -> carol and dave -> grace
    model = BigramLM(tok, {":": "dave", "alice": "bob", "bob": "carol", "dave": "grace"})
    record = {
        "update": "who leads peru ?",
        "ans": "alice bob carol",  # TF 2/3 (bob, carol copied), first token 0, greedy "dave grace <unk>"
        "rephrase": "who is the head of peru ?",
        "loc": "who leads chile ?",
        "loc_ans": "dave",  # TF 1, first token 1, greedy "dave": EM 1
        "mhop": "who is the head coach of peru ?",
        "mhop_ans": "dave frank",  # TF 1/2, first token 1, greedy "dave grace": EM 0
    }
    m, _ = E.evaluate_records(model, tok, [record])
    assert m["rewrite"] == pytest.approx(2 / 3)
    assert (m["rewrite_first_token"], m["rewrite_em"]) == (0.0, 0.0)
    assert (m["rephrase"], m["rephrase_first_token"], m["rephrase_em"]) == (
        pytest.approx(2 / 3),
        0.0,
        0.0,
    )
    assert (m["loc_gold"], m["loc_gold_first_token"], m["loc_gold_em"]) == (1.0, 1.0, 1.0)
    assert (m["mhop"], m["mhop_first_token"], m["mhop_em"]) == (0.5, 1.0, 0.0)
    s = E.score(model, tok, ["who leads peru ?", "who leads chile ?"], ["alice bob carol", "dave"])
    # "dave" already departs from "alice ...": not decoded further, EM 0 all the same
    assert s.greedy == ["dave", "dave"]
    prompt = torch.tensor(tok("q : who leads peru ? a :")["input_ids"])
    assert E.greedy_answers(model, tok, [prompt], [3]) == ["dave grace"]
    assert s.first_token == [0.0, 1.0] and s.exact_match == [0.0, 1.0]
    # the same answers one at a time, right-padded for the teacher-forced pass
    single = [
        E.score(model, tok, [q], [a], padding_side="right")
        for q, a in [("who leads peru ?", "alice bob carol"), ("who leads chile ?", "dave")]
    ]
    assert [x.greedy[0] for x in single] == s.greedy
    assert [x.first_token[0] for x in single] == s.first_token


def test_greedy_answer_never_sees_the_gold_answer(tiny_lm):
    # the oracle predicts each next token of its input: perfect under teacher forcing,
    # but from the prompt alone it has nothing to copy
    _, tok = tiny_lm
    s = E.score(OracleLM(len(tok)), tok, ["who leads peru ?"], ["alice bob"])
    assert (s.accuracy, s.first_token, s.exact_match) == ([1.0], [1.0], [0.0])


def test_normalise_answer():
    assert E.normalise_answer("  Keir  Starmer.\n") == "keir starmer"
    assert E.normalise_answer("Paris!?") == E.normalise_answer("paris")
    assert E.normalise_answer("St. Louis") == "st. louis"  # only trailing punctuation goes


def test_greedy_exact_match_of_a_trained_llama_in_a_batch(tiny_lm):
    from lucidml.editing import methods

    model, tok = tiny_lm
    facts = [
        {"update": "who leads peru ?", "ans": "alice bob"},
        {"update": "who leads chile ?", "ans": "carol"},
    ]
    methods.get("ft", epochs=60, lr=1e-2, batch_size=2).apply(model, tok, facts)
    qs, ans = [f["update"] for f in facts], [f["ans"] for f in facts]
    s = E.score(model, tok, qs + ["who leads chile ?"], ans + ["dave"])
    assert s.greedy[:2] == ["alice bob", "carol"]  # KV-cached, left-padded batch
    assert s.exact_match == [1.0, 1.0, 0.0] and s.first_token == [1.0, 1.0, 0.0]


def test_could_match_rules_out_only_answers_that_cannot_match():
    assert E.could_match(" Keir", "Keir Starmer") and E.could_match(" keir", "Keir Starmer")
    assert E.could_match("", "Keir Starmer")  # an empty start rules nothing out
    assert not E.could_match(" Rishi", "Keir Starmer")


@pytest.mark.parametrize("make_tok", ["word", "char"])
def test_greedy_prompt_stops_where_the_answer_starts(tiny_lm, make_tok):
    # a char tokenizer scores the space before the answer as prompt, a word one drops it
    tok = tiny_lm[1] if make_tok == "word" else char_tokenizer(add_eos=False)
    b = E.encode(tok, ["who leads peru ?", "who ?"], ["alice bob", "carol"], ["", ""], "left")
    space = " " if make_tok == "char" else ""
    for j, q in enumerate(["who leads peru ?", "who ?"]):
        expected = tok(f"Q: {q} A:{space}")["input_ids"]
        assert E._before_answer(b, j).tolist() == expected
