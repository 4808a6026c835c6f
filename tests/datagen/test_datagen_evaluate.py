"""Downstream classifier: planted tasks with known answers, split hygiene, the loss mix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lucidml.core.metrics import t_interval, wilson_interval
from lucidml.core.train import ce_loss
from lucidml.datagen.evaluate import (
    ClassifierConfig,
    ClipClassifier,
    evaluate_seeds,
    majority_rate,
    mixed_targets,
    real_shots_baseline,
    train_classifier,
)
from lucidml.errors import InputError, ShapeError
from lucidml.testing import tiny_clip

FAST = ClassifierConfig(epochs=4, batch_size=16, lr=3e-3)


def quadrants(n: int, seed: int, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 8x8 images: class c lights quadrant c, on noise. Labels are shifted by
    ``shift`` (mod 4) to plant wrong labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.15 * torch.rand(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        row, col = divmod(c, 2)
        x[i, 0, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 0.8
    return x.clamp(0, 1), (y + shift) % 4


@pytest.fixture(scope="module")
def task():
    return {"train": quadrants(160, 0), "val": quadrants(80, 1), "test": quadrants(200, 2)}


# --- pure functions ------------------------------------------------------------------------


def test_mixed_targets_give_the_lambda_mix_of_the_two_batch_means():
    logits = torch.randn(5, 3, dtype=torch.float64)
    syn, real = torch.tensor([0, 2, 1]), torch.tensor([1, 1])
    targets = mixed_targets(syn, real, 3, 0.8).double()
    expected = 0.8 * F.cross_entropy(logits[3:], real) + 0.2 * F.cross_entropy(logits[:3], syn)
    assert ce_loss(logits, targets, None) == pytest.approx(
        float(expected), abs=1e-6
    )  # float32 weights
    only_real = mixed_targets(syn, real, 3, 1.0).double()
    assert ce_loss(logits, only_real, None) == pytest.approx(
        float(F.cross_entropy(logits[3:], real)), abs=1e-6
    )


def test_majority_rate():
    assert majority_rate(torch.tensor([0, 1, 1, 2])) == 0.5


# --- the ConvNet through core.train --------------------------------------------------------


def test_convnet_learns_a_planted_task_and_reports_a_wilson_interval(task):
    out = train_classifier(*task["train"], *task["test"], FAST)
    assert out["test_acc"] >= 0.95  # chance is 0.25
    assert out["n_test"] == 200 and out["correct"] == round(out["test_acc"] * 200)
    assert out["ci95"] == list(wilson_interval(out["correct"], 200))
    assert out["selection"] == "last_epoch" and out["selected_epoch"] == FAST.epochs


def test_same_seed_gives_identical_numbers_and_another_seed_does_not(task):
    runs = [train_classifier(*task["train"], *task["test"], FAST, seed=s) for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0]["history"][0]["loss"] != runs[2]["history"][0]["loss"]


def test_model_is_selected_on_the_validation_split(task):
    out = train_classifier(*task["train"], *task["test"], FAST, val=task["val"])
    val_accs = [h["val_acc"] for h in out["history"]]
    assert out["selection"] == "validation" and out["n_val"] == 80
    assert out["selected_epoch"] == val_accs.index(max(val_accs)) + 1
    assert out["test_acc"] == out["history"][out["selected_epoch"] - 1]["test_acc"]


@pytest.mark.parametrize("where", ["val", "real_shots", "train"])
def test_splits_sharing_images_with_test_are_refused(task, where):
    test_x, test_y = task["test"]
    leaked = (test_x[:10].double(), test_y[:10])  # another dtype is still the same image
    kwargs = {"val": task["val"], "real_shots": None}
    train = task["train"]
    if where == "train":
        train = (torch.cat([train[0], leaked[0].float()]), torch.cat([train[1], leaked[1]]))
    else:
        kwargs[where] = leaked
    with pytest.raises(InputError, match="shares 10 of its .* images with the test split"):
        train_classifier(*train, test_x, test_y, FAST, **kwargs)


def test_lambda_decides_whether_shots_or_synthetic_labels_are_learned(task):
    wrong = quadrants(160, 0, shift=1)  # synthetic images, every label wrong
    shots = quadrants(16, 3)
    cfg = FAST.updated(epochs=6)
    real_only = train_classifier(
        *wrong, *task["test"], cfg.updated(pool_lambda=1.0), real_shots=shots
    )
    syn_only = train_classifier(
        *wrong, *task["test"], cfg.updated(pool_lambda=0.0), real_shots=shots
    )
    assert real_only["test_acc"] >= 0.9 and real_only["n_real_shots"] == 16
    assert syn_only["test_acc"] <= 0.1  # it learned the shifted labels


def test_seeds_and_the_real_shots_baseline(task):
    shots = quadrants(12, 3)
    base = real_shots_baseline(*shots, *task["test"], FAST, seeds=(0, 1), synthetic_size=160)
    # 160 synthetic images are 10 batches of 16, 12 shots one: 4 epochs become 40.
    assert [len(r["history"]) for r in base["runs"]] == [40, 40]
    assert base["n_seeds"] == 2 and base["chance"] == 0.25 and base["n_test"] == 200
    accs = [r["test_acc"] for r in base["runs"]]
    assert base["mean"] == pytest.approx(sum(accs) / 2)
    assert base["ci95"] == list(t_interval(accs))
    assert base["mean"] > 2 * base["chance"]
    with pytest.raises(InputError, match="seeds is empty"):
        evaluate_seeds(*shots, *task["test"], FAST, seeds=())


def test_bad_inputs_get_one_sentence(task):
    x, y = task["train"]
    tx, ty = task["test"]
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        train_classifier(x * 255, y, tx, ty, FAST)
    with pytest.raises(ShapeError, match="1-d tensor of 160 class indices"):
        train_classifier(x, y[:5], tx, ty, FAST)
    with pytest.raises(ShapeError, match=r"test images are \(1, 4, 4\)"):
        train_classifier(x, y, tx[..., :4, :4], ty, FAST)
    with pytest.raises(InputError, match="a label is 3 but there are only 3 classes"):
        train_classifier(x, y, tx, ty, FAST, n_classes=3)


# --- CLIP-style classifier -----------------------------------------------------------------

NAMES = ["zero", "one", "two", "three"]


@pytest.fixture(scope="module")
def vlm():
    return tiny_clip()


def test_clip_classifier_logits_are_scale_times_cosine_before_training(vlm):
    clf = ClipClassifier(vlm, NAMES).eval()
    images = torch.rand(6, 1, 8, 8)
    tokens = vlm.tokenize([vlm.templates[0].format(c) for c in NAMES])
    with torch.no_grad():  # transformers' own CLIP head: scale * cos(image, text)
        expected = vlm.model(pixel_values=vlm.preprocess(images), **tokens).logits_per_image
        assert torch.allclose(clf(images), expected, atol=1e-5)


def test_clip_classifier_trains_only_lora_and_beats_twice_chance(vlm, task):
    clf = ClipClassifier(vlm, NAMES)
    trainable = {n: p for n, p in clf.vlm.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".self_attn.")[1].split(".")[0] for n in trainable} == {"q_proj", "v_proj"}
    assert {n.split(".")[0] for n in trainable} == {"text_model", "vision_model"}
    # rank 16 on 64 -> 64 q and v projections, 2 layers in each of 2 towers: 8 * 16 * 128
    assert sum(p.numel() for p in trainable.values()) == 8 * 16 * (64 + 64)
    test_x, test_y = task["test"]
    with torch.no_grad():
        before = (clf.eval()(test_x).argmax(1) == test_y).float().mean().item()

    # 160 images in batches of 8 for 10 epochs: 200 steps
    cfg = ClassifierConfig(epochs=10, batch_size=8, lr=3e-3, schedule="none")
    out = train_classifier(*task["train"], test_x, test_y, cfg, model=lambda: clf)
    assert before <= 0.5 < out["test_acc"]  # chance is 0.25

    base = dict(vlm.model.named_parameters())
    for name, param in clf.vlm.model.named_parameters():
        if ".lora_" in name:
            if ".lora_B." in name:  # B starts at zero: moved means it got a gradient
                assert param.abs().sum() > 0, name
        else:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
