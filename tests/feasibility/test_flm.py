"""FLM scoring: prompts, batching, the prefix cache, score types, exports, the baseline."""

import numpy as np
import pytest
import torch
from feasibility_fixtures import OBJECTS, SEEN, STATES

from lucidml.errors import InputError, ModelError
from lucidml.feasibility import FeasibilityScores, baseline_scores, combine, ranking, score_pairs
from lucidml.feasibility.baseline import compcos_feasibility
from lucidml.feasibility.prompts import ContextBuilder, PromptSettings, article
from lucidml.feasibility.scorer import YesNoScorer, answer_token_ids, score_from_logits
from lucidml.feasibility.vocab import Vocabulary


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_article_follows_the_sound():
    assert [article(w) for w in ["apple", "ripe", "egg", "old car", "hour", "one", "uniform"]] == [
        "an",
        "a",
        "an",
        "an",
        "an",
        "a",
        "a",
    ]


GOLDEN = (
    "Answer Yes if such a thing can be found in the real world, and No if it cannot.\n"
    "Q: Does a boiled mountain exist in the real world? A: No\n"
    "Q: Does a folded ocean exist in the real world? A: No\n"
    "Q: Does a wet window exist in the real world? A: Yes\n"  # same object, seeded order
    "Q: Does a broken window exist in the real world? A: Yes\n"
    "Q: Does a ripe apple exist in the real world? A: Yes\n"  # same state
    "Q: Does a broken egg exist in the real world? A: Yes\n"  # topped up to 4
    "Q: Does a ripe window exist in the real world? A:"
)


def test_prompt_is_pinned_and_its_prefix_is_the_object_part(seen_mask):
    builder = ContextBuilder(STATES, OBJECTS, seen_mask, PromptSettings(n_examples=4))
    prompt = builder.build(STATES.index("ripe"), OBJECTS.index("window"))
    assert prompt.text == GOLDEN
    assert prompt.text.startswith(prompt.prefix) and prompt.prefix.endswith("A: Yes\n")
    assert prompt.prefix.count("\n") == 5  # instruction, 2 negatives, 2 same-object lines


def test_contexts_hold_only_seen_pairs_and_never_the_query(seen_mask):
    builder = ContextBuilder(STATES, OBJECTS, seen_mask, PromptSettings(n_examples=8, seed=3))
    seen = set(SEEN)
    for s, o in np.argwhere(~seen_mask):
        same_obj, rest = builder.examples(s, o)
        pairs = [(STATES[a], OBJECTS[b]) for a, b in same_obj + rest]
        assert set(pairs) <= seen and len(pairs) == len(set(pairs))
        assert (STATES[s], OBJECTS[o]) not in pairs
        assert len(pairs) == min(8, len(seen))
        # the same-object block is one fixed list per object (so its cache is shared)
        assert [b for _, b in same_obj] == [o] * len(same_obj)


def test_example_order_is_fixed_by_the_seed(seen_mask):
    def contexts(seed):
        b = ContextBuilder(STATES, OBJECTS, seen_mask, PromptSettings(seed=seed))
        return [b.build(s, o).text for s, o in np.argwhere(~seen_mask)]

    assert contexts(0) == contexts(0)
    assert contexts(0) != contexts(1)


def test_negatives_inside_the_vocabulary_never_enter_a_context(seen_mask):
    settings = PromptSettings(negatives=(("wet", "egg"), ("boiled", "mountain")), n_negatives=2)
    builder = ContextBuilder(STATES, OBJECTS, seen_mask, settings)
    assert builder.negatives == [("boiled", "mountain")]  # "wet egg" may be a query


def test_a_tokenizer_without_yes_and_no_is_refused():
    from lucidml.testing import char_tokenizer, word_tokenizer

    with pytest.raises(ModelError, match="no token for 'Yes' or 'No'"):
        answer_token_ids(word_tokenizer(["maybe"]))
    with pytest.raises(ModelError, match="same first token"):
        answer_token_ids(char_tokenizer("yesno "))  # 'Y'->unk... both start alike


def _prompts(seen_mask):
    """Prompts of two lengths that share each object's prefix (2 same-object lines)."""
    prompts = []
    for n in (4, 5):
        settings = PromptSettings(n_examples=n, n_object_examples=2)
        builder = ContextBuilder(STATES, OBJECTS, seen_mask, settings)
        prompts += [builder.build(s, o) for s, o in np.argwhere(~seen_mask)]
    return prompts


@pytest.mark.parametrize("which", ["tiny_lm", "tiny_gpt2"])
def test_left_padded_batches_and_the_prefix_cache_equal_single_prompts(which, seen_mask, request):
    model, tok = request.getfixturevalue(which)
    prompts = _prompts(seen_mask)
    texts, prefixes = [p.text for p in prompts], [p.prefix for p in prompts]
    single = YesNoScorer(model, tok)
    one = [single.score_one(t) for t in texts]
    one_yes = np.array([x.z_yes[0] for x in one])
    one_lse = np.array([x.lse[0] for x in one])
    naive_tokens = single.tokens_processed

    batched = YesNoScorer(model, tok, batch_size=3, prefix_cache=False).score(texts, prefixes)
    cached_scorer = YesNoScorer(model, tok, batch_size=3)
    cached = cached_scorer.score(texts, prefixes)
    assert len({len(tok(t)["input_ids"]) for t in texts}) > 1  # padding really happens
    assert len(set(prefixes)) < len(texts) / 2  # and prefixes are shared
    np.testing.assert_allclose(batched.z_yes, one_yes, atol=1e-6)
    np.testing.assert_allclose(cached.z_yes, one_yes, atol=1e-6)
    np.testing.assert_allclose(cached.lse, one_lse, atol=1e-6)
    assert cached_scorer.tokens_processed < naive_tokens


def test_explicit_position_ids_reach_the_model(tiny_gpt2, seen_mask):
    model, tok = tiny_gpt2
    seen_positions = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen_positions.append(kwargs.get("position_ids")),
        with_kwargs=True,
    )
    try:
        prompts = _prompts(seen_mask)
        YesNoScorer(model, tok, batch_size=4).score(
            [p.text for p in prompts], [p.prefix for p in prompts]
        )
    finally:
        hook.remove()
    suffix_calls = [p for p in seen_positions if p is not None]
    assert suffix_calls, "the batched forward passed no position ids"
    prefix_len = len(tok(prompts[0].prefix)["input_ids"])
    assert any(int(p.min()) >= prefix_len for p in suffix_calls)  # continue after the prefix


def test_score_types_follow_from_the_logits(tiny_lm):
    model, tok = tiny_lm
    text = "Q: Does a ripe apple exist in the real world? A:"
    scorer = YesNoScorer(model, tok)
    got = scorer.score_one(text)
    with torch.no_grad():
        logp = torch.log_softmax(model(**tok(text, return_tensors="pt")).logits[0, -1], -1)
    (yes,), (no,) = answer_token_ids(tok)  # a word tokenizer has one variant each
    args = (got.z_yes, got.z_no, got.lse)
    assert score_from_logits(*args, "log_odds")[0] == pytest.approx(float(logp[yes] - logp[no]))
    assert score_from_logits(*args, "log_p_yes")[0] == pytest.approx(float(logp[yes]))
    odds = np.linspace(-5, 5, 11)
    probs = score_from_logits(odds, np.zeros(11), np.zeros(11), "yes_prob")
    assert np.all(np.diff(probs) > 0) and probs[5] == 0.5


@pytest.fixture
def lm_table(tiny_lm):
    return score_pairs(STATES, OBJECTS, SEEN, model=tiny_lm, n_examples=4, device="cpu")


def test_score_pairs_fills_the_table_with_seen_pairs_feasible(lm_table, seen_mask):
    assert lm_table.matrix.shape == (4, 4) and lm_table.matrix.dtype == np.float32
    assert np.isposinf(lm_table.matrix[seen_mask]).all()
    assert np.isfinite(lm_table.matrix[~seen_mask]).all()
    assert (lm_table.probabilities[seen_mask] == 1).all()
    i, j = STATES.index("ripe"), OBJECTS.index("window")
    assert lm_table.score("ripe", "window") == lm_table.matrix[i, j]
    with pytest.raises(InputError, match="not a pair"):
        lm_table.score("ripe", "moon")


def test_exports_follow_the_layouts_their_code_bases_read(lm_table, seen_mask, tmp_path):
    table = np.load(lm_table.to_kgsp(tmp_path / "k.npy"), allow_pickle=True).item()
    assert set(table) == set(OBJECTS) and set(table["apple"]) == set(STATES)
    values = np.array([[table[o][s] for o in OBJECTS] for s in STATES])
    assert ((values >= 0) & (values <= 1)).all() and (values[seen_mask] == 1).all()
    np.testing.assert_array_equal(values, lm_table.probabilities)

    csp = torch.load(lm_table.to_csp(tmp_path / "c.pt"))["feasibility"]
    order = [(s, o) for s in STATES for o in OBJECTS]  # itertools.product(attrs, objs)
    p = order.index(("ripe", "window"))
    assert csp[p] == pytest.approx(lm_table.score("ripe", "window"))
    assert (csp[torch.from_numpy(seen_mask.ravel())] == 0).all()
    czsl = np.load(lm_table.to_czsl(tmp_path / "z.npy"))
    assert czsl[p] == csp[p] and np.isposinf(czsl[seen_mask.ravel()]).all()

    lines = lm_table.to_csv(tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("state,object,seen,yes_logit,probability")
    assert len(lines) == 1 + 16
    lm_table.save(tmp_path / "t")
    back = FeasibilityScores.load(tmp_path / "t")
    np.testing.assert_array_equal(back.matrix, lm_table.matrix)
    assert back.states == STATES and back.components.keys() == lm_table.components.keys()


def test_a_malformed_table_folder_is_one_sentence(tmp_path):
    with pytest.raises(InputError, match="holds no feasibility table"):
        FeasibilityScores.load(tmp_path)
    (tmp_path / "scores.safetensors").write_bytes(b"junk")
    (tmp_path / "scores.json").write_text("{}")
    with pytest.raises(InputError, match="malformed"):
        FeasibilityScores.load(tmp_path)


def test_answer_logits_are_cached_per_object_and_reused(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    folder = tmp_path / "lm"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    first = score_pairs(STATES, OBJECTS, SEEN, model=str(folder), cache=tmp_path / "c")
    parts = sorted((tmp_path / "c").rglob("object-*.safetensors"))
    assert len(parts) == 4  # one per object with unseen pairs
    parts[0].unlink()  # as if killed before the last object
    calls = []
    real = YesNoScorer.score
    monkeypatch.setattr(
        YesNoScorer, "score", lambda self, t, p=None, **k: calls.append(len(t)) or real(self, t, p)
    )
    again = score_pairs(STATES, OBJECTS, SEEN, model=str(folder), cache=tmp_path / "c")
    assert len(calls) == 1  # only the missing object was scored again
    np.testing.assert_allclose(again.matrix, first.matrix, rtol=1e-6)
    other = score_pairs(STATES, OBJECTS, SEEN, model=str(folder), cache=tmp_path / "c", seed=1)
    assert len(calls) == 5  # another seed is another prompt: nothing reused
    assert other.matrix.shape == first.matrix.shape


def test_baseline_matches_hand_computed_values():
    states = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    objects = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    seen = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    f = compcos_feasibility(states, objects, seen)
    r = 1 / np.sqrt(2)
    # (s0, o1): object side cos(o1, o0) = r (o0 seen with s0); state side cos(s0, s1) = 0
    assert f[0, 1] == pytest.approx(r / 2)
    # (s0, o2): object side cos(o2, o0) = 0; no state seen with o2 -> -1
    assert f[0, 2] == pytest.approx(-0.5)
    # (s2, o0): no object seen with s2 -> -1; state side cos(s2, s0) = r
    assert f[2, 0] == pytest.approx((-1 + r) / 2)
    assert f[2, 2] == -1 and f[0, 0] == 1 and f[1, 1] == 1


class _Vectors:
    """A sentence encoder stand-in with fixed vectors."""

    def __init__(self, table):
        self.table = table

    def encode(self, names, convert_to_numpy=True, normalize_embeddings=False):
        return np.array([self.table[n] for n in names], dtype=np.float32)


def test_baseline_scores_and_combinations(seen_mask):
    rng = np.random.default_rng(0)
    enc = _Vectors({n: rng.normal(size=4) for n in STATES + OBJECTS})
    base = baseline_scores(STATES, OBJECTS, SEEN, encoder=enc)
    assert (base.matrix[seen_mask] == 1).all() and base.score_type == "compcos"
    assert ((base.probabilities >= 0) & (base.probabilities <= 1)).all()
    labels = np.zeros_like(seen_mask)
    labels[~seen_mask] = base.matrix[~seen_mask] > np.median(base.matrix[~seen_mask])
    labels |= seen_mask
    # a score ranked with itself keeps its ranking exactly
    assert ranking(combine(base, base), labels)["roc_auc"] == ranking(base, labels)["roc_auc"]
    fitted = combine(base, base, "logistic", fit_mask=~seen_mask, labels=labels)
    assert ranking(fitted, labels)["roc_auc"] == 1.0
    with pytest.raises(InputError, match="fit pairs"):
        combine(base, base, "logistic")


def test_ranking_reports_an_interval_and_the_random_yardstick(seen_mask):
    table = FeasibilityScores(
        STATES, OBJECTS, np.arange(16.0).reshape(4, 4), seen_mask, np.zeros((4, 4)), "x"
    )
    labels = np.arange(16).reshape(4, 4) >= 8
    r = ranking(table, labels)
    assert r["roc_auc"] == 1.0 and r["roc_auc_ci95"][1] == 1.0
    assert r["positive_rate"] == pytest.approx(labels[~seen_mask].mean())
    assert ranking(table, ~labels)["roc_auc"] == 0.0


@pytest.mark.parametrize(
    "states, objects, seen, message",
    [
        ([], OBJECTS, [], "state vocabulary is empty"),
        (STATES + ["wet"], OBJECTS, [], "state 'wet' is listed twice"),
        (STATES, OBJECTS, [("wet", "moon")], "object 'moon', not in the objects"),
        (STATES, OBJECTS, [("wet", "egg"), ("wet", "egg")], "'wet egg' is listed twice"),
        (STATES, OBJECTS, [("wet",)], "is not a (state, object) pair"),
    ],
)
def test_bad_vocabularies_are_one_sentence(states, objects, seen, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Vocabulary.build(states, objects, seen)
