"""Merge operators against hand-computed answers (spec §5.1–5.6) and the streaming protocol."""

import math
import random

import pytest
import torch

from lucidml.errors import InputError
from lucidml.merging.techniques import (
    METHODS,
    available,
    check_compatible,
    kept_count,
    lines_scales,
    merge,
)

ALL_METHODS = (
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "magmax",
    "random",
    "model_stock",
)


def vec(*values):
    return torch.tensor(values, dtype=torch.float32)


def on_base(base, *task_vectors):
    """Expert state dicts θ_i = θ₀ + τ_i for one key 'w'."""
    return [{"w": base["w"] + tau} for tau in task_vectors]


# Three experts × four entries on θ₀ = 1 (spec §5.2).
TOY_BASE = {"w": vec(1, 1, 1, 1)}
TOY_TAUS = (vec(3, -1, 0.5, 2), vec(-1, 2, 0.2, 4), vec(2, -3, 1, -0.5))
TOY = on_base(TOY_BASE, *TOY_TAUS)


def random_models(n_experts=3, seed=0, quantized=False):
    """A base and experts with several keys: 2-D, 1-D, 0-D, bf16 and an integer buffer.

    ``quantized`` rounds task vectors to multiples of 0.5 so magnitudes tie a lot."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "encoder.layers.0.weight": (4, 6),
        "encoder.layers.1.weight": (4, 6),
        "encoder.layers.1.bias": (4,),
        "head.scale": (),
        "head.weight": (3, 4),
    }
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base["head.weight"] = base["head.weight"].bfloat16()
    base["position_ids"] = torch.arange(5)
    experts = []
    for _ in range(n_experts):
        expert = {}
        for key, tensor in base.items():
            if not tensor.is_floating_point():
                expert[key] = tensor.clone()
                continue
            tau = torch.randn(tensor.shape, generator=g)
            tau = (tau * 2).round() / 2 if quantized else tau
            expert[key] = (tensor.float() + tau).to(tensor.dtype)
        experts.append(expert)
    return base, experts


# ---------------------------------------------------------------- registry and identities


def test_registry_lists_every_method():
    assert available() == list(ALL_METHODS)
    assert set(METHODS) == set(ALL_METHODS)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m != "slerp"])
def test_merging_one_model_returns_it(method):
    # spec §5.1: one-model interpolation, TA(λ=1), TIES(ρ=0, sum), ... are the identity
    base, experts = random_models(n_experts=1)
    params = {
        "ties": {"drop_fraction": 0.0, "merge": "sum"},
        "breadcrumbs": {"density": 1.0, "gamma": 0},
    }
    params.update({"dare_linear": {"density": 1.0}, "dare_ties": {"density": 1.0}})
    merged = merge(method, base, experts, **params.get(method, {}))
    for key, tensor in experts[0].items():
        assert merged[key].dtype == tensor.dtype
        torch.testing.assert_close(merged[key], tensor, rtol=0, atol=1e-6)


def test_linear_weights_normalise_by_default_and_can_be_used_as_given():
    a, b = {"w": vec(1, 2)}, {"w": vec(3, -2)}
    # uniform: (a + b) / 2 = [2, 0]
    assert torch.equal(merge("linear", None, [a, b])["w"], vec(2, 0))
    # [1, 3] normalised to [0.25, 0.75]: [0.25 + 2.25, 0.5 − 1.5] = [2.5, −1]
    assert torch.equal(merge("linear", None, [a, b], weights=[1, 3])["w"], vec(2.5, -1))
    # as given (mergekit #213): 2a − b = [2 − 3, 4 + 2] = [−1, 6]
    merged = merge("linear", None, [a, b], weights=[2, -1], normalize=False)
    assert torch.equal(merged["w"], vec(-1, 6))


def test_task_arithmetic_hand_values():
    # θ₀ + λ·Σ w_i τ_i = 1 + 0.5·(2·[3,−1,.5,2] + 1·[−1,2,.2,4] + 0·…) = 1 + 0.5·[5,0,1.2,8]
    merged = merge("task_arithmetic", TOY_BASE, TOY, weights=[2, 1, 0], lam=0.5)
    torch.testing.assert_close(merged["w"], vec(3.5, 1, 1.6, 5))


# ---------------------------------------------------------------- TIES


def test_ties_hand_toy_counts_signs_and_means():
    # density 0.5 keeps 2 of 4 per expert:
    #   τ1 → [3, 0, 0, 2], τ2 → [0, 2, 0, 4], τ3 → [2, −3, 0, 0]
    # sum [5, −1, 0, 6] elects signs [+, −, 0, +]; agreeing entries:
    #   e0: 3, 2 → mean 2.5 | e1: −3 (τ2's +2 disagrees) | e2: none → 0 | e3: 2, 4 → mean 3
    merged = merge("ties", TOY_BASE, TOY, density=0.5)
    torch.testing.assert_close(merged["w"], 1 + vec(2.5, -3, 0, 3))
    # sum: [5, −3, 0, 6]; max: [3, −3, 0, 4]
    torch.testing.assert_close(
        merge("ties", TOY_BASE, TOY, density=0.5, merge="sum")["w"], 1 + vec(5, -3, 0, 6)
    )
    torch.testing.assert_close(
        merge("ties", TOY_BASE, TOY, density=0.5, majority="max")["w"], 1 + vec(3, -3, 0, 4)
    )
    # λ = 2 doubles τ̂; drop_fraction 0.5 is the same trim as density 0.5
    doubled = merge("ties", TOY_BASE, TOY, drop_fraction=0.5, lam=2)
    torch.testing.assert_close(doubled["w"], 1 + 2 * vec(2.5, -3, 0, 3))


def test_ties_keeping_everything_with_unanimous_signs_equals_task_arithmetic():
    g = torch.Generator().manual_seed(2)
    base = {"w": torch.randn(4, 6, generator=g), "b": torch.randn(6, generator=g)}
    signs = {k: torch.randn(t.shape, generator=g).sign() for k, t in base.items()}
    # every τ_i = sign · |noise|: all experts agree on every entry's sign
    experts = [
        {k: t + signs[k] * torch.rand(t.shape, generator=g) for k, t in base.items()}
        for _ in range(3)
    ]
    ties = merge("ties", base, experts, density=1.0, merge="sum", lam=0.7, weights=[1, 2, 0.5])
    ta = merge("task_arithmetic", base, experts, lam=0.7, weights=[1, 2, 0.5])
    for key in base:
        torch.testing.assert_close(ties[key], ta[key], rtol=0, atol=1e-6)


def test_ties_trim_keeps_exact_counts_with_ties_in_index_order():
    base = {"w": torch.zeros(5)}
    expert = [{"w": torch.ones(5)}]
    # five equal magnitudes: density 0.4 keeps round(2) = 2, the first two
    assert torch.equal(merge("ties", base, expert, density=0.4)["w"], vec(1, 1, 0, 0, 0))
    # 0.5·5 = 2.5 rounds half up to 3
    assert kept_count(0.5, 5) == 3
    assert torch.equal(merge("ties", base, expert, density=0.5)["w"], vec(1, 1, 1, 0, 0))
    # density 0 keeps nothing (θ₀), density 1 everything
    assert torch.equal(merge("ties", base, expert, density=0.0)["w"], torch.zeros(5))
    assert torch.equal(merge("ties", base, expert, density=1.0)["w"], torch.ones(5))
    # [2, 1, 2, 2, 0]: density 0.4 keeps 2 → the first two of the three tied 2s
    tied = [{"w": vec(2, 1, 2, 2, 0)}]
    assert torch.equal(merge("ties", base, tied, density=0.4)["w"], vec(2, 0, 2, 0, 0))


def test_global_ties_threshold_spans_tensors():
    base = {"a": torch.zeros(2), "b": torch.zeros(3)}
    experts = [
        {"a": vec(5, 6), "b": vec(1, 2, 3)},
        {"a": vec(-1, 0.5), "b": vec(2, -4, 3)},
    ]
    # 5 entries per expert, density 0.4 keeps 2 over both tensors:
    #   expert 0: |τ| 5,6,1,2,3 → keeps 6, 5 → a [5, 6], b [0, 0, 0]
    #   expert 1: |τ| 1,.5,2,4,3 → keeps 4, 3 → a [0, 0], b [0, −4, 3]
    # one expert per entry is non-zero, so the mean is that entry
    merged = merge("ties", base, experts, density=0.4, scope="global")
    assert torch.equal(merged["a"], vec(5, 6))
    assert torch.equal(merged["b"], vec(0, -4, 3))
    # per tensor instead: a keeps round(0.8) = 1, b round(1.2) = 1
    #   expert 0: a [0, 6], b [0, 0, 3]; expert 1: a [−1, 0], b [0, −4, 0]
    per_tensor = merge("ties", base, experts, density=0.4)
    assert torch.equal(per_tensor["a"], vec(-1, 6))
    assert torch.equal(per_tensor["b"], vec(0, -4, 3))


def test_global_ties_breaks_ties_by_sorted_key_then_index():
    # |τ| = a [2, 1], b [2, 2]; density 0.5 keeps 2 of 4; three entries tie at 2:
    # keys in sorted order (a before b) then index → a[0], b[0] kept, b[1] dropped,
    # even though the dict lists b first
    base = {"b": torch.zeros(2), "a": torch.zeros(2)}
    experts = [{"b": vec(2, 2), "a": vec(2, 1)}]
    merged = merge("ties", base, experts, density=0.5, scope="global")
    assert torch.equal(merged["a"], vec(2, 0))
    assert torch.equal(merged["b"], vec(2, 0))
    assert list(merged) == ["b", "a"]


# ---------------------------------------------------------------- DARE, Breadcrumbs, MagMax, random


def test_dare_is_unbiased_over_seeds():
    # E[m·τ/p] = τ with m ~ Bernoulli(p); the mean of S draws has σ = |τ|·√((1−p)/(p·S))
    base, tau, density, seeds = {"w": torch.zeros(6)}, vec(1, -2, 0.5, 3, -0.25, 4), 0.3, 2000
    experts = [{"w": tau}]
    draws = torch.stack(
        [merge("dare_linear", base, experts, density=density, seed=s)["w"] for s in range(seeds)]
    )
    sigma = tau.abs() * math.sqrt((1 - density) / (density * seeds))
    assert ((draws.mean(0) - tau).abs() <= 3 * sigma).all()
    # each draw keeps entries unchanged up to the 1/p rescale, or drops them
    assert torch.isclose(draws, (tau / density).expand_as(draws)).logical_or(draws == 0).all()


def test_dare_is_seeded_per_key():
    base, experts = random_models()
    once = merge("dare_ties", base, experts, density=0.5, seed=7)
    again = merge("dare_ties", base, experts, density=0.5, seed=7)
    other = merge("dare_ties", base, experts, density=0.5, seed=8)
    assert all(torch.equal(once[k], again[k]) for k in base)
    assert not torch.equal(once["encoder.layers.0.weight"], other["encoder.layers.0.weight"])
    # two keys of the same shape get different masks
    taus = [{k: torch.ones(50) for k in "ab"}]
    masks = merge("dare_linear", {k: torch.zeros(50) for k in "ab"}, taus, density=0.5, seed=7)
    assert not torch.equal(masks["a"], masks["b"])
    # one key alone draws the same mask as within the whole model
    alone = merge(
        "dare_ties",
        {"head.scale": base["head.scale"]},
        [{"head.scale": e["head.scale"]} for e in experts],
        density=0.5,
        seed=7,
    )
    assert torch.equal(alone["head.scale"], once["head.scale"])


def test_dare_ties_elects_after_dropping():
    # density 1 drops nothing, so dare_ties is TIES without a trim: e0 [3, −1, 2] → +, mean 2.5
    merged = merge("dare_ties", TOY_BASE, TOY, density=1.0)
    torch.testing.assert_close(merged["w"], merge("ties", TOY_BASE, TOY, density=1.0)["w"])
    # density 0 drops everything: θ₀
    assert torch.equal(merge("dare_linear", TOY_BASE, TOY, density=0.0)["w"], TOY_BASE["w"])


def test_breadcrumbs_masks_each_row():
    base = {"m": torch.zeros(2, 5), "v": torch.zeros(5)}
    expert = {"m": torch.tensor([[5, 1, 4, 2, 3], [-1, -2, 3, 0.5, 10]]), "v": vec(5, 1, 4, 2, 3)}
    # rows of 5, gamma 0.2 drops the top round(1) = 1, density 0.6 keeps the next round(3) = 3:
    #   [5, 1, 4, 2, 3]: order 5 > 4 > 3 > 2 > 1 → drop 5, keep 4, 3, 2 → [0, 0, 4, 2, 3]
    #   [−1, −2, 3, .5, 10]: order 10 > 3 > 2 > 1 > .5 → drop 10, keep 3, −2, −1
    # the 1-D tensor is one row
    merged = merge("breadcrumbs", base, [expert], density=0.6, gamma=0.2)
    assert torch.equal(merged["m"], torch.tensor([[0, 0, 4, 2, 3], [-1, -2, 3, 0, 0.0]]))
    assert torch.equal(merged["v"], vec(0, 0, 4, 2, 3))


def test_breadcrumbs_elects_signs_like_ties():
    # density 0.5, gamma 0.25 on 4 entries: drop the top 1, keep the next 2:
    #   τ1 [3, −1, .5, 2] → [0, −1, 0, 2]; τ2 [−1, 2, .2, 4] → [−1, 2, 0, 0];
    #   τ3 [2, −3, 1, −.5] → [2, 0, 1, 0]
    # sums [1, 1, 1, 2] → all +: e0 2, e1 2, e2 1, e3 2
    merged = merge("breadcrumbs", TOY_BASE, TOY, density=0.5, gamma=0.25)
    torch.testing.assert_close(merged["w"], 1 + vec(2, 2, 1, 2))


def test_magmax_takes_the_largest_magnitude():
    base = {"w": torch.zeros(3)}
    # |τ|: e0 1 vs 2 → −2; e1 3 vs 2 → −3; e2 tie → the first expert's 0.5
    experts = [{"w": vec(1, -3, 0.5)}, {"w": vec(-2, 2, 0.5)}]
    assert torch.equal(merge("magmax", base, experts)["w"], vec(-2, -3, 0.5))
    # weights scale τ before the comparison: 3·τ1 = [3, −9, 1.5] wins everywhere
    assert torch.equal(merge("magmax", base, experts, weights=[3, 1])["w"], vec(3, -9, 1.5))


def test_random_picks_each_expert_uniformly():
    n_entries, n_experts = 30_000, 3
    base = {"w": torch.zeros(n_entries)}
    experts = [{"w": torch.full((n_entries,), float(i + 1))} for i in range(n_experts)]
    picked = merge("random", base, experts, seed=3)["w"]
    p = 1 / n_experts
    sigma = math.sqrt(p * (1 - p) / n_entries)
    for i in range(n_experts):
        assert abs((picked == i + 1).float().mean().item() - p) <= 3 * sigma


# ---------------------------------------------------------------- Model Stock and SLERP


def test_model_stock_identical_experts_give_the_expert():
    base, experts = random_models(n_experts=1)
    merged = merge("model_stock", base, [experts[0]] * 3)
    for key in base:
        torch.testing.assert_close(merged[key], experts[0][key], rtol=0, atol=1e-6)


def test_model_stock_orthogonal_or_opposed_task_vectors_give_the_base():
    base = {"w": vec(1, 2, 3)}
    orthogonal = on_base(base, vec(1, 0, 0), vec(0, 2, 0), vec(0, 0, -3))
    assert torch.equal(merge("model_stock", base, orthogonal)["w"], base["w"])
    # c̄ = −1 is clamped to 0, so t = 0
    opposed = on_base(base, vec(1, 0, 0), vec(-1, 0, 0))
    assert torch.equal(merge("model_stock", base, opposed)["w"], base["w"])


def test_model_stock_hand_values_for_two_and_three_experts():
    base = {"w": torch.zeros(3)}
    # N = 2 (the reference): τ [1, 0, 0], [1, 1, 0]: cos = 1/√2, t = 2c/(1 + c) = 2(√2 − 1)
    # mean θ = [1, 0.5, 0] → t·[1, 0.5, 0]
    t = 2 * (math.sqrt(2) - 1)
    merged = merge("model_stock", base, on_base(base, vec(1, 0, 0), vec(1, 1, 0)))
    torch.testing.assert_close(merged["w"], vec(t, t / 2, 0))
    # N = 3: τ [1,0,0], [0,1,0], [1,1,0]: cosines 0, 1/√2, 1/√2 → c̄ = √2/3
    # t = 3c̄/(2c̄ + 1); mean θ = [2/3, 2/3, 0]
    c = math.sqrt(2) / 3
    t = 3 * c / (2 * c + 1)
    merged = merge("model_stock", base, on_base(base, vec(1, 0, 0), vec(0, 1, 0), vec(1, 1, 0)))
    torch.testing.assert_close(merged["w"], vec(2 * t / 3, 2 * t / 3, 0))


def test_slerp_endpoints_hand_value_and_unit_norm():
    a, b = {"w": vec(1, 0)}, {"w": vec(0, 1)}
    assert torch.equal(merge("slerp", None, [a, b], t=0.0)["w"], a["w"])
    assert torch.equal(merge("slerp", None, [a, b], t=1.0)["w"], b["w"])
    # Ω = π/2; t = 1/3: [sin(π/3), sin(π/6)] / sin(π/2) = [√3/2, 1/2]
    torch.testing.assert_close(
        merge("slerp", None, [a, b], t=1 / 3)["w"], vec(math.sqrt(3) / 2, 0.5)
    )
    g = torch.Generator().manual_seed(1)
    u, v = (torch.randn(64, generator=g) for _ in range(2))
    unit = [{"w": u / u.norm()}, {"w": v / v.norm()}]
    for t in (0.1, 0.5, 0.9):
        assert abs(merge("slerp", None, unit, t=t)["w"].norm().item() - 1) < 1e-5


def test_slerp_falls_back_to_lerp_when_nearly_parallel():
    # cos Ω = 1/√1.0001 ≈ 0.99995 > 0.9995 → (1 − t)a + t·b = [1, 0.0025] at t = 0.25
    a, b = {"w": vec(1, 0)}, {"w": vec(1, 0.01)}
    torch.testing.assert_close(
        merge("slerp", a, [a, b], t=0.25)["w"], vec(1, 0.0025), rtol=0, atol=1e-7
    )


# ---------------------------------------------------------------- LiNeS


OPEN_CLIP_KEYS = [
    "visual.conv1.weight",
    *(f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)),
    *(f"visual.transformer.resblocks.{i}.mlp.c_fc.weight" for i in range(4)),
    "visual.ln_post.weight",
]
HF_CLIP_KEYS = [
    "vision_model.embeddings.patch_embedding.weight",
    *(f"vision_model.encoder.layers.{i}.self_attn.q_proj.weight" for i in range(3)),
    "vision_model.post_layernorm.weight",
]
LLAMA_KEYS = [
    "model.embed_tokens.weight",
    *(f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)),
    "lm_head.weight",
]


def test_lines_scales_on_open_clip_keys():
    scales = lines_scales(OPEN_CLIP_KEYS, r"transformer\.resblocks\.(\d+)\.", alpha=0.2, beta=0.6)
    # L = 4: block l gets 0.2 + 0.6·l/3; non-block keys 0.2
    assert scales["visual.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(0.2)
    assert scales["visual.transformer.resblocks.1.mlp.c_fc.weight"] == pytest.approx(0.4)
    assert scales["visual.transformer.resblocks.3.mlp.c_fc.weight"] == pytest.approx(0.8)
    assert scales["visual.conv1.weight"] == scales["visual.ln_post.weight"] == 0.2
    # g = x²: block 1 → 0.2 + 0.6/9; g = √x: 0.2 + 0.6·√(1/3)
    key = "visual.transformer.resblocks.1.attn.in_proj_weight"
    square = lines_scales(OPEN_CLIP_KEYS, r"transformer\.resblocks\.(\d+)\.", 0.2, 0.6, g="square")
    root = lines_scales(OPEN_CLIP_KEYS, r"transformer\.resblocks\.(\d+)\.", 0.2, 0.6, g="sqrt")
    assert square[key] == pytest.approx(0.2 + 0.6 / 9)
    assert root[key] == pytest.approx(0.2 + 0.6 * math.sqrt(1 / 3))


@pytest.mark.parametrize(
    ("keys", "pattern", "first", "last", "outside"),
    [
        (
            HF_CLIP_KEYS,
            r"encoder\.layers\.(\d+)\.",
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_model.encoder.layers.2.self_attn.q_proj.weight",
            "vision_model.post_layernorm.weight",
        ),
        (
            LLAMA_KEYS,
            r"model\.layers\.(\d+)\.",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.4.mlp.up_proj.weight",
            "lm_head.weight",
        ),
    ],
)
def test_lines_scales_on_transformers_keys(keys, pattern, first, last, outside):
    scales = lines_scales(keys, pattern)  # α = β = 0.5
    assert scales[first] == 0.5
    assert scales[last] == 1.0
    assert scales[outside] == 0.5


def test_lines_scales_the_merged_task_vector():
    keys = ["encoder.layers.0.w", "encoder.layers.1.w", "head.w"]
    base = {k: torch.zeros(2) for k in keys}
    experts = [{k: torch.ones(2) for k in keys}]
    lines = {"pattern": r"encoder\.layers\.(\d+)\.", "alpha": 0.5, "beta": 0.5}
    # multiply: s·λ with s = [0.5, 1, 0.5], λ = 2 → [1, 2, 1]
    multiplied = merge("task_arithmetic", base, experts, lam=2, lines={**lines, "mode": "multiply"})
    assert [multiplied[k][0].item() for k in keys] == [1, 2, 1]
    # replace (the default): s instead of λ → [0.5, 1, 0.5]; TIES the same way
    replaced = merge("ties", base, experts, density=1.0, lines=lines)
    assert [replaced[k][0].item() for k in keys] == [0.5, 1, 0.5]
    with pytest.raises(InputError, match="lam has no effect"):
        merge("task_arithmetic", base, experts, lam=2, lines=lines)


# ---------------------------------------------------------------- protocol, purity, dtypes


PROTOCOL_CASES = [
    ("linear", False, [0.2, 0.5, 0.3], {}),
    ("slerp", False, None, {"t": 0.3}),
    ("task_arithmetic", True, [1, 0.5, 2], {"lam": 0.8}),
    ("ties", True, None, {"density": 0.3, "scope": "global"}),
    (
        "ties",
        True,
        [1, 2, 1],
        {
            "density": 0.5,
            "merge": "max",
            "lines": {"pattern": r"layers\.(\d+)\.", "mode": "multiply"},
        },
    ),
    ("dare_linear", True, None, {"density": 0.4, "seed": 5}),
    ("dare_ties", True, None, {"density": 0.6, "seed": 2, "merge": "sum"}),
    ("breadcrumbs", True, None, {"density": 0.5, "gamma": 0.1}),
    ("magmax", True, None, {"lam": 0.5}),
    ("random", True, None, {"seed": 11}),
    ("model_stock", True, None, {}),
]


@pytest.mark.parametrize(("method", "uses_base", "weights", "params"), PROTOCOL_CASES)
def test_protocol_in_shuffled_order_equals_merge_bit_for_bit(method, uses_base, weights, params):
    base, experts = random_models(quantized=True)
    if method == "slerp":
        experts = experts[:2]
    base_or_none = base if uses_base else None
    expected = merge(method, base_or_none, experts, weights, **params)
    operator = METHODS[method]
    checked = operator.check(len(experts), weights, params)
    order = random.Random(4).sample(list(base), len(base))
    stats = None
    if operator.needs_stats(checked):
        recs = [
            operator.collect(k, base[k] if uses_base else None, [e[k] for e in experts], checked)
            for k in order
        ]
        stats = operator.finalize(recs, checked)
    for key in reversed(order):
        out = operator.apply(
            key,
            base[key] if uses_base else None,
            [e[key] for e in experts],
            weights,
            checked,
            stats,
        )
        assert out.dtype == base[key].dtype
        assert torch.equal(out, expected[key]), key


@pytest.mark.parametrize(("method", "uses_base", "weights", "params"), PROTOCOL_CASES)
def test_inputs_are_not_mutated_nor_shared(method, uses_base, weights, params):
    base, experts = random_models()
    if method == "slerp":
        experts = experts[:2]
    before = [{k: t.clone() for k, t in model.items()} for model in (base, *experts)]
    merged = merge(method, base if uses_base else None, experts, weights, **params)
    for tensor in merged.values():
        tensor.add_(1)  # writing into the result must not reach an input
    for original, model in zip(before, (base, *experts), strict=True):
        assert all(torch.equal(original[k], model[k]) for k in model)


def test_dtypes_follow_the_base_and_integer_tensors_are_copied():
    base, experts = random_models()
    merged = merge("ties", base, experts, density=0.5)
    assert merged["head.weight"].dtype == torch.bfloat16
    assert torch.equal(merged["position_ids"], base["position_ids"])
    half = [{k: (t.half() if t.is_floating_point() else t) for k, t in e.items()} for e in experts]
    assert merge("task_arithmetic", base, half)["encoder.layers.0.weight"].dtype == torch.float32


def test_check_compatible_accepts_meta_tensors():
    meta = {"w": torch.empty(3, 2, device="meta")}
    check_compatible(
        meta, [dict(meta), {"w": torch.empty(3, 2, dtype=torch.bfloat16, device="meta")}]
    )


# ---------------------------------------------------------------- bad input


def bad(name, message, *args, **kwargs):
    """A merge call that must raise InputError matching ``message``."""
    return pytest.param(args, kwargs, message, id=name)


ZERO = torch.zeros(1)
BAD_INPUT = [
    bad(
        "missing key", r"experts\[0\] lacks key 'b'", "ties", {"a": ZERO, "b": ZERO}, [{"a": ZERO}]
    ),
    bad(
        "extra key",
        r"experts\[0\] has key 'c', which the base lacks",
        "ties",
        {"a": ZERO},
        [{"a": ZERO, "c": ZERO}],
    ),
    bad(
        "shape",
        r"key 'w' has shape \(3, 2\) in experts\[1\] but \(2, 3\) in experts\[0\]",
        "linear",
        None,
        [{"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2)}],
    ),
    bad("dtype kind", "key 'w' is torch.int64", "ties", {"w": ZERO}, [{"w": ZERO.long()}]),
    bad(
        "weights length",
        "weights has 2 entries but there are 3 experts",
        "task_arithmetic",
        TOY_BASE,
        TOY,
        weights=[1, 2],
    ),
    bad("weights sum 0", "sum to 0", "linear", None, TOY, weights=[1, -1, 0]),
    bad("unknown method", "unknown merge method 'nope'", "nope", TOY_BASE, TOY),
    bad(
        "density 1.5",
        "density must be a finite number between 0 and 1, got 1.5",
        "ties",
        TOY_BASE,
        TOY,
        density=1.5,
    ),
    bad("density vs drop", "disagree", "ties", TOY_BASE, TOY, density=0.3, drop_fraction=0.5),
    bad("merge vs majority", "disagree", "ties", TOY_BASE, TOY, merge="mean", majority="sum"),
    bad("merge name", "merge must be one of mean, sum, max", "ties", TOY_BASE, TOY, merge="median"),
    bad("scope name", "scope must be one of tensor, global", "ties", TOY_BASE, TOY, scope="model"),
    bad("typo", "ties does not take the parameter 'densty'", "ties", TOY_BASE, TOY, densty=0.5),
    bad(
        "lines on linear",
        "linear does not take the parameter 'lines'",
        "linear",
        None,
        TOY,
        lines={},
    ),
    bad("gamma + density", "exceeds 1", "breadcrumbs", TOY_BASE, TOY, density=0.9, gamma=0.2),
    bad("slerp of 3", "slerp merges exactly 2 models, got 3", "slerp", None, TOY),
    bad("slerp weights", "slerp takes t", "slerp", None, TOY[:2], weights=[0.5, 0.5]),
    bad("no base", "ties needs a base model", "ties", None, TOY),
    bad(
        "stock weights",
        "model_stock takes no weights",
        "model_stock",
        TOY_BASE,
        TOY,
        weights=[1, 1, 1],
    ),
    bad("seed", "seed must be an integer", "dare_linear", TOY_BASE, TOY, seed=1.5),
    bad("no experts", "at least one expert", "linear", None, []),
    bad(
        "no group",
        "needs exactly one",
        "task_arithmetic",
        TOY_BASE,
        TOY,
        lines={"pattern": r"layers\.\d+"},
    ),
    bad(
        "no block",
        "matches none of the 1 keys",
        "task_arithmetic",
        TOY_BASE,
        TOY,
        lines={"pattern": r"layers\.(\d+)", "mode": "multiply"},
    ),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_INPUT)
def test_bad_input_raises_one_clear_sentence(args, kwargs, message):
    with pytest.raises(InputError, match=message) as caught:
        merge(*args, **kwargs)
    text = str(caught.value)
    assert "\n" not in text and ". " not in text


def test_ties_weighted_mean_divides_by_the_agreeing_weights():
    # mergekit's TIES with normalize: true. Scaled τ: [0.6, -0.6] and [1.2, 0.4].
    # entry 0: both positive -> (0.6 + 1.2) / (0.6 + 0.4) = 1.8
    # entry 1: sum -0.2 elects "-", only expert 1 agrees -> -0.6 / 0.6 = -1.0
    base = {"w": torch.zeros(2)}
    experts = [{"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([3.0, 1.0])}]
    out = merge("ties", base, experts, [0.6, 0.4], density=1.0, merge="weighted_mean")
    torch.testing.assert_close(out["w"], torch.tensor([1.8, -1.0]))
