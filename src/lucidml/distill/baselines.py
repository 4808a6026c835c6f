"""Shipped distillers to rank: ``distill(method, x, y, ipc, seed) -> (x_syn, y_syn)``.

Selection baselines (random, herding, k-center, class-mean) pick or average real images;
DM and DC optimise synthetic images; ``noise`` is a control of Gaussian images. Every
method is seeded and returns ``ipc`` images per class, sorted by class, on the CPU. With
``device``, DM, DC, herding and k-center compute there (random draws stay on CPU
generators); k-means (sklearn) and the noise and random controls run on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lucidml.core.progress import track
from lucidml.core.runs import derive_seed
from lucidml.distill.augment import DSA
from lucidml.distill.config import DistillConfig
from lucidml.distill.data import random_subset
from lucidml.distill.models import build_model
from lucidml.distill.trainer import init_model
from lucidml.errors import InputError, ShapeError

Features = Callable[[torch.Tensor], torch.Tensor]


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1).double()


# --- selection -----------------------------------------------------------------------------


def herding_order(phi: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding: the t-th pick minimises ||mu - (sum of picks + phi(x)) / t||."""
    mu = phi.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(len(phi), dtype=torch.bool, device=phi.device)
    picks = []
    for t in range(1, k + 1):
        dist = ((mu - (total + phi) / t) ** 2).sum(1)
        dist[~free] = float("inf")
        i = int(dist.argmin())
        picks.append(i)
        free[i] = False
        total += phi[i]
    return torch.tensor(picks)


def kcenter_order(phi: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center: start nearest the mean, then the point farthest from all picks."""
    first = int(((phi - phi.mean(0)) ** 2).sum(1).argmin())
    picks = [first]
    nearest = torch.cdist(phi, phi[first : first + 1]).squeeze(1)
    for _ in range(k - 1):
        nearest[picks] = -float("inf")
        i = int(nearest.argmax())
        picks.append(i)
        nearest = torch.minimum(nearest, torch.cdist(phi, phi[i : i + 1]).squeeze(1))
    return torch.tensor(picks)


def _per_class(order: Callable, x, y, ipc, features: Features, device: str):
    device = "cpu" if device.startswith("mps") else device  # MPS has no float64 (pixels)
    xs, ys = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        pick = idx[order(features(x[idx].to(device)), ipc).cpu()]
        xs.append(x[pick])
        ys.append(y[pick])
    return torch.cat(xs), torch.cat(ys)


def class_means(x: torch.Tensor, y: torch.Tensor, ipc: int, seed: int):
    """The class mean (IPC 1) or k-means++ centroids of each class (IPC > 1)."""
    from sklearn.cluster import KMeans

    xs, ys = [], []
    for c in torch.unique(y).tolist():
        xc = x[y == c]
        if ipc == 1:
            centres = xc.double().mean(0, keepdim=True)
        else:
            km = KMeans(ipc, init="k-means++", n_init=1, random_state=seed).fit(_pixels(xc).numpy())
            centres = torch.from_numpy(km.cluster_centers_).reshape(ipc, *xc.shape[1:])
        xs.append(centres.to(x.dtype))
        ys.append(torch.full((ipc,), c))
    return torch.cat(xs), torch.cat(ys)


def noise_images(x: torch.Tensor, y: torch.Tensor, ipc: int, seed: int):
    """Gaussian images with the data's per-channel mean and std (N(0, I) after the usual
    normalisation); labels go round-robin over the classes."""
    gen = torch.Generator().manual_seed(seed)
    k = int(y.max()) + 1
    mean = x.mean((0, 2, 3), keepdim=True)
    std = x.std((0, 2, 3), keepdim=True)
    noise = torch.randn(k * ipc, *x.shape[1:], generator=gen) * std + mean
    labels = torch.arange(k * ipc) % k
    order = labels.argsort(stable=True)
    return noise[order], labels[order]


# --- distribution matching -------------------------------------------------------------------


def dm_loss(
    embed: nn.Module,
    real: list[torch.Tensor],
    syn: list[torch.Tensor],
    dsa: DSA | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """sum_c ||mean psi(A(x_c)) - mean psi(A(s_c))||^2 with one siamese A per class."""
    if dsa is not None:
        plans = [
            dsa.draw(xr, torch.Generator().manual_seed(derive_seed(seed, c)), siamese=True)
            for c, xr in enumerate(real)
        ]
        real = [dsa.apply(xr, plan) for xr, plan in zip(real, plans, strict=True)]
        syn = [dsa.apply(xs, plan) for xs, plan in zip(syn, plans, strict=True)]
    # One forward for all classes: psi acts per image, so this equals per-class forwards.
    emb_real = embed(torch.cat(real)).split([len(r) for r in real])
    emb_syn = embed(torch.cat(syn)).split([len(s) for s in syn])
    return sum(
        ((er.mean(0) - es.mean(0)) ** 2).sum() for er, es in zip(emb_real, emb_syn, strict=True)
    )


def _embedder(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.features, nn.Flatten()) if hasattr(model, "features") else model


def _class_batches(by_class: list[torch.Tensor], n: int, gen: torch.Generator):
    """A random batch of up to ``n`` images of each class (indices drawn on the CPU)."""
    return [xc[torch.randperm(len(xc), generator=gen)[:n].to(xc.device)] for xc in by_class]


def distribution_matching(x, y, ipc, seed, cfg: DistillConfig, model_fn, device: str):
    """DM: match mean embeddings of real and synthetic images under a fresh random ConvNet."""
    classes = torch.unique(y).tolist()
    by_class = [x[y == c].to(device) for c in classes]  # moved once
    syn_y = torch.unique(y).repeat_interleave(ipc)
    init = x[random_subset(y, {c: ipc for c in classes}, seed)]
    syn = init.to(device).clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.dm_lr_img, momentum=cfg.dm_momentum)
    dsa = DSA(cfg.augment.dsa_strengths()) if cfg.augment.dsa else None
    gen = torch.Generator().manual_seed(seed)
    for it in track(range(cfg.dm_iterations), "DM iterations"):
        net = init_model(model_fn, derive_seed(seed, "dm-net", it)).to(device)
        embed = _embedder(net).requires_grad_(False)
        real = _class_batches(by_class, cfg.dm_batch_real, gen)
        parts = [syn[i * ipc : (i + 1) * ipc] for i in range(len(classes))]
        loss = dm_loss(embed, real, parts, dsa, derive_seed(seed, "dm-aug", it))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return syn.detach().cpu(), syn_y


# --- gradient matching -----------------------------------------------------------------------


def gradient_distance(real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """sum over layers and output rows of 1 - cos(g_real, g_syn), skipping 1-D parameters."""
    total = real[0].new_zeros(())
    for gr, gs in zip(real, syn, strict=True):
        if gr.ndim == 1:
            continue
        total = (
            total + (1 - F.cosine_similarity(gr.flatten(1), gs.flatten(1), dim=1, eps=1e-6)).sum()
        )
    return total


def gradient_matching(x, y, ipc, seed, cfg: DistillConfig, model_fn, device: str):
    """DC: match per-class CE gradients of real and synthetic batches on networks that are
    trained on the synthetic set between image updates (``outer``, ``inner`` steps)."""
    classes = torch.unique(y).tolist()
    by_class = [x[y == c].to(device) for c in classes]  # moved once
    gen = torch.Generator().manual_seed(seed)
    outer, inner = cfg.dc_outer_inner or ((1, 1) if ipc == 1 else (2, 5))
    init = torch.randn(len(classes) * ipc, *x.shape[1:], generator=gen)
    syn = init.to(device).requires_grad_(True)
    syn_y = torch.tensor(classes).repeat_interleave(ipc)
    targets = syn_y.to(device)
    opt_img = torch.optim.SGD([syn], lr=cfg.dc_lr_img, momentum=0.5)
    dsa = DSA(cfg.augment.dsa_strengths()) if cfg.augment.dsa else None
    for it in track(range(cfg.dc_iterations), "DC iterations"):
        net = init_model(model_fn, derive_seed(seed, "dc-net", it)).to(device)
        params = [p for p in net.parameters()]
        opt_net = torch.optim.SGD(params, lr=cfg.dc_lr_net)
        for ol in range(outer):
            real = _class_batches(by_class, cfg.dc_batch_real, gen)
            loss = syn.new_zeros(())
            for i, c in enumerate(classes):
                xr, xs = real[i], syn[i * ipc : (i + 1) * ipc]
                if dsa is not None:
                    aug_gen = torch.Generator().manual_seed(derive_seed(seed, it, ol, c))
                    plan = dsa.draw(xr, aug_gen, siamese=True)
                    xr, xs = dsa.apply(xr, plan), dsa.apply(xs, plan)
                g_real = torch.autograd.grad(
                    F.cross_entropy(net(xr), targets.new_full((len(xr),), c)), params
                )
                g_syn = torch.autograd.grad(
                    F.cross_entropy(net(xs), targets.new_full((len(xs),), c)),
                    params,
                    create_graph=True,
                )
                loss = loss + gradient_distance([g.detach() for g in g_real], list(g_syn))
            opt_img.zero_grad()
            loss.backward()
            opt_img.step()
            if ol == outer - 1:
                break
            images = syn.detach()
            for _ in range(inner):
                opt_net.zero_grad()
                F.cross_entropy(net(images), targets).backward()
                opt_net.step()
    return syn.detach().cpu(), syn_y


# --- registry --------------------------------------------------------------------------------

METHODS = ("random", "herding", "kcenter", "classmean", "dm", "dc", "noise")


def distill(
    method: str,
    x: torch.Tensor,
    y: torch.Tensor,
    ipc: int,
    seed: int = 0,
    cfg: DistillConfig | None = None,
    features: Features | None = None,
    device: str = "cpu",
):
    """A distilled set of ``ipc`` images per class from real images ``x`` (N, C, H, W) with
    labels ``y``. ``features`` maps images to vectors for herding and k-center (pixels by
    default); ``device`` is where DM, DC, herding and k-center compute."""
    if method not in METHODS:
        raise InputError(f"unknown method '{method}': choose from {', '.join(METHODS)}")
    if x.ndim != 4 or len(x) != len(y):
        raise ShapeError(
            f"expected images (N, C, H, W) and N labels, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if ipc < 1:
        raise InputError(f"IPC must be at least 1, got {ipc}")
    smallest = int(torch.unique(y, return_counts=True)[1].min())
    if ipc > smallest and method not in ("noise", "dc"):
        raise InputError(f"IPC {ipc} is larger than the smallest class ({smallest} images)")
    cfg = cfg or DistillConfig()
    features = features or _pixels
    torch.manual_seed(seed)  # k-means and any library code that reads the global generator
    np.random.seed(seed)
    if method == "random":
        idx = random_subset(y, {c: ipc for c in torch.unique(y).tolist()}, seed)
        return x[idx], y[idx]
    if method == "herding":
        return _per_class(herding_order, x, y, ipc, features, device)
    if method == "kcenter":
        return _per_class(kcenter_order, x, y, ipc, features, device)
    if method == "classmean":
        return class_means(x, y, ipc, seed)
    if method == "noise":
        return noise_images(x, y, ipc, seed)

    def model_fn():
        m = cfg.model
        return build_model(m.name, x.shape[1], int(y.max()) + 1, x.shape[-1], **m.kwargs())

    run = distribution_matching if method == "dm" else gradient_matching
    return run(x, y, ipc, seed, cfg, model_fn, device)
