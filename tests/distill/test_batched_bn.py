"""The batched engine on BatchNorm students, and capped group sizes."""

import pytest
import torch
import torch.nn.functional as F

from lucidml.core.runs import derive_seed
from lucidml.distill import trainer
from lucidml.distill.augment import DSA, Augmenter
from lucidml.distill.config import AugmentConfig, RecipeConfig
from lucidml.distill.losses import cross_entropy
from lucidml.distill.models import ResNet, build_model
from lucidml.distill.trainer import (
    Member,
    default_max_group,
    group_sizes,
    pick_engine,
    train_batched,
    train_sequential,
)


def _ce(s, t):
    return cross_entropy(s, t, None)


def _members(digits, per_class, lrs, runs):
    idx = torch.cat([torch.nonzero(digits.train_y == c).flatten()[:per_class] for c in range(10)])
    x, t = digits.train_x[idx], F.one_hot(digits.train_y[idx], 10).float()
    return [Member(x, t, lr, derive_seed(1, r)) for r in range(runs) for lr in lrs]


def _logits(model_fn, state, x):
    model = model_fn()
    model.load_state_dict(state)
    return model.eval()(x)


def _convnet_bn():
    return build_model("convnet", 1, 10, 8, depth=2, width=8, norm="batch")


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adamw", "cosine")])
def test_batched_batchnorm_equals_sequential(digits, optimizer, schedule):
    members = _members(digits, 3, (0.01, 0.05), runs=2)
    recipe = RecipeConfig(
        epochs=6, batch_size=16, eval_every=2, optimizer=optimizer, schedule=schedule
    )
    aug = Augmenter(DSA(AugmentConfig(flip=0).dsa_strengths()), "cutmix")
    test = (digits.test_x[:200], digits.test_y[:200])
    args = (members, _convnet_bn, recipe, _ce, aug, None, test)
    batched, sequential = train_batched(*args), train_sequential(*args)
    for b, s in zip(batched, sequential, strict=True):
        assert sorted(b.state) == sorted(s.state)  # running buffers included
        assert int(b.state["features.1.num_batches_tracked"]) == 6 * 2  # 30 images, batch 16
        logits_b = _logits(_convnet_bn, b.state, test[0])
        logits_s = _logits(_convnet_bn, s.state, test[0])
        assert (logits_b - logits_s).abs().max() < 1e-5
        assert [h["test_acc"] for h in b.history] == pytest.approx(
            [h["test_acc"] for h in s.history], abs=1e-6
        )
    # trained, not left at the initial running statistics
    assert not torch.allclose(batched[0].state["features.1.running_var"], torch.ones(8))


def test_batched_resnet_equals_sequential_in_float64():
    # float64, so that the comparison checks the arithmetic: in float32 the grouped and the
    # single convolutions round differently, and BatchNorm on 1x1 maps amplifies it to ~1e-4.
    # A ResNet-18 (all four stages, projections, BatchNorm) at width 8: 64 is 20x slower.
    def model_fn():
        return ResNet(3, 4, 4, width=8).double()

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = F.one_hot(torch.arange(8) % 4, 4).double()
    members = [Member(x, t, lr, derive_seed(2, 0)) for lr in (0.01, 0.05)]
    test = (torch.rand(10, 3, 4, 4, generator=gen, dtype=torch.float64), torch.arange(10) % 4)
    recipe = RecipeConfig(epochs=1, batch_size=4, eval_every=1)
    args = (members, model_fn, recipe, _ce, None, None, test)
    for b, s in zip(train_batched(*args), train_sequential(*args), strict=True):
        # weights and running buffers: eval logits would amplify float64 rounding through
        # running variances of 4 values per channel on 1x1 maps
        for k in s.state:
            assert torch.allclose(b.state[k].double(), s.state[k].double(), atol=1e-10), k
        assert b.history[0]["test_acc"] == pytest.approx(s.history[0]["test_acc"])


def test_group_sizes_and_the_default_cap():
    assert group_sizes(5, 2) == [2, 2, 1]
    assert group_sizes(4, 4) == [4] and group_sizes(3, 10) == [3]
    # ConvNet-3 w128 on 3x32x32: the first conv outputs 128*32*32 values per image;
    # x 256 images x 4 bytes = 128 MiB per member, so 16 members fit in 2 GiB
    convnet = build_model("convnet", 3, 10, 32, depth=3, width=128)
    assert default_max_group(convnet, (3, 32, 32), 256) == 16
    resnet = build_model("resnet18", 3, 10, 32)  # stem: 64*32*32 values -> 32 members
    assert default_max_group(resnet, (3, 32, 32), 256) == 32
    assert default_max_group(convnet, (3, 32, 32), 256, budget=1) == 1


def test_capped_groups_give_the_accuracies_of_one_group(digits, monkeypatch):
    members = _members(digits, 2, (0.01, 0.05, 0.1), runs=2)  # 6 members
    test = (digits.test_x[:150], digits.test_y[:150])
    val = (digits.train_x[-60:], digits.train_y[-60:])

    def model_fn():
        return build_model("convnet", 1, 10, 8, depth=2, width=8)

    sizes = []
    stack = trainer.stack_module_state
    monkeypatch.setattr(
        trainer, "stack_module_state", lambda ms: sizes.append(len(ms)) or stack(ms)
    )
    recipe = RecipeConfig(epochs=6, batch_size=16, eval_every=2)
    one = train_batched(members, model_fn, recipe, _ce, None, None, test, val)
    capped_recipe = recipe.updated(max_group=4)
    capped = train_batched(members, model_fn, capped_recipe, _ce, None, None, test, val)
    assert sizes == [6, 4, 2]
    for a, b in zip(one, capped, strict=True):
        assert (a.lr, a.seed) == (b.lr, b.seed)
        assert [h["epoch"] for h in a.history] == [h["epoch"] for h in b.history]
        for ha, hb in zip(a.history, b.history, strict=True):
            assert ha["val_acc"] == pytest.approx(hb["val_acc"], abs=1e-6)
            assert ha.get("test_acc") == pytest.approx(hb.get("test_acc"), abs=1e-6)
    assert trainer.select(one, "val") == trainer.select(capped, "val")


def test_auto_engine_batches_batchnorm_students():
    assert pick_engine("auto", _convnet_bn) is train_batched
    assert pick_engine("auto", lambda: build_model("resnet18", 3, 10, 8)) is train_batched
