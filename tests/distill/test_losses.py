import math

import pytest
import torch
import torch.nn.functional as F

from lucidml.distill.config import EvalConfig
from lucidml.distill.losses import LOSSES
from lucidml.errors import ConfigError


def cfg(**kw):
    return EvalConfig(labels="soft", loss="kl", **kw)


def test_kl_of_equal_logits_is_zero():
    z = torch.randn(8, 10)
    assert LOSSES["kl"](z, z, cfg()).item() == pytest.approx(0, abs=1e-6)


def test_soft_ce_of_equal_logits_is_the_entropy():
    z, c = torch.randn(8, 10), cfg(temperature=2.0)
    p = F.softmax(z / 2.0, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert LOSSES["soft_ce"](z, z, c).item() == pytest.approx(entropy.item(), rel=1e-5)


def test_soft_ce_of_zero_logits_against_uniform_teacher_is_log_k():
    s, t = torch.zeros(4, 7), torch.zeros(4, 7)
    assert LOSSES["soft_ce"](s, t, cfg()).item() == pytest.approx(math.log(7), rel=1e-6)


@pytest.mark.parametrize("name", ["kl", "soft_ce"])
def test_scale_loss_multiplies_by_t_squared(name):
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    plain = LOSSES[name](s, t, cfg(temperature=3.0))
    scaled = LOSSES[name](s, t, cfg(temperature=3.0, scale_loss=True))
    assert scaled.item() == pytest.approx(9 * plain.item(), rel=1e-6)


def test_kl_matches_torch_kl_div():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    ref = F.kl_div(F.log_softmax(s / 1.2, 1), F.softmax(t / 1.2, 1), reduction="batchmean")
    assert LOSSES["kl"](s, t, cfg()).item() == pytest.approx(ref.item(), rel=1e-5)


def test_mse_ce_weights():
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(10, (6,))
    ce = F.cross_entropy(s, y)
    mse = ((s - t) ** 2).mean()
    got = LOSSES["mse_ce"](s, t, cfg(mse_weight=2.0, ce_weight=0.5), F.one_hot(y, 10).float())
    assert got.item() == pytest.approx((2 * mse + 0.5 * ce).item(), rel=1e-6)


def test_mse_ce_cross_entropy_is_against_the_ground_truth_not_the_teacher():
    # issue 15, item 6: the teacher's arg-max (class 0) differs from the true label (class 3)
    s = torch.randn(4, 10)
    teacher = torch.zeros(4, 10)
    teacher[:, 0] = 5.0
    truth = torch.full((4,), 3)
    got = LOSSES["mse_ce"](
        s, teacher, cfg(mse_weight=0.0, ce_weight=1.0), F.one_hot(truth, 10).float()
    )
    assert got.item() == pytest.approx(F.cross_entropy(s, truth).item(), rel=1e-6)
    assert got.item() != pytest.approx(F.cross_entropy(s, teacher.argmax(1)).item(), rel=1e-3)
    with pytest.raises(ConfigError, match="ground-truth labels"):
        LOSSES["mse_ce"](s, teacher, cfg(ce_weight=1.0))


def test_hard_ce_on_one_hot_equals_cross_entropy():
    s, y = torch.randn(6, 10), torch.randint(10, (6,))
    got = LOSSES["ce"](s, F.one_hot(y, 10).float(), None)
    assert got.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
