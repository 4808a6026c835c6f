import copy
import json
import zlib

import numpy as np
import pytest
import torch

from lucidml.editing import methods
from lucidml.editing.evaluate import score
from lucidml.editing.methods import locate
from lucidml.editing.methods.lora import ema_merge, target_weights
from lucidml.editing.methods.memit import memit_update
from lucidml.editing.methods.rag import top_k_cosine
from lucidml.editing.methods.rome import rome_update
from lucidml.errors import ConfigError, InputError, ModelError

CAPITALS = dict(
    zip(
        [
            "france",
            "italy",
            "spain",
            "germany",
            "switzerland",
            "peru",
            "norway",
            "ecuador",
            "egypt",
            "ireland",
            "austria",
            "greece",
            "japan",
            "kenya",
            "chile",
            "cuba",
            "nepal",
            "iran",
            "fiji",
            "mali",
        ],
        [
            "paris",
            "rome",
            "madrid",
            "berlin",
            "bern",
            "lima",
            "oslo",
            "quito",
            "cairo",
            "dublin",
            "vienna",
            "athens",
            "tokyo",
            "nairobi",
            "santiago",
            "havana",
            "kathmandu",
            "tehran",
            "suva",
            "bamako",
        ],
        strict=True,
    )
)
FACTS = [
    {"update": f"what is the capital of {c} ?", "ans": a, "subject": c} for c, a in CAPITALS.items()
]


def rewrite(model, tok, records):
    s = score(model, tok, [r["update"] for r in records], [r["ans"] for r in records])
    return float(np.mean(s.accuracy))


def test_registry():
    assert set(methods.METHODS) == {"ft", "lora", "lora_merge", "rag", "rome", "memit", "alphaedit"}
    lora = methods.get("lora", r=8)
    assert (lora.config.r, lora.config.alpha, lora.config.target_modules) == (
        8,
        8,
        ["q_proj", "v_proj"],
    )
    assert lora.config.learning_rate() == pytest.approx(5e-3 * 32 / 256)
    assert methods.get("lora_merge").config.beta == 0.25
    assert methods.get("memit").config.layers == [4, 5, 6, 7, 8]
    with pytest.raises(InputError, match="unknown editing method 'wise'"):
        methods.get("wise")
    with pytest.raises(ConfigError, match="rank"):
        methods.get("lora", rank=4)


def test_rome_update_closed_form():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 10, generator=g, dtype=torch.float64)
    A = torch.randn(10, 40, generator=g, dtype=torch.float64)
    C = A @ A.T / 40
    k, v = (
        torch.randn(10, generator=g, dtype=torch.float64),
        torch.randn(6, generator=g, dtype=torch.float64),
    )
    dW = rome_update(W, C, k, v)
    assert torch.allclose((W + dW) @ k, v, atol=1e-5)
    assert torch.linalg.matrix_rank(dW).item() == 1
    u = torch.linalg.solve(C, k)
    other = torch.randn(10, generator=g, dtype=torch.float64)
    other -= (other @ u) / (u @ u) * u  # (C^-1 k*)^T other = 0
    assert torch.allclose((W + dW) @ other, W @ other, atol=1e-10)


def test_memit_normal_equations():
    g = torch.Generator().manual_seed(1)
    K = torch.randn(10, 4, generator=g, dtype=torch.float64)
    R = torch.randn(6, 4, generator=g, dtype=torch.float64)
    A = torch.randn(10, 30, generator=g, dtype=torch.float64)
    C, lam = A @ A.T / 30, 3.0
    dW = memit_update(R, K, C, lam)
    assert (dW @ (lam * C + K @ K.T) - R @ K.T).abs().max() < 1e-8


def test_ema_merge_endpoints():
    a, b = {"w": torch.randn(3, 3)}, {"w": torch.randn(3, 3)}
    assert torch.equal(ema_merge(a, b, 0.0)["w"], a["w"])
    assert torch.equal(ema_merge(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(ema_merge(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])


def test_full_finetune_learns_facts(tiny_lm):
    model, tok = tiny_lm
    pre = rewrite(model, tok, FACTS)
    methods.get("ft", epochs=60, lr=1e-2, batch_size=10).apply(model, tok, FACTS)
    post = rewrite(model, tok, FACTS)
    assert post >= 0.9 and pre < post


def test_lora_merge_endpoints(tiny_lm):
    model, tok = tiny_lm
    hp = {"epochs": 2, "lr": 1e-2, "batch_size": 10}
    before = {k: w.detach().clone() for k, w in target_weights(model, ["q_proj", "v_proj"]).items()}
    kept = methods.get("lora_merge", beta=0.0, **hp).apply(copy.deepcopy(model), tok, FACTS[:10])
    for k, w in target_weights(kept, ["q_proj", "v_proj"]).items():
        assert torch.equal(w, before[k])
    full = methods.get("lora_merge", beta=1.0, **hp).apply(copy.deepcopy(model), tok, FACTS[:10])
    lora = methods.get("lora", mode="fresh_merge", **hp).apply(
        copy.deepcopy(model), tok, FACTS[:10]
    )
    moved = 0.0
    for (k, w), w2 in zip(
        target_weights(full, ["q_proj", "v_proj"]).items(),
        target_weights(lora, ["q_proj", "v_proj"]).values(),
        strict=True,
    ):
        assert torch.equal(w, w2)
        moved += float((w - before[k]).abs().sum())
    assert moved > 0


def test_lora_continue_keeps_one_adapter(tiny_lm):
    model, tok = tiny_lm
    base = {k: w.detach().clone() for k, w in target_weights(model, ["q_proj"]).items()}
    editor = methods.get("lora", epochs=2, lr=1e-2, batch_size=10, target_modules=["q_proj"])
    model = editor.apply(model, tok, FACTS[:10])
    first = {k: v.clone() for k, v in editor.adapter.items()}
    model = editor.apply(model, tok, FACTS[10:])
    # the second timestep starts from the first adapter, on the original weights
    assert editor.base.keys() == base.keys()
    assert all(torch.equal(editor.base[k], base[k]) for k in base)
    assert any(not torch.equal(first[k], editor.adapter[k]) for k in first)
    with pytest.raises(ModelError, match="no linear layers named o_proj2"):
        methods.get("lora", target_modules=["o_proj2"]).apply(model, tok, FACTS)


def hashing_embedder(texts):
    out = np.zeros((len(texts), 4096), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace("?", " ").split():
            out[i, zlib.crc32(w.encode()) % 4096] += 1.0
    return out


def test_rag_retrieves_own_fact_and_rephrase(tiny_lm):
    model, tok = tiny_lm
    editor = methods.get("rag", embedder=hashing_embedder)
    assert editor.contexts(["anything ?"]) is None
    assert editor.apply(model, tok, FACTS) is model
    for r in FACTS:
        assert editor.retrieve([r["update"]])[0][0] == (r["update"], r["ans"])
        assert (
            editor.retrieve([f"which city is {r['subject']} governed from ?"])[0][0][1] == r["ans"]
        )
    ctx = editor.contexts(["what is the capital of peru ?"])[0]
    assert ctx.startswith("Q: what is the capital of peru ? A: lima\nQ: ")
    assert ctx.count("\n") == 2
    assert top_k_cosine(np.eye(3), np.eye(3)[::-1], 1).ravel().tolist() == [2, 1, 0]


def test_rag_memory_survives_a_checkpoint(tiny_lm, tmp_path):
    """Checkpoints are JSON and safetensors: the memory must be tensors and plain values."""
    from lucidml.editing.state import load_state, save_state

    model, tok = tiny_lm
    editor = methods.get("rag", embedder=hashing_embedder)
    editor.apply(model, tok, FACTS)
    save_state(tmp_path, "state", 0, {"editor": editor.state_dict()})
    restored = methods.get("rag", embedder=hashing_embedder)
    restored.load_state_dict(load_state(tmp_path, "state")["editor"])
    question = ["which city is peru governed from ?"]
    assert restored.memory == editor.memory and restored.contexts(question) == editor.contexts(
        question
    )


@pytest.fixture
def corpus(tmp_path):
    words = " ".join(f"the capital of {c} is {a} ." for c, a in CAPITALS.items())
    (tmp_path / "corpus.txt").write_text("\n\n".join([words] * 6))
    return {
        "corpus": str(tmp_path / "corpus.txt"),
        "stats_dir": str(tmp_path / "stats"),
        "corpus_tokens": 2000,
    }


def test_rome_edit_satisfies_wk_equals_v(tiny_lm, corpus):
    model, tok = tiny_lm
    record = {"update": "what is the capital of peru ?", "ans": "oslo", "subject": "peru"}
    # a random tiny model's MLP outputs are tiny: no norm clamp, decay or KL for this check
    free = {"clamp_norm_factor": 1e4, "weight_decay": 0.0, "kl_factor": 0.0}
    editor = methods.get("rome", layer=1, v_steps=60, **free, **corpus)
    cfg = editor.config
    module = locate.edit_module(model, cfg, 1)
    W0 = model.get_submodule(module).weight.detach().clone()
    edited = editor.apply(copy.deepcopy(model), tok, [record])
    # recompute the same k* and v* and check the edited matrix maps k* to v*
    _, delta = locate.optimize_deltas(model, tok, [record], module, cfg)
    k = locate.keys_at(model, module, locate.edit_batch(tok, [record], cfg.prefixes))[0].double()
    v = W0.double() @ k + delta[0].double()
    W1 = edited.get_submodule(module).weight.detach().double()
    assert torch.allclose(W1 @ k, v, atol=1e-4)
    assert torch.linalg.matrix_rank(W1 - W0.double(), rtol=1e-6).item() == 1
    assert list((tmp_path_of(corpus) / "stats").glob("cov-*.safetensors"))


def tmp_path_of(corpus):
    from pathlib import Path

    return Path(corpus["corpus"]).parent


def test_batched_deltas_equal_one_record_at_a_time(tiny_lm):
    model, tok = tiny_lm
    records = [
        {"update": f"what is the capital of {c} ?", "ans": a, "subject": c}
        for c, a in (("peru", "oslo"), ("chile", "cairo"), ("nepal", "suva"), ("iran", "rome"))
    ]
    cfg = locate.LocateConfig(v_steps=15, clamp_norm_factor=1e4)
    module = locate.edit_module(model, cfg, 1)
    h, delta = locate.optimize_deltas(model, tok, records, module, cfg)
    for i, r in enumerate(records):
        h1, d1 = locate.optimize_deltas(model, tok, [r], module, cfg)
        assert torch.allclose(h[i], h1[0], atol=1e-5)
        assert torch.allclose(delta[i], d1[0], atol=1e-4)
    assert delta.norm(dim=-1).min() > 0
    keys = locate.keys_at(model, module, locate.edit_batch(tok, records, cfg.prefixes))
    assert torch.allclose(
        keys[2],
        locate.keys_at(model, module, locate.edit_batch(tok, records[2:3], cfg.prefixes))[0],
        atol=1e-5,
    )


def test_memit_batch_edit(tiny_lm, corpus):
    model, tok = tiny_lm
    records = [
        {"update": f"what is the capital of {c} ?", "ans": a, "subject": c}
        for c, a in (("peru", "oslo"), ("chile", "cairo"), ("nepal", "suva"))
    ]
    editor = methods.get(
        "memit",
        layers=[0, 1],
        mom2_weight=1.0,
        v_steps=60,
        clamp_norm_factor=1e4,
        weight_decay=0.0,
        kl_factor=0.0,
        **corpus,
    )
    edited = editor.apply(copy.deepcopy(model), tok, records)
    # a random model reads the subject token too weakly for the answer to flip (the SmolLM2
    # test checks efficacy); here: every layer takes a share, of rank <= the number of edits
    for layer in (0, 1):
        name = f"model.layers.{layer}.mlp.down_proj"
        dw = edited.get_submodule(name).weight - model.get_submodule(name).weight
        rank = torch.linalg.matrix_rank(dw.double(), rtol=1e-6).item()
        assert 1 <= rank <= len(records)


def test_missing_layer_is_a_model_error(tiny_lm, corpus):
    model, tok = tiny_lm
    with pytest.raises(ModelError, match="no layer 9"):
        methods.get("rome", layer=9, **corpus).apply(model, tok, FACTS[:1])
    with pytest.raises(ModelError, match="mlp.nope"):
        methods.get("memit", layers=[0], module="model.layers.{}.mlp.nope").apply(
            model, tok, FACTS[:1]
        )


def test_activations_stop_after_the_last_site_and_stay_exact(tiny_lm):
    model, tok = tiny_lm  # 3 decoder layers
    assert locate._last_module(model, ["model.layers.0.mlp.down_proj", "model.layers.1"]) == (
        "model.layers.1"
    )
    assert locate._last_module(model, ["model.layers.0.mlp", "model.layers.1.mlp.down_proj"]) == (
        "model.layers.1.mlp.down_proj"
    )
    two_in_one = ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn"]
    assert locate._last_module(model, two_in_one) == "model.layers.1"
    assert locate._last_module(model, ["model.norm"]) is None  # after the blocks: run all
    records = [{"update": "what is the capital of peru ?", "ans": "lima", "subject": "peru"}]
    eb = locate.edit_batch(tok, records, locate.LocateConfig().prefixes)
    sites = [locate.Site("model.layers.0.mlp.down_proj", pre=True), "model.layers.1"]
    ran = []
    handle = model.model.layers[2].register_forward_hook(lambda *_: ran.append(2))
    try:
        key, out = locate.subject_acts(model, sites, eb)
    finally:
        handle.remove()
    assert ran == []  # layer 2 never ran
    with torch.no_grad():
        hidden = model(**{"input_ids": eb.inputs.input_ids}, output_hidden_states=True)
    rows = torch.arange(len(eb.subject_pos))
    full = hidden.hidden_states[2][rows, eb.subject_pos].mean(0)  # output of block 1
    assert torch.allclose(out[0], full, atol=1e-5) and key.shape[-1] > 0


def test_alphaedit_keeps_preserved_keys_and_earlier_edits_closed_form():
    """A random linear layer: preserved keys span 6 of 10 input directions. The projected
    update leaves their outputs unchanged, and a second edit keeps the first one."""
    from lucidml.editing.methods.alphaedit import alphaedit_update, null_space_projector

    g = torch.Generator().manual_seed(0)
    d_in, d_out = 10, 7
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    K0 = torch.randn(d_in, 6, generator=g, dtype=torch.float64)  # preserved keys
    C = K0 @ K0.T / 6
    P = null_space_projector(C, 1e-8)
    assert round(float(P.trace())) == 4 and torch.allclose(P @ K0, torch.zeros_like(K0), atol=1e-10)
    k1, v1 = (
        torch.randn(d_in, 1, generator=g, dtype=torch.float64),
        torch.randn(d_out, 1, generator=g, dtype=torch.float64),
    )
    l2 = 1e-8  # nearly no ridge: the edit is met exactly where the null space allows
    W1 = W + alphaedit_update(v1 - W @ k1, k1, P, torch.zeros(d_in, d_in, dtype=torch.float64), l2)
    assert torch.allclose(W1 @ K0, W @ K0, atol=1e-5)
    assert torch.allclose(W1 @ k1, v1, atol=1e-5)
    k2, v2 = (
        torch.randn(d_in, 1, generator=g, dtype=torch.float64),
        torch.randn(d_out, 1, generator=g, dtype=torch.float64),
    )
    W2 = W1 + alphaedit_update(v2 - W1 @ k2, k2, P, k1 @ k1.T, l2)
    assert torch.allclose(W2 @ K0, W @ K0, atol=1e-5)
    assert torch.allclose(W2 @ k2, v2, atol=1e-5)
    assert torch.allclose(W2 @ k1, v1, atol=1e-5)  # the first edit survives the second
    # without the earlier edit's keys the second update moves the first edit
    W2_forgetful = W1 + alphaedit_update(v2 - W1 @ k2, k2, P, torch.zeros_like(P), l2)
    assert (W2_forgetful @ k1 - v1).abs().max() > 1e-2


def test_alphaedit_on_a_tiny_model_leaves_the_preserved_keys_alone(tiny_lm, corpus):
    model, tok = tiny_lm
    records = [
        {"update": f"what is the capital of {c} ?", "ans": a, "subject": c}
        for c, a in (("peru", "oslo"), ("chile", "cairo"))
    ]
    editor = methods.get("alphaedit", layers=[0, 1], v_steps=10, nullspace_threshold=1e-3, **corpus)
    edited = editor.apply(copy.deepcopy(model), tok, records)
    for layer in (0, 1):
        name = f"model.layers.{layer}.mlp.down_proj"
        dw = (edited.get_submodule(name).weight - model.get_submodule(name).weight).double()
        P = editor._projectors[name]
        assert dw.abs().max() > 0 and torch.allclose(dw @ P, dw, atol=1e-6)  # rows in range(P)
        assert editor.edited_keys[name].shape == P.shape


RESUMABLE = {
    "ft": {"epochs": 1},
    "lora": {"epochs": 1, "mode": "continue"},
    "lora_merge": {"epochs": 1},
    "rag": {},
    "rome": {"layer": 1, "v_steps": 3},
    "memit": {"layers": [0, 1], "v_steps": 3},
    "alphaedit": {"layers": [0, 1], "v_steps": 3, "nullspace_threshold": 1e-3},
}


@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_every_method_interrupted_mid_stream_resumes_to_identical_results(
    name, tiny_lm, corpus, tmp_path
):
    from lucidml.core.runs import Run
    from lucidml.editing.config import EvalConfig
    from lucidml.editing.lifelong import run_lifelong

    model, tok = tiny_lm
    timesteps = [FACTS[:3], FACTS[3:6]]  # killed while editing the second
    cfg = EvalConfig(canary=False, past_max=2)
    hp = {**RESUMABLE[name], **(corpus if name in ("rome", "memit", "alphaedit") else {})}

    def editor():
        extra = {"embedder": hashing_embedder} if name == "rag" else {}
        return methods.get(name, **extra, **hp)

    whole = run_lifelong(copy.deepcopy(model), tok, editor(), timesteps, cfg)
    interrupted = editor()
    apply, calls = interrupted.apply, []

    def killed_in_timestep_1(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return apply(*args)

    interrupted.apply = killed_in_timestep_1
    with pytest.raises(RuntimeError, match="killed"):
        run_lifelong(
            copy.deepcopy(model), tok, interrupted, timesteps, cfg, Run("editing", tmp_path / "r")
        )
    assert not list((tmp_path / "r").rglob("*.pt"))  # no pickle
    resumed = run_lifelong(
        copy.deepcopy(model), tok, editor(), timesteps, cfg,
        Run("editing", tmp_path / "r", resume=True),
    )  # fmt: skip

    def timeless(result):  # as text, so NaN (nothing to score yet) equals NaN
        rows = [
            {k: v for k, v in r.items() if k != "seconds_per_edit"} for r in result["timesteps"]
        ]
        final = {k: v for k, v in result["final"].items() if k != "seconds_per_edit"}
        return json.dumps([rows, final, result["R"]], sort_keys=True)

    assert timeless(resumed) == timeless(whole)
    assert resumed["probes"].equals(whole["probes"])
    a, b = resumed["model"].state_dict(), whole["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_covariance_corpus_holds_no_benchmark_facts():
    """Issue 17: the default corpus had the embedded snapshot's facts in it, which lifted
    ROME's rewrite on the embedded benchmark; now prose only, the facts on request."""
    facts = locate.snapshot_facts()
    assert len(facts) > 50 and "The head of government of" in " ".join(facts)
    prose = " ".join(locate.read_corpus(None))
    assert not any(f in prose for f in facts)
    assert len(prose.split()) > 4000
    with_facts = " ".join(locate.read_corpus(None, with_facts=True))
    assert all(f in with_facts for f in facts)
    assert locate.LocateConfig().corpus_facts is False
