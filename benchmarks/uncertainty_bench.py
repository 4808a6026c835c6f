"""Speed of BayesVLM's closed forms against sampling and autograd baselines (same run).

(a) Predictive for N images x C classes: analytic cosine moments + probit vs Monte Carlo
    with 400 draws of the image and text embedding Gaussians (and vs 400 draws of the
    Gaussian logits). Target: analytic >= 20x faster than embedding MC.
(b) K-FAC factors for one projection layer: our closed-form GGN vs a torch.func
    Jacobian-based GGN, and vs laplace-torch's exact-GGN K-FAC of the same layer in the
    same dtype (float64) when it is installed. Target: <= 1.0x the baseline's time.

Default sizes keep the run under about two minutes on 2 cores; ``--full`` uses the
issue's 10,000 images x 100 classes at D = 512.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from lucidml.uncertainty.hessians import infonce_ggn_sum
from lucidml.uncertainty.predictive import mc_softmax, probit_softmax
from lucidml.uncertainty.probcos import cosine_moments


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def embedding_mc(mu_i, var_i, mu_t, var_t, scale, samples, gen, chunk=20):
    total = torch.zeros(len(mu_i), len(mu_t))
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        g = mu_i + var_i.sqrt() * torch.randn(k, *mu_i.shape, generator=gen)
        h = mu_t + var_t.sqrt() * torch.randn(k, *mu_t.shape, generator=gen)
        logits = scale * F.normalize(g, dim=-1) @ F.normalize(h, dim=-1).transpose(1, 2)
        total += torch.softmax(logits, -1).sum(0)
    return total / samples


def bench_predictive(n: int, c: int, d: int, samples: int = 400) -> None:
    gen = torch.Generator().manual_seed(0)
    mu_i, mu_t = torch.randn(n, d, generator=gen), torch.randn(c, d, generator=gen)
    var_i = 0.01 * torch.rand(n, d, generator=gen)
    var_t = 0.01 * torch.rand(c, d, generator=gen)
    scale = 30.0

    def analytic():
        mean, var = cosine_moments(mu_i, var_i, mu_t, var_t)
        return probit_softmax(scale * mean, scale**2 * var)

    t_ana, p_ana = timed(analytic, repeat=3)
    t_mc, p_mc = timed(lambda: embedding_mc(mu_i, var_i, mu_t, var_t, scale, samples, gen))
    mean, var = cosine_moments(mu_i, var_i, mu_t, var_t)
    t_lmc, _ = timed(lambda: mc_softmax(scale * mean, scale**2 * var, samples, generator=gen))
    gap = float((p_ana - p_mc).abs().max())
    agree = float((p_ana.argmax(1) == p_mc.argmax(1)).float().mean())
    print(f"(a) predictive, {n} images x {c} classes, D={d}, {samples} MC draws")
    print(f"    analytic cosine moments + probit: {t_ana:8.3f} s")
    print(
        f"    MC over embedding Gaussians:      {t_mc:8.3f} s   ratio {t_mc / t_ana:7.1f}x "
        f"(target >= 20x)"
    )
    print(f"    MC over Gaussian logits:          {t_lmc:8.3f} s   ratio {t_lmc / t_ana:7.1f}x")
    print(f"    max |p_analytic - p_mc| = {gap:.3f}, argmax agreement {agree:.3f}")


def autograd_ggn_sum(xs, targets, scale):
    def logits(x):
        return scale * F.normalize(x, dim=-1) @ targets.T

    jac = vmap(jacrev(logits))(xs)  # (N, C, D)
    p = torch.softmax(vmap(logits)(xs), -1)
    h = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("ncd,nce,nef->df", jac, h, jac)


def bench_kfac(n: int, c: int, p: int, d: int, batch: int = 256, autograd_batch: int = 32) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, p, generator=gen, dtype=torch.float64)
    W = torch.randn(d, p, generator=gen, dtype=torch.float64) / p**0.5
    targets = F.normalize(torch.randn(c, d, generator=gen, dtype=torch.float64), dim=-1)
    xs, scale = a @ W.T, 20.0

    def factors(ggn, step):
        B = sum(ggn(xs[i : i + step], targets, scale) for i in range(0, n, step))
        return a.T @ a / n**0.5, B / n**0.5

    t_ours, (a_ours, b_ours) = timed(lambda: factors(infonce_ggn_sum, batch), repeat=2)
    t_base, (_, b_base) = timed(lambda: factors(autograd_ggn_sum, autograd_batch))
    err = float((b_ours - b_base).abs().max() / b_base.abs().max())
    print(f"(b) K-FAC factors, {n} items x {c} candidates, layer {d}x{p}")
    print(f"    closed-form GGN:           {t_ours:8.3f} s")
    print(
        f"    torch.func Jacobian GGN:   {t_base:8.3f} s   ours/baseline "
        f"{t_ours / t_base:.4f}x ({t_base / t_ours:.0f}x faster; target <= 1.0x), "
        f"rel. difference {err:.1e}"
    )
    if importlib.util.find_spec("laplace") is None:
        print("    laplace-torch K-FAC: skipped (laplace-torch is not installed)")
        return
    bench_laplace_torch(a, W, targets, scale, t_ours, (a_ours, b_ours))


class _Normalise(torch.nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=-1)


def bench_laplace_torch(a, W, targets, scale, t_ours, ours) -> None:
    """laplace-torch's exact-GGN K-FAC of the same layer in the same dtype: the projection
    W, then normalisation and the fixed candidates (frozen, so W is the only parameter
    group; a one-module model is refused by its last-layer mode, hence ``"all"``)."""
    from laplace import Laplace

    proj = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).to(a.dtype)
    proj.weight.data.copy_(W)
    head = torch.nn.Linear(W.shape[0], len(targets), bias=False).to(a.dtype)
    head.weight.data.copy_(scale * targets)
    head.weight.requires_grad_(False)
    model = torch.nn.Sequential(proj, _Normalise(), head)
    y = torch.zeros(len(a), dtype=torch.long)  # the exact GGN does not read labels
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, y), batch_size=256)
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    t_la, _ = timed(lambda: la.fit(loader))
    B_la, A_la = la.H_facs.kfacs[0]
    n = len(a)  # laplace-torch's A is the mean, B the sum; ours both divide by sqrt(N)
    a_ours, b_ours = ours
    err = max(
        float((a_ours - A_la * n**0.5).abs().max() / a_ours.abs().max()),
        float((b_ours - B_la / n**0.5).abs().max() / b_ours.abs().max()),
    )
    print(
        f"    laplace-torch K-FAC (exact GGN, same layer, {a.dtype}): {t_la:8.3f} s   "
        f"ours/laplace {t_ours / t_la:.4f}x ({t_la / t_ours:.0f}x faster; target <= 1.0x), "
        f"rel. difference {err:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's full sizes")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (1 avoids thrashing on a busy machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    torch.manual_seed(0)
    if args.full:
        bench_predictive(10_000, 100, 512)
        bench_kfac(2048, 1024, 768, 512)
    else:
        bench_predictive(2000, 100, 256)
        bench_kfac(1024, 512, 128, 64)


if __name__ == "__main__":
    main()
