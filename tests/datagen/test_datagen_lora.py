"""LoRA placement, fitting, saving and exact fusion on the tiny Stable Diffusion pipeline."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from lucidml.datagen.backbone import from_stable_diffusion
from lucidml.datagen.config import AdapterConfig
from lucidml.datagen.lora import (
    Adapter,
    bake,
    check_adapters,
    fit_adapters,
    fused,
    runtime_adapters,
    target_modules,
)
from lucidml.errors import ConfigError, InputError, ShapeError
from lucidml.testing import tiny_sd_pipeline

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return from_stable_diffusion(tiny_sd_pipeline(), "tiny-sd")


def _images(n, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _random_adapter(unet, rank, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    layers = dict(unet.named_modules())
    factors = {}
    for m in target_modules(unet, TARGETS):
        d_out, d_in = layers[m].weight.shape
        factors[m] = (
            scale * torch.randn(rank, d_in, generator=g),
            scale * torch.randn(d_out, rank, generator=g),
        )
    return Adapter(factors, rank, float(2 * rank), {"file": f"random-{seed}"})


def test_targets_are_the_attention_projections_and_a_missing_one_is_refused(backbone):
    modules = target_modules(backbone.unet, TARGETS)
    assert modules and all(m.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") for m in modules)
    assert len(modules) % 4 == 0
    assert all(isinstance(dict(backbone.unet.named_modules())[m], nn.Linear) for m in modules)
    with pytest.raises(ConfigError, match="add_k_proj"):
        target_modules(backbone.unet, [*TARGETS, "add_k_proj"])


def test_fitting_trains_only_lora_and_leaves_the_base_bit_identical(backbone):
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    cfg = AdapterConfig(steps=5, lr=1e-2)
    (adapter,) = fit_adapters(backbone, [(_images(1), ["a cat"])], cfg, seeds=[0])
    after = backbone.unet.state_dict()
    assert set(after) == set(before)  # no wrapper layers left behind
    assert all(torch.equal(before[k], after[k]) for k in before)
    layers = dict(backbone.unet.named_modules())
    expected = sum(
        cfg.rank * (layers[m].in_features + layers[m].out_features) for m in adapter.factors
    )
    assert sum(A.numel() + B.numel() for A, B in adapter.factors.values()) == expected
    assert adapter.scale == 1.0
    assert any(B.abs().max() > 0 for _, B in adapter.factors.values())  # B moved off zero


def test_many_loras_in_one_pass_equal_each_fitted_alone(backbone):
    cfg = AdapterConfig(steps=4, lr=1e-2)
    groups = [(_images(1, s), [p]) for s, p in enumerate(["a cat", "a dog", "a red bird"])]
    together = fit_adapters(backbone, groups, cfg, seeds=[10, 11, 12])
    alone = fit_adapters(backbone, groups[1:2], cfg, seeds=[11])[0]
    for m, (A, B) in alone.factors.items():
        torch.testing.assert_close(together[1].factors[m][0], A, atol=1e-5, rtol=0)
        torch.testing.assert_close(together[1].factors[m][1], B, atol=1e-5, rtol=0)
    assert not torch.equal(together[0].factors[m][1], together[1].factors[m][1])


def test_fused_and_runtime_fusion_are_the_exact_weighted_sum(backbone):
    unet = backbone.unet
    a, b = _random_adapter(unet, 2, 1), _random_adapter(unet, 3, 2)  # mixed ranks allowed here
    module = next(m for m in a.modules if m.endswith("attn1.to_q"))
    layer = dict(unet.named_modules())[module]
    x = torch.randn(5, layer.in_features)
    base = layer(x)
    expected = base + x @ (0.3 * a.delta(module) + 0.7 * b.delta(module)).T
    with runtime_adapters(unet, [a, b], [0.3, 0.7]) as adapted:
        got = dict(adapted.named_modules())[module](x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    original = layer.weight.clone()
    with fused(unet, [a, b], [0.3, 0.7]):
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    assert torch.equal(layer.weight, original)
    with fused(unet, [a, b], [1.0, 0.0]):
        torch.testing.assert_close(layer(x), base + x @ a.delta(module).T, atol=1e-6, rtol=0)
    with fused(unet, [a, b], [0.0, 0.0]):
        torch.testing.assert_close(layer(x), base, atol=0, rtol=0)


def test_a_cat_merge_is_exact_and_a_linear_merge_is_refused(backbone):
    unet = backbone.unet
    a, b = _random_adapter(unet, 2, 3), _random_adapter(unet, 2, 4)
    baked = bake([a, b], [0.5, 0.5])
    assert baked.rank == 4 and baked.scale == 1.0
    for m in a.modules:
        torch.testing.assert_close(
            baked.delta(m), 0.5 * a.delta(m) + 0.5 * b.delta(m), atol=1e-6, rtol=0
        )
    # what peft's "linear" merge computes, (sum w B)(sum w A), is not the weighted sum
    m = a.modules[0]
    (Aa, Ba), (Ab, Bb) = a.factors[m], b.factors[m]
    linear = a.scale * (0.5 * Ba + 0.5 * Bb) @ (0.5 * Aa + 0.5 * Ab)
    assert (linear - baked.delta(m)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="not exact"):
        bake([a, b], [0.5, 0.5], method="linear")


def test_adapters_round_trip_exactly_and_bad_files_are_refused(backbone, tmp_path):
    a = _random_adapter(backbone.unet, 2, 5)
    a.meta = {"method": "loft", "classes": ["cat"]}
    path = a.save(tmp_path / "a.safetensors")
    back = Adapter.load(path)
    assert back.rank == 2 and back.alpha == a.alpha and back.meta == a.meta
    for m, (A, B) in a.factors.items():
        assert torch.equal(back.factors[m][0], A) and torch.equal(back.factors[m][1], B)

    from safetensors.torch import save_file

    m = a.modules[0]
    A, B = a.factors[m]
    meta = {"rank": "2", "alpha": "4.0"}
    cases = {
        "no_b": ({f"{m}.lora_A.weight": A}, meta, "no lora_B"),
        "shape": (
            {f"{m}.lora_A.weight": A, f"{m}.lora_B.weight": B[:, :1].contiguous()},
            meta,
            "rank-2",
        ),
        "nan": (
            {f"{m}.lora_A.weight": A * float("nan"), f"{m}.lora_B.weight": B},
            meta,
            "NaN",
        ),
        "meta": ({f"{m}.lora_A.weight": A, f"{m}.lora_B.weight": B}, {}, "rank/alpha"),
    }
    for name, (tensors, header, message) in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors", metadata=header)
        with pytest.raises((InputError, ShapeError), match=message):
            Adapter.load(tmp_path / f"{name}.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable"):
        Adapter.load(tmp_path / "junk.safetensors")


def test_adapters_of_different_rank_or_layers_do_not_fuse(backbone):
    unet = backbone.unet
    a, b = _random_adapter(unet, 2, 6), _random_adapter(unet, 3, 7)
    with pytest.raises(InputError, match="mixes LoRA ranks 2 and 3"):
        check_adapters(unet, [a, b], "loras/")
    fewer = Adapter(dict(list(a.factors.items())[:4]), 2, 2.0, {"file": "fewer"})
    with pytest.raises(InputError, match="different target layers"):
        check_adapters(unet, [a, fewer], "loras/")
    check_adapters(unet, [a, _random_adapter(unet, 2, 8)], "loras/")  # compatible: no error


def test_v_prediction_targets_follow_the_scheduler(backbone):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(
        backbone.train_scheduler.config, prediction_type="v_prediction"
    )
    v_backbone = dataclasses.replace(backbone, train_scheduler=sched)
    z0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([5, 900])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * z0
    torch.testing.assert_close(v_backbone.training_target(z0, noise, t), expected)
    assert torch.equal(backbone.training_target(z0, noise, t), noise)
    assert math.isclose(float(a[1]), float(sched.alphas_cumprod[900]))
