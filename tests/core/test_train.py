import math

import pytest
import torch
from torch import nn

from lucidml.core.train import LOSSES, TrainConfig, fit_classifier
from lucidml.errors import ConfigError, ShapeError


def small_convnet(width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, 10),
    )


def test_fit_classifier_reaches_90_percent_on_digits(digits):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=10, batch_size=32, lr=0.1, schedule="cosine", eval_every=5)
    res = fit_classifier(
        small_convnet(), (digits.train_x, digits.train_y), (digits.test_x, digits.test_y), cfg
    )
    assert res.test_acc >= 0.9
    assert [h["epoch"] for h in res.history if "test_acc" in h] == [5, 10]
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_soft_targets_teacher_and_validation_selection(digits):
    x, y = digits.train_x[:400], digits.train_y[:400]
    val = (digits.train_x[400:600], digits.train_y[400:600])
    soft = torch.nn.functional.one_hot(y, 10).float() * 8.0  # confident teacher logits
    cfg = TrainConfig(
        epochs=6, batch_size=32, lr=0.1, schedule="cosine", eval_every=2, temperature=2.0
    )
    torch.manual_seed(0)
    res = fit_classifier(
        small_convnet(16),
        (x, y),
        (digits.test_x, digits.test_y),
        cfg,
        targets=soft,
        loss="kl",
        val=val,
    )
    assert res.selected_epoch in (2, 4, 6)
    picked = next(h for h in res.history if h["epoch"] == res.selected_epoch)
    assert res.test_acc == picked["test_acc"]
    assert res.best_val_acc == max(h["val_acc"] for h in res.history if "val_acc" in h)
    assert res.test_acc > 0.5

    teacher_calls = []

    def teacher(xb):
        teacher_calls.append(len(xb))
        return torch.zeros(len(xb), 10)

    fit_classifier(
        small_convnet(8),
        (x[:100], y[:100]),
        None,
        TrainConfig(epochs=1, batch_size=50),
        targets=teacher,
        loss="soft_ce",
    )
    assert teacher_calls == [50, 50]


def test_augment_sees_and_mixes_targets(digits):
    seen = []

    def mix(xb, tb):
        seen.append(tb.ndim)
        onehot = torch.nn.functional.one_hot(tb, 10).float()
        return xb.flip(0) * 0.5 + xb * 0.5, onehot.flip(0) * 0.5 + onehot * 0.5

    fit_classifier(
        small_convnet(8),
        (digits.train_x[:64], digits.train_y[:64]),
        None,
        TrainConfig(epochs=1, batch_size=32),
        augment=mix,
    )
    assert seen == [1, 1]


def test_same_seed_same_numbers(digits):
    def run():
        torch.manual_seed(1)
        cfg = TrainConfig(epochs=2, batch_size=64, seed=3, optimizer="adam", lr=1e-3)
        return fit_classifier(
            small_convnet(8),
            (digits.train_x[:256], digits.train_y[:256]),
            (digits.test_x, digits.test_y),
            cfg,
        ).history

    assert run() == run()


def test_losses_known_values():
    cfg = TrainConfig(temperature=2.0)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0]])
    # identical logits -> KL 0; uniform student vs teacher softmax(t/2) = (e/(1+e), 1/(1+e))
    assert LOSSES["kl"](t, t, cfg).item() == pytest.approx(0.0, abs=1e-7)
    p = math.e / (1 + math.e)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert LOSSES["kl"](s, t, cfg).item() == pytest.approx(kl * 4, rel=1e-5)
    assert LOSSES["soft_ce"](s, t, cfg).item() == pytest.approx(math.log(2), rel=1e-6)
    assert LOSSES["ce"](s, torch.tensor([0]), cfg).item() == pytest.approx(math.log(2))
    assert LOSSES["mse_ce"](s, t, cfg).item() == pytest.approx(2.0 + math.log(2), rel=1e-6)


def test_bad_arguments_are_user_errors(digits):
    with pytest.raises(ShapeError, match="labels"):
        fit_classifier(small_convnet(8), (digits.train_x[:10], digits.train_y[:9]), None)
    with pytest.raises(ConfigError, match="unknown loss"):
        fit_classifier(
            small_convnet(8), (digits.train_x[:10], digits.train_y[:10]), None, loss="hinge"
        )
