"""Closed-form GGNs against autograd Jacobians, and K-FAC against the exact weight GGN."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from lucidml.uncertainty.hessians import (
    infonce_ggn,
    infonce_ggn_sum,
    normalisation_jacobian,
    sigmoid_ggn,
    sigmoid_ggn_sum,
)
from lucidml.uncertainty.kfac import with_bias_column

pytestmark = pytest.mark.usefixtures("float64")
SCALE, BIAS = 7.3, -2.1


def _targets(c, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)


def _logits_fn(targets, sigmoid):
    def fn(x):
        z = SCALE * F.normalize(x, dim=-1) @ targets.T
        return z + BIAS if sigmoid else z

    return fn


def _logit_hessian(z, sigmoid):
    if sigmoid:
        s = torch.sigmoid(z)
        return torch.diag(s * (1 - s))
    p = torch.softmax(z, -1)
    return torch.diag(p) - torch.outer(p, p)


def _autograd_ggn(x, targets, sigmoid):
    fn = _logits_fn(targets, sigmoid)
    jac = jacrev(fn)(x)  # (C, D)
    return jac.T @ _logit_hessian(fn(x), sigmoid) @ jac


def test_normalisation_jacobian_matches_autograd():
    x = torch.randn(6, dtype=torch.float64)
    auto = jacrev(lambda v: v / v.norm())(x)
    torch.testing.assert_close(normalisation_jacobian(x), auto, rtol=0, atol=1e-12)


def test_infonce_ggn_equals_autograd_ggn():
    targets = _targets(5, 4)
    for seed in range(3):
        x = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(
            infonce_ggn(x, targets, SCALE), _autograd_ggn(x, targets, False), rtol=0, atol=1e-8
        )


def test_sigmoid_ggn_equals_autograd_ggn():
    targets = _targets(7, 5)
    x = 3 * torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(
        sigmoid_ggn(x, targets, SCALE, BIAS), _autograd_ggn(x, targets, True), rtol=0, atol=1e-8
    )


def test_batched_sums_equal_per_item_sums():
    targets, xs = _targets(6, 4), torch.randn(9, 4, dtype=torch.float64)
    torch.testing.assert_close(
        infonce_ggn_sum(xs, targets, SCALE), sum(infonce_ggn(x, targets, SCALE) for x in xs)
    )
    torch.testing.assert_close(
        sigmoid_ggn_sum(xs, targets, SCALE, BIAS),
        sum(sigmoid_ggn(x, targets, SCALE, BIAS) for x in xs),
    )


def test_ggn_is_blind_to_the_radial_direction():
    # the loss reads only x/||x||, so H x = 0
    x, targets = torch.randn(4, dtype=torch.float64), _targets(5, 4)
    assert infonce_ggn(x, targets, SCALE).mv(x).abs().max() < 1e-12


def _exact_weight_ggn(W, a, targets, bias=None):
    """GGN over column-major vec([W, b]) of the InfoNCE logits of e = W a (+ b)."""
    q, p = W.shape
    theta = W if bias is None else torch.cat([W, bias[:, None]], 1)
    design = a if bias is None else with_bias_column(a)

    def logits(vec):
        th = vec.reshape(theta.shape[1], q).T  # undo column-major vec
        return SCALE * F.normalize(th @ design, dim=-1) @ targets.T

    vec = theta.T.reshape(-1)
    jac = jacrev(logits)(vec)
    return jac.T @ _logit_hessian(logits(vec), False) @ jac


def test_kfac_with_one_data_point_is_the_exact_ggn():
    q, p = 4, 3
    W, a, targets = torch.randn(q, p), torch.randn(p), _targets(5, q)
    A, B = torch.outer(a, a), infonce_ggn(W @ a, targets, SCALE)
    torch.testing.assert_close(
        torch.kron(A, B), _exact_weight_ggn(W, a, targets), rtol=0, atol=1e-10
    )


def test_kfac_with_bias_appends_a_one_to_the_input():
    q, p = 4, 3
    W, b, a, targets = torch.randn(q, p), torch.randn(q), torch.randn(p), _targets(5, q)
    a1 = with_bias_column(a)
    A, B = torch.outer(a1, a1), infonce_ggn(W @ a + b, targets, SCALE)
    torch.testing.assert_close(
        torch.kron(A, B), _exact_weight_ggn(W, a, targets, b), rtol=0, atol=1e-10
    )
