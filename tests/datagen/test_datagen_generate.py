"""The pair schedule, per-image seeds, resumable generation and folded == unfused images."""

import collections
import dataclasses

import pytest
import torch

from lucidml.datagen.backbone import from_stable_diffusion
from lucidml.datagen.generate import generate_images, plan_class, schedule_pairs
from lucidml.datagen.lora import Adapter, runtime_adapters, target_modules
from lucidml.errors import InputError
from lucidml.testing import tiny_sd_pipeline


@pytest.mark.parametrize(
    ("n", "images", "k", "subsets", "uses"),
    [
        (16, 500, 2, 120, {5: 20, 4: 100}),
        (4, 10, 2, 6, {2: 4, 1: 2}),
        (5, 10, 3, 10, {1: 10}),
        (1, 7, 2, 1, {7: 1}),  # one shot: k falls back to 1
    ],
)
def test_schedule_tiles_every_subset_evenly(n, images, k, subsets, uses):
    schedule = schedule_pairs(n, images, k, seed=0)
    assert len(schedule) == images
    counts = collections.Counter(schedule)
    assert len(counts) == subsets
    assert dict(collections.Counter(counts.values())) == uses
    assert all(len(set(s)) == len(s) == min(k, n) for s in schedule)
    assert schedule == schedule_pairs(n, images, k, seed=0)
    if subsets > 2:
        assert schedule != schedule_pairs(n, images, k, seed=1)


def test_schedule_refuses_a_class_without_adapters():
    with pytest.raises(InputError, match="at least one adapter"):
        schedule_pairs(0, 5)


def test_an_images_seed_and_adapters_do_not_depend_on_how_many_are_planned():
    few = plan_class("cat", "a photo of a cat", ["a", "b", "c"], 4, 2, None, seed=3)
    many = plan_class("cat", "a photo of a cat", ["a", "b", "c"], 9, 2, None, seed=3)
    assert few == many[:4]
    assert len({p.seed for p in many}) == 9
    assert all(p.weights == (0.5, 0.5) for p in many)
    plain = plan_class("cat", "a photo of a cat", [], 3, 2, None, seed=3)
    assert all(p.adapters == () and p.weights == () for p in plain)
    assert [p.seed for p in plain] == [p.seed for p in few[:3]]
    assert plan_class("cat", "x", ["a", "b"], 2, 2, [0.2, 0.8], 0)[0].weights == (0.2, 0.8)


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return from_stable_diffusion(tiny_sd_pipeline(), "tiny-sd")


def _adapters(unet, n=3):
    layers = dict(unet.named_modules())
    out = {}
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        factors = {
            m: (
                0.2 * torch.randn(2, layers[m].in_features, generator=g),
                0.2 * torch.randn(layers[m].out_features, 2, generator=g),
            )
            for m in target_modules(unet, ("to_q", "to_k", "to_v", "to_out.0"))
        }
        out[f"shot{i}.safetensors"] = Adapter(factors, 2, 2.0)
    return out


def test_generation_is_deterministic_and_resumes_without_redrawing(backbone, tmp_path):
    adapters = _adapters(backbone.unet)
    plans = plan_class("cat", "a cat", sorted(adapters), 5, 2, None, seed=0)
    assert generate_images(backbone, plans, adapters, tmp_path / "a", 2, 2.0, 4) == 5
    first = {p.file: (tmp_path / "a" / p.file).read_bytes() for p in plans}
    # a second folder drawn in a different batch size gives the same bytes
    generate_images(backbone, plans, adapters, tmp_path / "b", 2, 2.0, 2)
    assert all((tmp_path / "b" / f).read_bytes() == data for f, data in first.items())
    # an interrupted run: two files lost; a rerun draws exactly those, identically
    for p in plans[1:3]:
        (tmp_path / "a" / p.file).unlink()
    assert generate_images(backbone, plans, adapters, tmp_path / "a", 2, 2.0, 4) == 2
    assert all((tmp_path / "a" / f).read_bytes() == data for f, data in first.items())
    # another seed gives other images
    other = plan_class("cat", "a cat", sorted(adapters), 5, 2, None, seed=1)
    generate_images(backbone, other, adapters, tmp_path / "c", 2, 2.0, 4)
    assert (tmp_path / "c" / other[0].file).read_bytes() != first[plans[0].file]


def test_folded_weights_give_the_images_of_unfused_adapters(backbone):
    adapters = list(_adapters(backbone.unet, 2).values())
    prompts, seeds = ["a cat", "a dog"], [7, 8]
    from lucidml.datagen.lora import fused

    with fused(backbone.unet, adapters, [0.5, 0.5]):
        folded = backbone.sample(prompts, seeds, steps=3)
    with runtime_adapters(backbone.unet, adapters, [0.5, 0.5]) as adapted:
        unfused = dataclasses.replace(backbone, unet=adapted).sample(prompts, seeds, steps=3)
    torch.testing.assert_close(folded, unfused, atol=1e-4, rtol=0)
    assert (folded - backbone.sample(prompts, seeds, steps=3)).abs().max() > 1e-3
