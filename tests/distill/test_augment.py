import pytest
import torch

from lucidml.distill.augment import DSA, ZCA, cutmix, cutmix_box, mixup
from lucidml.distill.config import AugmentConfig
from lucidml.errors import ConfigError


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_probability_zero_and_one():
    x = torch.rand(6, 1, 8, 8)
    assert torch.equal(DSA({"flip": 0.0})(x, g()), x)
    assert torch.equal(DSA({"flip": 1.0})(x, g()), x.flip(3))


def test_scale_one_is_identity():
    x = torch.rand(6, 3, 8, 8)
    assert torch.allclose(DSA({"scale": 1.0})(x, g()), x, atol=1e-6)
    assert torch.allclose(DSA({"rotate": 0.0})(x, g()), x, atol=1e-6)


def test_zero_strength_colour_ops_and_crop_are_identity():
    x = torch.rand(5, 3, 8, 8)
    assert torch.allclose(DSA({"brightness": 0.0})(x, g()), x)
    assert torch.equal(DSA({"crop": 0.0})(x, g()), x)
    assert torch.equal(DSA({"cutout": 0.0})(x, g()), x)
    # contrast with u + c = 1 only when u = 0; saturation on one channel is always identity
    grey = torch.rand(5, 1, 8, 8)
    assert torch.allclose(DSA({"saturation": 2.0})(grey, g()), grey)


def test_every_op_keeps_shape_and_sensible_range():
    strengths = AugmentConfig().dsa_strengths()
    x = torch.rand(16, 3, 8, 8)
    for op, s in strengths.items():
        out = DSA({op: s})(x, g(1))
        assert out.shape == x.shape, op
        assert torch.isfinite(out).all(), op
        assert out.min() >= -1.5 and out.max() <= 2.5, op
    zeros = (DSA({"cutout": 0.5})(x, g()) == 0).sum((1, 2, 3)) / 3  # per channel
    assert zeros.min() >= 4 and zeros.max() == 16  # a 4x4 square, at least 2x2 after clipping


def test_crop_shifts_whole_pixels():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    out = DSA({"crop": 0.125}).apply(
        x, [("crop", {"dy": torch.tensor([1]), "dx": torch.tensor([0])})]
    )
    assert torch.equal(out[0, 0, :7], x[0, 0, 1:])
    assert torch.equal(out[0, 0, 7], torch.zeros(8))


def test_siamese_seeds_give_equal_parameters():
    dsa = DSA(AugmentConfig().dsa_strengths(), strategy="all")
    a, b = torch.rand(4, 3, 8, 8), torch.rand(9, 3, 8, 8)
    plan_a, plan_b = dsa.draw(a, g(7), siamese=True), dsa.draw(b, g(7), siamese=True)
    for (op_a, pa), (op_b, pb) in zip(plan_a, plan_b, strict=True):
        assert op_a == op_b
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # one draw per batch: every image in the batch gets the same transform
    same = dsa.apply(torch.stack([a[0], a[0]]), plan_a)
    assert torch.allclose(same[0], same[1])


def test_dsa_gradcheck_float64():
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    for op in ("scale", "rotate", "brightness", "saturation", "contrast", "crop", "cutout"):
        dsa = DSA({op: AugmentConfig().dsa_strengths()[op]})
        plan = dsa.draw(x, g(3))
        assert torch.autograd.gradcheck(lambda t, plan=plan, dsa=dsa: dsa.apply(t, plan), (x,)), op


def test_unknown_op_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown DSA op 'blur'"):
        DSA({"blur": 1.0})


def test_mixup_identity_at_zero_and_convex_mixing():
    x, t = torch.rand(8, 1, 8, 8), torch.eye(4)[torch.arange(8) % 4]
    x0, t0 = mixup(x, t, g(), alpha=0.0)
    assert torch.equal(x0, x) and torch.equal(t0, t)
    xm, tm = mixup(x, t, g(), alpha=1.0)
    assert xm.shape == x.shape and xm.min() >= 0 and xm.max() <= 1
    assert torch.allclose(tm.sum(1), torch.ones(8))


def test_cutmix_pasted_fraction_and_inputs_unchanged():
    x = torch.rand(8, 1, 8, 8)
    t = torch.eye(8)  # sample i has class i
    x_before, t_before = x.clone(), t.clone()
    xm, tm = cutmix(x, t, g(5), beta=1.0)
    assert torch.equal(x, x_before) and torch.equal(t, t_before)
    kept = tm.diagonal()  # weight on each sample's own class = lam'
    changed = (xm != x).flatten(1).float().mean(1)
    # every pixel in the box comes from another image (random values differ a.s.)
    for i in range(8):
        if kept[i] < 1:
            assert changed[i].item() == pytest.approx(1 - kept[i].item(), abs=1e-6)
    assert torch.allclose(tm.sum(1), torch.ones(8))
    x0, t0 = cutmix(x, t, g(), beta=0.0)
    assert torch.equal(x0, x) and torch.equal(t0, t)


def test_cutmix_box_side():
    y0, y1, x0, x1 = cutmix_box(100, 100, 0.75, g())  # side fraction sqrt(0.25) = 0.5
    assert y1 - y0 <= 50 and x1 - x0 <= 50


def test_zca_covariance_closed_form():
    gen = g(0)
    d = 16
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    x = (torch.randn(4000, d, generator=gen, dtype=torch.float64) @ a).view(4000, 1, 4, 4)
    zca = ZCA(eps=0.1).fit(x)
    out = zca.transform(x).view(4000, d)
    centred = x.view(4000, d) - x.view(4000, d).mean(0)
    lam, u = torch.linalg.eigh(centred.T @ centred / 4000)
    expected = u @ torch.diag(lam / (lam + 0.1)) @ u.T
    cov = (out - out.mean(0)).T @ (out - out.mean(0)) / 4000
    assert torch.allclose(cov, expected, atol=1e-6)


def test_zca_whitens_with_small_eps():
    x = torch.randn(3000, 1, 3, 3, dtype=torch.float64) * torch.linspace(0.5, 3, 9).view(1, 1, 3, 3)
    out = ZCA(eps=1e-8).fit(x).transform(x).view(3000, 9)
    cov = torch.cov(out.T, correction=0)
    assert torch.allclose(cov, torch.eye(9, dtype=torch.float64), atol=1e-5)
