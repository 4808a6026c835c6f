"""Uncertainty-aware selection of a small labelled support set, then few-shot tuning.

Targets are unlabelled images the model will be used on; the pool is a labelled set to
pick from. ``select_on="test"`` ranks the targets and maps each pick to its nearest pool
item (diagonal 2-Wasserstein between image-embedding Gaussians); ``"train"`` ranks the
pool directly. Only the image projection is tuned afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lucidml.core.progress import track
from lucidml.errors import InputError
from lucidml.uncertainty import acquisition
from lucidml.uncertainty.checkpoints import RowStore
from lucidml.uncertainty.config import ActiveConfig, FinetuneConfig, PredictConfig
from lucidml.uncertainty.evaluation import flat_score
from lucidml.uncertainty.model import BayesVLM
from lucidml.uncertainty.towers import TowerInputs


@dataclass
class AcquisitionContext:
    """What a strategy may look at: the fitted model, candidates, targets, class texts."""

    bvlm: BayesVLM
    candidates: TowerInputs
    targets: TowerInputs
    classes: TowerInputs
    config: ActiveConfig
    generator: torch.Generator

    def sampled_probs(self, x: TowerInputs, n_samples: int) -> torch.Tensor:
        logits = self.bvlm.sample_logits(x, self.classes, n_samples, self.generator)
        return torch.softmax(logits, dim=-1)


def _random(ctx: AcquisitionContext) -> torch.Tensor:
    return torch.rand(len(ctx.candidates), generator=ctx.generator, dtype=torch.float64)


def _entropy(ctx: AcquisitionContext) -> torch.Tensor:
    logits = ctx.bvlm.logits(ctx.candidates, ctx.classes, map_estimate=True).mean
    return acquisition.entropy(torch.softmax(logits, dim=-1))


def _bald(ctx: AcquisitionContext) -> torch.Tensor:
    return acquisition.bald(ctx.sampled_probs(ctx.candidates, ctx.config.bald_samples))


def _epig(ctx: AcquisitionContext) -> torch.Tensor:
    c = ctx.config
    cand = _knn_prefilter(ctx, c.epig_pool_max)
    targ = torch.randperm(len(ctx.targets), generator=ctx.generator)[: c.epig_target_max]
    both = TowerInputs.cat([ctx.candidates[cand], ctx.targets[targ]])
    probs = ctx.sampled_probs(both, c.epig_samples)  # one set of draws for both
    scores = torch.full((len(ctx.candidates),), -torch.inf, dtype=probs.dtype, device=probs.device)
    scores[cand] = acquisition.epig(probs[:, : len(cand)], probs[:, len(cand) :])
    return scores


def _knn_prefilter(ctx: AcquisitionContext, limit: int) -> torch.Tensor:
    """Indices of at most ``limit`` candidates, those closest to any target."""
    if len(ctx.candidates) <= limit:
        return torch.arange(len(ctx.candidates))
    nearest = torch.full(
        (len(ctx.candidates),), torch.inf, dtype=torch.float64, device=ctx.candidates.a.device
    )
    for start in range(0, len(ctx.targets), 1024):  # bounded memory for large target sets
        chunk = ctx.targets[start : start + 1024]
        dist = embedding_distances(ctx.bvlm, chunk, ctx.candidates, ctx.config.knn_distance)
        nearest = torch.minimum(nearest, dist.min(0).values)
    return nearest.cpu().argsort()[:limit]


STRATEGIES: dict[str, Callable[[AcquisitionContext], torch.Tensor]] = {
    "random": _random,
    "entropy": _entropy,
    "bald": _bald,
    "epig": _epig,
}


def embedding_distances(
    bvlm: BayesVLM, a: TowerInputs, b: TowerInputs, kind: str = "w2diag"
) -> torch.Tensor:
    """Pairwise distances (len(a), len(b)) between image-embedding Gaussians."""
    mu_a, var_a = bvlm.embedding_moments("image", a, map_estimate=kind == "euclidean")
    mu_b, var_b = bvlm.embedding_moments("image", b, map_estimate=kind == "euclidean")
    return acquisition.w2_diag_sq(mu_a, var_a, mu_b, var_b)


def select(
    bvlm: BayesVLM,
    pool: TowerInputs,
    targets: TowerInputs,
    classes: TowerInputs,
    config: ActiveConfig | None = None,
) -> torch.Tensor:
    """Pool indices of the support set, best first (``config.budget`` of them)."""
    config = config or ActiveConfig()
    if config.budget > len(pool):
        raise InputError(f"budget {config.budget} exceeds the pool size {len(pool)}")
    if config.select_on == "test" and config.budget > len(targets):
        raise InputError(
            f"budget {config.budget} exceeds the number of targets {len(targets)}; "
            "select on the pool (select_on: train) or lower the budget"
        )
    gen = torch.Generator().manual_seed(config.seed)
    on_targets = config.select_on == "test"
    ctx = AcquisitionContext(bvlm, targets if on_targets else pool, targets, classes, config, gen)
    scores = STRATEGIES[config.strategy](ctx)
    order = scores.cpu().argsort(descending=True, stable=True)  # indices live on the CPU
    if not on_targets:
        return order[: config.budget]
    # each visited target yields exactly one pick, so only the top ``budget`` rows matter
    top = order[: config.budget]
    dist = embedding_distances(bvlm, targets[top], pool, config.knn_distance)
    return acquisition.nearest_unused(dist, torch.arange(len(top)), config.budget)


def finetune_image_projection(
    bvlm: BayesVLM,
    train: TowerInputs,
    train_y: torch.Tensor,
    val: TowerInputs,
    val_y: torch.Tensor,
    classes: TowerInputs,
    config: FinetuneConfig | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Tune the image projection weight with cross-entropy on MAP logits (AdamW, float32
    on the posterior's device); return the weight of the epoch with the lowest validation
    loss (the initial one counts), or the last epoch's when there is no validation set."""
    config = config or FinetuneConfig()
    gen = torch.Generator().manual_seed(seed)  # CPU: the same batches on every device
    train_y, val_y = train_y.to(bvlm.device), val_y.to(bvlm.device)
    text = F.normalize(bvlm.embed("text", classes), dim=-1).float()
    weight = bvlm.image_weight.float().clone().requires_grad_(True)
    opt = torch.optim.AdamW([weight], lr=config.lr, weight_decay=config.weight_decay)
    scale = bvlm.logit_scale

    def loss_of(x: TowerInputs, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        emb = bvlm.embed("image", TowerInputs(x.a.float(), _float(x.r)), w)
        return F.cross_entropy(scale * F.normalize(emb, dim=-1) @ text.T + bvlm.logit_bias, y)

    def val_loss() -> float:
        with torch.no_grad():
            return float(loss_of(val, val_y, weight))

    validate = len(val) > 0
    best_loss = val_loss() if validate else None
    best = weight.detach().clone()
    for _ in track(range(config.epochs), "fine-tuning epochs"):
        for idx in torch.randperm(len(train), generator=gen).split(config.batch_size):
            loss = loss_of(train[idx], train_y[idx], weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if validate and (loss := val_loss()) < best_loss:
            best_loss, best = loss, weight.detach().clone()
    return (best if validate else weight.detach()).double()


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()


def with_image_weight(bvlm: BayesVLM, weight: torch.Tensor) -> BayesVLM:
    """A view of ``bvlm`` whose image projection uses ``weight``; the posterior is kept."""
    tuned = copy.copy(bvlm)
    tuned.weight_overrides = {**bvlm.weight_overrides, "image": weight.detach().double()}
    return tuned


def budget_curve(
    bvlm: BayesVLM,
    pool: TowerInputs,
    pool_y: torch.Tensor,
    targets: TowerInputs,
    target_y: torch.Tensor,
    classes: TowerInputs,
    budgets: list[int],
    config: ActiveConfig | None = None,
    seeds: int = 1,
    predict: PredictConfig | None = None,
    store: RowStore | None = None,
) -> list[dict]:
    """For each budget: select, tune on the support set, evaluate on the labelled targets.
    One selection at the largest budget serves all smaller ones (the ranking is nested).
    Validation items for the best epoch come from the pool, outside every support set and
    not counted in the budget; each row says how many (``val_items``).
    With a ``store``, finished rows are saved as they come and rows already there are
    reused (a seed whose rows are all there is not even selected again)."""
    config = config or ActiveConfig()
    zero_shot = flat_score(bvlm, targets, target_y, classes, predict)
    rows = [{"budget": 0, "seed": 0, "val_items": 0, **zero_shot}]
    for seed in track(range(seeds), f"{config.strategy}: seeds"):
        cfg = config.updated(budget=max(budgets), seed=config.seed + seed)
        done = {k: store.get(cfg, k, predict) for k in budgets} if store else {}
        if budgets and all(done.get(k) is not None for k in budgets):
            rows += [done[k] for k in budgets]
            continue
        picks = select(bvlm, pool, targets, classes, cfg)
        rest = torch.ones(len(pool), dtype=torch.bool)
        rest[picks] = False
        rest_idx = rest.nonzero().squeeze(1)
        val_gen = torch.Generator().manual_seed(cfg.seed)
        val = rest_idx[torch.randperm(len(rest_idx), generator=val_gen)[: cfg.finetune.val_size]]
        for k in track(budgets, f"{config.strategy}: budgets"):
            if done.get(k) is not None:
                rows.append(done[k])
                continue
            sel = picks[:k]
            w = finetune_image_projection(
                bvlm,
                pool[sel],
                pool_y[sel],
                pool[val],
                pool_y[val],
                classes,
                cfg.finetune,
                seed=cfg.seed,
            )
            scores = flat_score(with_image_weight(bvlm, w), targets, target_y, classes, predict)
            # the validation items are labelled too, but outside the budget: said per row
            rows.append({"budget": k, "seed": cfg.seed, "val_items": len(val), **scores})
            if store is not None:
                store.put(cfg, k, predict, rows[-1])
    return rows
