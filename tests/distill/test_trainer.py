import pytest
import torch
import torch.nn.functional as F

from lucidml.core.runs import derive_seed
from lucidml.distill.augment import DSA, Augmenter
from lucidml.distill.config import AugmentConfig, RecipeConfig
from lucidml.distill.losses import cross_entropy
from lucidml.distill.models import build_model
from lucidml.distill.trainer import (
    Fitted,
    Member,
    lr_factor,
    select,
    train_batched,
    train_sequential,
)


def _problem(digits, n_per_class=5):
    idx = torch.cat([torch.nonzero(digits.train_y == c).flatten()[:n_per_class] for c in range(10)])
    x, y = digits.train_x[idx], digits.train_y[idx]
    return x, F.one_hot(y, 10).float()


@pytest.mark.parametrize(
    "optimizer,schedule,with_val", [("sgd", "step", False), ("adamw", "cosine", True)]
)
def test_batched_equals_sequential(digits, optimizer, schedule, with_val):
    x, t = _problem(digits, 3)
    members = [Member(x, t, lr, derive_seed(1, r)) for r in range(2) for lr in (0.01, 0.05)]

    def model_fn():
        return build_model("convnet", 1, 10, 8, depth=2, width=8)

    recipe = RecipeConfig(
        epochs=6, batch_size=16, eval_every=2, optimizer=optimizer, schedule=schedule
    )
    aug = Augmenter(DSA(AugmentConfig(flip=0).dsa_strengths()), "cutmix")
    test = (digits.test_x[:200], digits.test_y[:200])
    val = (digits.train_x[-100:], digits.train_y[-100:]) if with_val else None
    args = (
        members,
        model_fn,
        recipe,
        lambda s, tt: cross_entropy(s, tt, None),
        aug,
        None,
        test,
        val,
    )
    batched, sequential = train_batched(*args), train_sequential(*args)
    for b, s in zip(batched, sequential, strict=True):
        assert [h["epoch"] for h in b.history] == [2, 4, 6]
        for hb, hs in zip(b.history, s.history, strict=True):
            if "test_acc" in hb:  # with val: only where val improved (the selectable ones)
                assert hb["test_acc"] == pytest.approx(hs["test_acc"], abs=1 / 200 + 1e-9)
            if with_val:
                assert hb["val_acc"] == pytest.approx(hs["val_acc"], abs=1 / 100 + 1e-9)
        if not with_val:  # with val, fit_classifier restores the best checkpoint instead
            for k in b.state:
                assert torch.allclose(b.state[k], s.state[k], atol=1e-5), k
    mode = "val" if with_val else "test"
    picked_b, picked_s = select(batched, mode), select(sequential, mode)
    assert (picked_b["lr"], picked_b["epoch"]) == (picked_s["lr"], picked_s["epoch"])
    assert picked_b["acc"] == pytest.approx(picked_s["acc"], abs=1 / 200 + 1e-9)


def test_with_val_the_test_accuracy_is_kept_exactly_where_val_improves(digits):
    x, t = _problem(digits, 2)
    members = [Member(x, t, lr, derive_seed(2, 0)) for lr in (0.001, 0.05, 0.1)]
    recipe = RecipeConfig(epochs=8, batch_size=32, eval_every=1)
    fitted = train_batched(
        members,
        lambda: build_model("convnet", 1, 10, 8, depth=2, width=8),
        recipe,
        lambda s, tt: cross_entropy(s, tt, None),
        None,
        None,
        (digits.test_x[:100], digits.test_y[:100]),
        (digits.train_x[-60:], digits.train_y[-60:]),
    )
    for f in fitted:
        best = -1.0
        for h in f.history:
            assert ("test_acc" in h) == (h["val_acc"] > best)
            best = max(best, h["val_acc"])


def test_lr_schedules():
    r = RecipeConfig(epochs=10, schedule="step")
    assert [lr_factor(r, s, 2) for s in (0, 9, 10, 19)] == pytest.approx([1, 1, 0.1, 0.1])
    r = RecipeConfig(epochs=10, schedule="cosine")
    assert lr_factor(r, 10, 2) == pytest.approx(0.5)
    r = RecipeConfig(epochs=10, schedule="cosine_ref")
    assert lr_factor(r, 0, 3) == 1.0
    assert lr_factor(r, 29, 3) == pytest.approx(
        0.5 * (1 + torch.cos(torch.tensor(9 / 20 * 3.14159265)).item()), abs=1e-6
    )


def test_select_by_val_and_by_test():
    a = Fitted(
        0.01,
        0,
        [
            {"epoch": 10, "val_acc": 0.5, "test_acc": 0.9},
            {"epoch": 20, "val_acc": 0.7, "test_acc": 0.6},
        ],
    )
    b = Fitted(
        0.1,
        0,
        [
            {"epoch": 10, "val_acc": 0.7, "test_acc": 0.95},
            {"epoch": 20, "val_acc": 0.6, "test_acc": 0.5},
        ],
    )
    by_val = select([a, b], "val")
    assert (by_val["acc"], by_val["lr"], by_val["epoch"]) == (0.6, 0.01, 20)  # tie -> first
    by_test = select([a, b], "test")
    assert (by_test["acc"], by_test["lr"], by_test["optimistic"]) == (0.95, 0.1, True)


@pytest.mark.parametrize("engine", [train_batched, train_sequential])
@pytest.mark.parametrize("with_teacher", [False, True])
def test_members_labels_reach_the_loss_mixed_like_the_targets(digits, engine, with_teacher):
    # issue 15, item 6: MSE+CE needs the ground truth beside teacher targets; CutMix mixes
    # both with one lambda, and a teacher (mode M) replaces only the targets
    x, onehot = _problem(digits, 2)
    logits = torch.randn(len(x), 10)
    members = [Member(x, logits, 0.01, derive_seed(3, 0), labels=onehot)]
    seen = []

    def loss(s, t, labels=None):
        seen.append((t.detach().clone(), labels.detach().clone()))
        return cross_entropy(s, labels, None)

    def teacher(xb):
        return torch.full((len(xb), 10), 7.0)

    def model_fn():
        return build_model("convnet", 1, 10, 8, depth=1, width=4)

    recipe = RecipeConfig(epochs=2, batch_size=8, eval_every=2)
    aug = Augmenter(None, "cutmix")
    test = (digits.test_x[:50], digits.test_y[:50])
    engine(members, model_fn, recipe, loss, aug, teacher if with_teacher else None, test)
    assert len(seen) == 2 * 3  # 20 images in batches of 8, two epochs
    for t, labels in seen:
        assert labels.shape == t.shape == (len(labels), 10)
        assert torch.allclose(labels.sum(1), torch.ones(len(labels)))  # mixed one-hot rows
        if with_teacher:
            assert torch.equal(t, torch.full_like(t, 7.0))
    assert any((labels.max(1).values < 1).any() for _, labels in seen)  # CutMix mixed them
