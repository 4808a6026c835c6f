import pytest
import torch

from lucidml.distill.augment import DSA
from lucidml.distill.baselines import (
    METHODS,
    distill,
    dm_loss,
    gradient_distance,
    herding_order,
    kcenter_order,
)
from lucidml.distill.config import AugmentConfig, DistillConfig
from lucidml.distill.models import build_model
from lucidml.errors import InputError


def test_every_method_returns_ipc_per_class(digits):
    cfg = DistillConfig(dm_iterations=2, dc_iterations=1)
    for method in METHODS:
        x, y = distill(method, digits.train_x, digits.train_y, 2, seed=0, cfg=cfg)
        assert x.shape == (20, 1, 8, 8), method
        assert torch.equal(torch.bincount(y), torch.full((10,), 2)), method


def test_same_seed_same_set(digits):
    cfg = DistillConfig(dm_iterations=3)
    a = distill("dm", digits.train_x, digits.train_y, 1, seed=5, cfg=cfg)
    b = distill("dm", digits.train_x, digits.train_y, 1, seed=5, cfg=cfg)
    assert torch.equal(a[0], b[0])


def test_class_mean_equals_pixel_means(digits):
    x, y = distill("classmean", digits.train_x, digits.train_y, 1)
    for c in range(10):
        expected = digits.train_x[digits.train_y == c].double().mean(0)
        assert torch.allclose(x[c].double(), expected, atol=1e-7)  # float32 storage
    means = torch.stack([digits.train_x[digits.train_y == c].double().mean(0) for c in range(10)])
    from lucidml.distill.baselines import class_means

    got, _ = class_means(digits.train_x.double(), digits.train_y, 1, 0)
    assert torch.allclose(got, means, atol=1e-12)


@pytest.mark.parametrize("order", [herding_order, kcenter_order])
def test_full_class_selection_is_a_permutation(digits, order):
    xc = digits.train_x[digits.train_y == 3]
    picks = order(xc.reshape(len(xc), -1).double(), len(xc))
    assert sorted(picks.tolist()) == list(range(len(xc)))


def test_kcenter_picks_attain_max_min_distance(gen):
    phi = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    picks = kcenter_order(phi, 8).tolist()
    assert picks[0] == int(((phi - phi.mean(0)) ** 2).sum(1).argmin())
    for t in range(1, len(picks)):
        dmin = torch.cdist(phi, phi[picks[:t]]).min(1).values
        assert dmin[picks[t]] == pytest.approx(dmin.max().item())


def test_herding_first_pick_is_nearest_the_mean(gen):
    phi = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    assert herding_order(phi, 1).item() == int(((phi - phi.mean(0)) ** 2).sum(1).argmin())


def test_dm_loss_zero_for_the_whole_class(digits):
    net = build_model("convnet", 1, 10, 8, depth=2, width=8)
    embed = torch.nn.Sequential(net.features, torch.nn.Flatten())
    real = [digits.train_x[digits.train_y == c] for c in range(3)]
    syn = [r.flip(0) for r in real]  # the same images in another order
    assert dm_loss(embed, real, syn).item() == pytest.approx(0, abs=1e-8)


def test_dc_distance_zero_for_equal_batches(digits):
    net = build_model("convnet", 1, 10, 8, depth=2, width=8)
    x, y = digits.train_x[:32], digits.train_y[:32]
    grads = torch.autograd.grad(
        torch.nn.functional.cross_entropy(net(x), y), list(net.parameters())
    )
    assert gradient_distance(grads, grads).item() == pytest.approx(0, abs=1e-5)
    flipped = [-g for g in grads]
    n_rows = sum(g.shape[0] for g in grads if g.ndim > 1)
    assert gradient_distance(grads, flipped).item() == pytest.approx(2 * n_rows, rel=1e-4)


def test_dm_steps_lower_the_dm_loss(digits):
    x, y = digits.train_x, digits.train_y
    cfg = DistillConfig(dm_iterations=50, dm_batch_real=32)
    dsa = DSA(AugmentConfig(flip=0).dsa_strengths())
    start, _ = distill("random", x, y, 2, seed=0)
    done, _ = distill("dm", x, y, 2, seed=0, cfg=cfg)
    real = [x[y == c] for c in range(10)]

    def mean_loss(images):  # over fixed probe networks not used during distillation
        total = 0.0
        for s in range(3):
            torch.manual_seed(1000 + s)
            net = build_model("convnet", 1, 10, 8, depth=2, width=32)
            embed = torch.nn.Sequential(net.features, torch.nn.Flatten())
            with torch.no_grad():
                total += dm_loss(embed, real, list(images.split(2)), dsa, seed=s).item()
        return total

    assert mean_loss(done) < 0.8 * mean_loss(start)


def test_bad_requests(digits):
    with pytest.raises(InputError, match="unknown method 'mtt'"):
        distill("mtt", digits.train_x, digits.train_y, 1)
    with pytest.raises(InputError, match="larger than the smallest class"):
        distill("herding", digits.train_x, digits.train_y, 1000)
