"""Parity with laplace-torch (0.3) where both libraries can express the same problem.

Conventions, and how they map (checked by the first test):

- laplace-torch stores a Linear layer's K-FAC as [B_la, A_la] with A_la = sum a a^T / N
  (the mean) and B_la = sum H (the sum); ours are A = sum a a^T / sqrt(N) and
  B = sum H / sqrt(N). The Kronecker products agree: A (x) B = A_la (x) B_la, so
  A = sqrt(N) A_la and B = B_la / sqrt(N).
- laplace-torch's posterior precision is H / temperature + lam I, so our pseudo-count
  n (``fit_n``, ``predict_n``) is 1 / temperature.
- laplace-torch's default (``damping=False``) is the exact (n A (x) B + lam I), our
  ``eig`` damping. Its ``damping=True`` is (A_la + sqrt(lam) I) (x) (B_la + sqrt(lam) I),
  our ``split-reference`` fed laplace-torch's factors; laplace-torch 0.3 does not apply
  it to a fitted last-layer model (KronLLLaplace's __init__ resets ``damping``, and
  ``posterior_precision`` rebuilds the decomposition without it), so that formula is
  checked on laplace-torch's ``KronDecomposed`` directly.
- laplace-torch's log marginal likelihood includes the data log likelihood, ours drops
  every term that does not depend on lam, so differences between two lam are compared.
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("laplace")
from laplace import Laplace  # noqa: E402
from laplace.utils.matrix import KronDecomposed  # noqa: E402

from lucidml.testing import tiny_clip  # noqa: E402
from lucidml.uncertainty import BayesVLM, PosteriorConfig, kfac  # noqa: E402
from lucidml.uncertainty.towers import TowerInputs  # noqa: E402

N, D_IN, P, C = 60, 5, 4, 3  # items, input dims, features (last-layer input), classes
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)
DT = torch.float64


def _loader(x, y, batch_size):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


@pytest.fixture(scope="module")
def softmax_problem():
    """A two-module softmax classifier (laplace-torch needs a feature extractor before
    the last layer) and its features, labels and laplace-torch fits at n = 1 and 10."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(N, D_IN, generator=g, dtype=DT)
    y = torch.randint(0, C, (N,), generator=g)
    features = torch.nn.Sequential(torch.nn.Linear(D_IN, P), torch.nn.Tanh()).to(DT)
    head = torch.nn.Linear(P, C, bias=False).to(DT)
    model = torch.nn.Sequential(features, head)
    fits = {}
    for n in (1.0, 10.0):
        la = Laplace(
            model,
            "classification",
            subset_of_weights="last_layer",
            hessian_structure="kron",
            temperature=1.0 / n,
        )
        la.fit(_loader(x, y, 16))  # several batches: laplace-torch rescales each one
        fits[n] = la
    with torch.no_grad():
        phi = features(x)
        probs = torch.softmax(head(phi), dim=-1)
    # our factors from the layer's sums: sum a a^T, and the softmax GGN sum diag(p) - p p^T
    ggn = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    ours = kfac.KronFactors.from_sums(phi.T @ phi, ggn.sum(0), N)
    theta_sqnorm = float((head.weight.detach() ** 2).sum())
    return dict(x=x, phi=phi, head=head, fits=fits, ours=ours, theta_sqnorm=theta_sqnorm)


def _eig(factors):
    (alpha, U), (beta, V) = kfac.psd_eigh(factors.A), kfac.psd_eigh(factors.B)
    return alpha, U, beta, V


def _their_marglik(la, lam: float) -> float:
    return float(la.log_marginal_likelihood(torch.tensor(lam, dtype=DT)))


def test_kfac_factors_are_laplace_torchs_up_to_the_sqrt_n_convention(softmax_problem):
    B_la, A_la = softmax_problem["fits"][1.0].H_facs.kfacs[0]
    ours = softmax_problem["ours"]
    torch.testing.assert_close(ours.A, math.sqrt(N) * A_la, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.B, B_la / math.sqrt(N), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        torch.kron(ours.A, ours.B), torch.kron(A_la, B_la), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("n", [1.0, 10.0])
def test_log_marginal_likelihood_matches_at_several_lambdas(softmax_problem, n):
    la = softmax_problem["fits"][n]
    alpha, _, beta, _ = _eig(softmax_problem["ours"])
    th2 = softmax_problem["theta_sqnorm"]
    ours = [float(kfac.log_marglik(lam, alpha, beta, th2, n, "eig")) for lam in LAMBDAS]
    theirs = [_their_marglik(la, lam) for lam in LAMBDAS]
    for k in range(1, len(LAMBDAS)):  # each lambda against the first: the data term cancels
        assert ours[k] - ours[0] == pytest.approx(theirs[k] - theirs[0], rel=1e-10, abs=1e-10)
    # the same objective, not just the same shape: the data term is the only difference
    offset = float(-la.log_likelihood)
    for o, t in zip(ours, theirs, strict=True):
        assert t - o == pytest.approx(-offset, rel=1e-10)


def test_split_reference_is_laplace_torchs_damped_kron_on_its_own_factors(softmax_problem):
    la = softmax_problem["fits"][1.0]
    (l_b, l_a), (q_b, q_a) = la.H.eigenvalues[0], la.H.eigenvectors[0]
    alpha, beta = l_a.clamp_min(0), l_b.clamp_min(0)
    for lam in LAMBDAS:
        damped = KronDecomposed(
            [[q_b, q_a]], [[beta, alpha]], deltas=torch.tensor([lam], dtype=DT), damping=True
        )
        ours = kfac.precision_logdet(alpha, beta, 1.0, lam, "split-reference")
        assert float(ours) == pytest.approx(float(damped.logdet()), rel=1e-12)


@pytest.mark.filterwarnings("ignore:By default `link_approx`")
def test_optimised_prior_precision_is_laplace_torchs_optimum(softmax_problem):
    la = softmax_problem["fits"][1.0]
    alpha, _, beta, _ = _eig(softmax_problem["ours"])
    lam = kfac.optimize_prior_precision(
        alpha, beta, softmax_problem["theta_sqnorm"], n=1.0, damping="eig"
    )
    # laplace-torch's own objective is stationary there (d/d log lam), and no larger nearby
    log_lam = torch.tensor(math.log(lam), dtype=DT, requires_grad=True)
    la.log_marginal_likelihood(log_lam.exp()).backward()
    assert abs(float(log_lam.grad)) < 1e-6
    best = _their_marglik(la, lam)
    assert best >= max(_their_marglik(la, lam * 1.01), _their_marglik(la, lam / 1.01))
    # laplace-torch's optimiser (100 Adam steps on log lam from 1) lands within 1%
    la.optimize_prior_precision(method="marglik", pred_type="glm", n_steps=100)
    assert float(la.prior_precision) == pytest.approx(lam, rel=1e-2)
    la.prior_precision = 1.0  # leave the shared fit as it was


@pytest.mark.parametrize("n", [1.0, 10.0])
def test_glm_predictive_logit_variance_matches(softmax_problem, n):
    la = softmax_problem["fits"][n]
    alpha, U, beta, V = _eig(softmax_problem["ours"])
    lam = 0.7
    la.prior_precision = lam
    f_mu, f_var = la._glm_predictive_distribution(softmax_problem["x"][:9])
    la.prior_precision = 1.0
    phi = softmax_problem["phi"][:9]
    M = kfac.covariance_eigenvalues(alpha, beta, n, lam, "eig")
    var = kfac.embedding_variance(phi, U, V, M)
    torch.testing.assert_close(f_mu, phi @ softmax_problem["head"].weight.detach().T)
    torch.testing.assert_close(var, f_var.diagonal(dim1=1, dim2=2), rtol=1e-10, atol=1e-14)


class _Normalise(torch.nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=-1)


def test_bayesvlm_infonce_factors_are_laplace_torchs_exact_ggn_kfac():
    """Our closed-form InfoNCE Hessian behind BayesVLM.fit against laplace-torch's K-FAC of
    the same contrastive head: projection, normalisation, then fixed candidates scaled by
    the logit scale (frozen, so the projection is the only parameter group)."""
    vlm = tiny_clip()
    n_pairs = 12
    bvlm = BayesVLM(vlm, PosteriorConfig(class_batch=n_pairs, data_batch=5))
    g = torch.Generator().manual_seed(1)
    inputs = {
        t: TowerInputs(torch.randn(n_pairs, bvlm.layers[t].in_features, generator=g, dtype=DT))
        for t in ("image", "text")
    }
    bvlm.fit_inputs(inputs["image"], inputs["text"])
    for tower, other in (("image", "text"), ("text", "image")):
        layer = bvlm.layers[tower]
        proj = torch.nn.Linear(layer.in_features, layer.out_features, bias=False).to(DT)
        proj.weight.data.copy_(bvlm._weight(tower)[0])
        candidates = torch.nn.Linear(layer.out_features, n_pairs, bias=False).to(DT)
        candidates.weight.data.copy_(
            bvlm.logit_scale * F.normalize(bvlm.embed(other, inputs[other]), dim=-1)
        )
        candidates.weight.requires_grad_(False)
        la = Laplace(
            torch.nn.Sequential(proj, _Normalise(), candidates),
            "classification",
            subset_of_weights="all",
            hessian_structure="kron",
        )
        # the exact GGN needs no labels; any will do
        la.fit(_loader(inputs[tower].a, torch.arange(n_pairs), n_pairs))
        B_la, A_la = la.H_facs.kfacs[0]
        ours = bvlm.posteriors[tower].factors
        torch.testing.assert_close(ours.A, math.sqrt(n_pairs) * A_la, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.B, B_la / math.sqrt(n_pairs), rtol=1e-10, atol=1e-12)
