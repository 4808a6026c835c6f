"""The jobs behind ``lucid uncertainty``: fit, zero-shot, active selection, and the demo.

Every job reads and checks all of its inputs before it creates the run folder, so a
mistake leaves nothing half-written.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from lucidml.core import metrics
from lucidml.core.digits_clip import TEMPLATES
from lucidml.core.report import Report
from lucidml.core.runs import Run, atomic_write_bytes, write_json
from lucidml.uncertainty import active as al
from lucidml.uncertainty import data, evaluation, plots
from lucidml.uncertainty.config import ActiveConfig, FinetuneConfig, PosteriorConfig, PredictConfig
from lucidml.uncertainty.model import BayesVLM, FactorSums
from lucidml.uncertainty.towers import image_inputs, text_inputs

SYSTEM = "uncertainty"


def load_model(name: str):
    from lucidml.core.zoo import load_vlm

    return load_vlm(name)


def fit(
    model: str,
    pairs: str,
    out: str | Path | None = None,
    config: PosteriorConfig | None = None,
    resume: bool = False,
) -> tuple[BayesVLM, Path]:
    """Fit K-FAC factors on image-caption pairs and the prior precision; save them.
    The running factor sums are checkpointed after every class batch; ``resume`` picks
    them up from the run folder and skips the batches already counted."""
    config = config or PosteriorConfig()
    images, captions = data.read_pairs(pairs)
    bvlm = BayesVLM(load_model(model), config)
    bvlm.vlm.preprocess(images[:1])  # wrong channel counts or sizes fail before any write
    run = Run(SYSTEM, out, {"model": model, "pairs": pairs, **config.model_dump(mode="json")})
    saved = run.resume("factor_sums") if resume else None
    sums = FactorSums.from_state_dict(saved) if saved is not None else None
    start = time.perf_counter()
    bvlm.fit(
        (images, captions),
        sums=sums,
        on_batch=lambda s: run.checkpoint("factor_sums", s.state_dict()),
    )
    bvlm.optimize_prior_precision()
    seconds = time.perf_counter() - start
    bvlm.save(run.path)
    results = {
        "model": model,
        "n_pairs": len(images),
        "resumed_after_batches": sums.n_batches if sums is not None else 0,
        "prior_precision": bvlm.prior_precision,
        "fit_seconds": seconds,
    }
    run.write_results(results)
    rep = Report(f"BayesVLM posterior for {model}")
    rep.text(
        f"K-FAC factors of the image and text projections from {len(images)} "
        f"image-caption pairs ({seconds:.1f} s); prior precision by marginal likelihood."
    )
    rep.table([{"tower": t, "prior precision": lam} for t, lam in bvlm.prior_precision.items()])
    rep.save(run.path)
    return bvlm, run.path


def zeroshot(
    model: str,
    hessian: str | Path,
    images: str,
    classes: str,
    out: str | Path | None = None,
    config: PredictConfig | None = None,
) -> Path:
    """Zero-shot predictions with uncertainty; metrics when the images carry labels."""
    config = config or PredictConfig()
    class_names = data.read_classes(classes)
    x, labels = data.read_images(images)
    data.check_labels(labels, len(class_names), "image")
    vlm = load_model(model)
    bvlm = BayesVLM.load(vlm, hessian)
    img = image_inputs(vlm, x, bvlm.config.encode_batch)
    cls = bvlm.class_inputs(class_names, config.templates)
    logits = bvlm.logits(img, cls)
    probs = logits.probs(config.predictive, config.mc_samples, config.seed)

    run = Run(
        SYSTEM,
        out,
        {
            "model": model,
            "hessian": str(hessian),
            "images": images,
            "classes": classes,
            **config.model_dump(mode="json"),
        },
    )
    buf = io.BytesIO()
    np.savez(buf, mean=logits.mean.numpy(), var=logits.var.numpy(), probs=probs.numpy())
    atomic_write_bytes(run / "predictions.npz", buf.getvalue())
    results = {
        "model": model,
        "n_images": len(x),
        "classes": class_names,
        "prior_precision": bvlm.prior_precision,
        "mean_logit_std": float(logits.var.sqrt().mean()),
    }
    rep = Report(f"BayesVLM zero-shot: {model}")
    if labels is not None:
        results["metrics"] = evaluation.score(bvlm, img, labels, cls, config)
        rep.table([{"method": m, **v} for m, v in results["metrics"].items()])
        map_probs = bvlm.logits(img, cls, map_estimate=True).probs()
        rep.figure(
            plots.reliability_grid(
                {images: {"MAP": (map_probs, labels), "BayesVLM": (probs, labels)}}, config.ece_bins
            ),
            "reliability",
        )
    rep.text(
        f"{len(x)} images, {len(class_names)} classes; predictions.npz holds the logit "
        "means, variances and probabilities."
    )
    run.write_results(results)
    return rep.save(run.path)


def active(
    model: str,
    hessian: str | Path,
    pool: str,
    targets: str,
    classes: str,
    out: str | Path | None = None,
    config: ActiveConfig | None = None,
    budgets: list[int] | None = None,
    seeds: int = 1,
) -> Path:
    """Select a support set from the labelled pool for the targets; with target labels,
    also tune on it and report accuracy and ECE against the budget."""
    config = config or ActiveConfig()
    class_names = data.read_classes(classes)
    pool_x, pool_y = data.read_pool(pool)
    target_x, target_y = data.read_images(targets)
    data.check_labels(pool_y, len(class_names), "pool")
    data.check_labels(target_y, len(class_names), "target")
    vlm = load_model(model)
    bvlm = BayesVLM.load(vlm, hessian)
    pool_in = image_inputs(vlm, pool_x, bvlm.config.encode_batch)
    target_in = image_inputs(vlm, target_x, bvlm.config.encode_batch)
    cls = bvlm.class_inputs(class_names)
    picks = al.select(bvlm, pool_in, target_in, cls, config)

    run = Run(
        SYSTEM,
        out,
        {
            "model": model,
            "hessian": str(hessian),
            "pool": pool,
            "targets": targets,
            "classes": classes,
            **config.model_dump(mode="json"),
        },
    )
    results = {
        "strategy": config.strategy,
        "budget": config.budget,
        "selected": picks.tolist(),
        "selected_labels": pool_y[picks].tolist(),
    }
    rep = Report(f"BayesVLM support-set selection: {config.strategy}")
    rep.text(
        f"Selected {len(picks)} of {len(pool_x)} pool items for {len(target_x)} targets "
        f"(select on {config.select_on})."
    )
    if target_y is not None:
        budgets = sorted(set(budgets or [config.budget]))
        rows = al.budget_curve(
            bvlm, pool_in, pool_y, target_in, target_y, cls, budgets, config, seeds=seeds
        )
        rows = [{"strategy": config.strategy, **r} for r in rows]
        for r in rows:
            run.log_metrics(r)
        results["curve"] = rows
        rep.table(rows, ["budget", "seed", "map_acc", "map_ece", "bayesvlm_nlpd", "bayesvlm_ece"])
        rep.figure(plots.budget_curves(rows), "budget_curves")
    run.write_results(results)
    return rep.save(run.path)


def demo(out_dir: Path, quick: bool = False) -> Path:
    """digits-clip: factors from the digits train pairs; MAP vs BayesVLM zero-shot on clean
    and shifted digits; active-learning curves for the four strategies on noisy digits."""
    from lucidml.core.config import seed_everything
    from lucidml.core.zoo import load_digits, load_vlm

    seed_everything(0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d, vlm = load_digits(), load_vlm("digits-clip")
    post_cfg, pred_cfg = PosteriorConfig(), PredictConfig()
    captions = data.digits_captions(d.train_y, d.class_names)
    train_in = image_inputs(vlm, d.train_x)
    start = time.perf_counter()
    bvlm = BayesVLM(vlm, post_cfg).fit_inputs(train_in, text_inputs(vlm, captions))
    bvlm.optimize_prior_precision()
    fit_seconds = time.perf_counter() - start
    bvlm.save(out_dir / "posterior")
    cls = bvlm.class_inputs(d.class_names, TEMPLATES)

    sets = {
        "clean": d.test_x,
        **{name: data.read_images(f"digits-{name}")[0] for name in data.SHIFTS},
    }
    inputs = {name: image_inputs(vlm, x) for name, x in sets.items()}
    zs, panels, spread = {}, {}, {}
    for name, x_in in inputs.items():
        zs[name] = evaluation.score(bvlm, x_in, d.test_y, cls, pred_cfg)
        logits = bvlm.logits(x_in, cls)
        panels[name] = {
            "MAP": (bvlm.logits(x_in, cls, map_estimate=True).probs(), d.test_y),
            "BayesVLM": (logits.probs(), d.test_y),
        }
        spread[name] = logits.var.sqrt().mean(1).numpy()
    ood_auroc = {
        name: metrics.auroc(
            np.r_[spread["clean"], spread[name]],
            np.r_[np.zeros(len(d.test_y)), np.ones(len(d.test_y))],
        )
        for name in data.SHIFTS
    }

    # Active learning on noisy digits: zero-shot accuracy drops, so a support set helps.
    budgets = [10, 50] if quick else [10, 20, 30, 50]
    finetune = FinetuneConfig(lr=1e-3, epochs=30 if quick else 100)  # paper lr 1e-5: see docs
    pool_in = image_inputs(vlm, data.read_pool("digits-noise")[0])
    rows = []
    for strategy in al.STRATEGIES:
        cfg = ActiveConfig(
            strategy=strategy, bald_samples=200 if quick else 1000, finetune=finetune
        )
        seeds = (2 if quick else 5) if strategy == "random" else 1
        curve = al.budget_curve(
            bvlm,
            pool_in,
            d.train_y,
            inputs["noise"],
            d.test_y,
            cls,
            budgets,
            cfg,
            seeds=seeds,
            predict=pred_cfg,
        )
        rows += [{"strategy": strategy, **r} for r in curve]

    results = {
        "model": "digits-clip",
        "n_pairs": len(captions),
        "fit_seconds": fit_seconds,
        "prior_precision": bvlm.prior_precision,
        "zeroshot": zs,
        "ood_auroc_logit_std": ood_auroc,
        "active": rows,
        "quick": quick,
    }
    write_json(out_dir / "results.json", results)

    rep = Report("BayesVLM on digits-clip")
    rep.text(
        f"Laplace posterior over both projections from {len(captions)} digits image-caption "
        f"pairs in {fit_seconds:.1f} s; prior precision (image, text) = "
        f"{bvlm.prior_precision['image']:.3g}, {bvlm.prior_precision['text']:.3g}; "
        f"prediction with n = {post_cfg.predict_n:g} and the probit approximation."
    )
    rep.heading("Zero-shot: MAP vs BayesVLM")
    rep.table(
        [{"set": s, "method": m, **v} for s, per in zs.items() for m, v in per.items()],
        ["set", "method", "acc", "nlpd", "ece", "brier"],
    )
    rep.figure(
        plots.reliability_grid(panels, pred_cfg.ece_bins),
        "reliability",
        "Reliability diagrams (20 bins): top MAP, bottom BayesVLM.",
    )
    rep.figure(
        plots.uncertainty_histogram(spread, "mean logit standard deviation"),
        "uncertainty_hist",
        "Per-image logit spread, clean vs shifted digits. AUROC of "
        "clean-vs-shift from this spread: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ood_auroc.items()),
    )
    rep.heading("Active support-set selection on noisy digits")
    rep.text(
        "Targets: the noisy test split (unlabelled for selection). Pool: the noisy train "
        "split. Selection on targets, mapped to the pool by diagonal 2-Wasserstein distance; "
        "then the image projection is tuned on the support set (AdamW, best validation "
        "epoch). Random averages several seeds."
    )
    rep.figure(plots.budget_curves(rows, ("map_acc", "map_ece", "bayesvlm_ece")), "active_curves")
    mean_rows = _mean_over_seeds(rows)
    rep.table(
        mean_rows, ["strategy", "budget", "map_acc", "map_ece", "bayesvlm_nlpd", "bayesvlm_ece"]
    )
    return rep.save(out_dir)


def _mean_over_seeds(rows: list[dict]) -> list[dict]:
    keys = sorted(
        {(r["strategy"], r["budget"]) for r in rows},
        key=lambda k: (list(al.STRATEGIES).index(k[0]), k[1]),
    )
    out = []
    for strategy, budget in keys:
        group = [r for r in rows if r["strategy"] == strategy and r["budget"] == budget]
        metric_keys = [k for k in group[0] if k not in ("strategy", "budget", "seed")]
        out.append(
            {
                "strategy": strategy,
                "budget": budget,
                **{k: float(np.mean([g[k] for g in group])) for k in metric_keys},
            }
        )
    return out
