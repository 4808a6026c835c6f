"""The jobs behind ``lucid uncertainty``: fit, zero-shot, active selection, and the demo.

Every job resolves its device and reads and checks all of its inputs before it creates
the run folder, so a mistake (or a missing GPU) leaves nothing half-written. A job
writes its config as ``config.yaml`` (passed back with ``--config`` it runs the same job)
and ``results.json`` with an ``env`` block (versions, device, threads, seed).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from lucidml.core import metrics
from lucidml.core.config import resolve_device, seed_everything
from lucidml.core.digits_clip import TEMPLATES
from lucidml.core.progress import get_logger, track
from lucidml.core.report import Report
from lucidml.core.runs import (
    Run,
    atomic_write_bytes,
    atomic_write_text,
    claim,
    digest,
    environment,
    folder_digest,
    path_inputs,
    to_json,
    write_json,
)
from lucidml.errors import InputError
from lucidml.uncertainty import active as al
from lucidml.uncertainty import checkpoints, data, evaluation, plots
from lucidml.uncertainty.config import (
    ActiveConfig,
    ActiveJobConfig,
    FinetuneConfig,
    FitJobConfig,
    PosteriorConfig,
    PredictConfig,
    ZeroshotJobConfig,
)
from lucidml.uncertainty.model import FACTORS_FILE, META_FILE, BayesVLM
from lucidml.uncertainty.towers import image_inputs, text_inputs

SYSTEM = "uncertainty"
log = get_logger(SYSTEM)


def _start(device: str | None, seed: int) -> str:
    """The resolved device (one sentence if it is not available), with everything seeded."""
    device = resolve_device(device)
    seed_everything(seed)
    return device


def load_model(name: str, device: str = "cpu"):
    """The vision-language model, on ``device`` in float32."""
    from lucidml.core.zoo import load_vlm

    return load_vlm(name, device=device)


def _hessian_folder(hessian: str | Path | None) -> Path:
    if hessian is None:
        raise InputError(
            "no posterior given: pass --hessian DIR (or hessian: in --config), a folder "
            "written by `lucid uncertainty fit`"
        )
    return Path(hessian)


def posterior_summary(bvlm: BayesVLM) -> dict:
    """What a reported number depends on: damping, the pairs the factors came from, each
    tower's prior precision, and the pseudo-counts used to fit lambda and to predict."""
    c = bvlm.config
    return {
        "damping": c.damping,
        "n_pairs": bvlm.posteriors["image"].factors.n_data,
        "prior_precision": bvlm.prior_precision,
        "fit_n": c.fit_n,
        "predict_n": c.predict_n,
        "cosine_var": c.cosine_var,
        "embedding_covariance": c.embedding_covariance,
    }


def _posterior_text(summary: dict) -> str:
    lam = summary["prior_precision"]
    return (
        f"Posterior: {summary['damping']} damping, factors from {summary['n_pairs']} "
        f"image-caption pairs, prior precision image {lam['image']:.4g} / text "
        f"{lam['text']:.4g} (fitted with n = {summary['fit_n']:g}); predictions with "
        f"n = {summary['predict_n']:g}, cosine variance '{summary['cosine_var']}' with the "
        f"{summary['embedding_covariance']} embedding covariance."
    )


METHOD_NAMES = {"map": "MAP", "temperature": "MAP + temperature", "bayesvlm": "BayesVLM"}


def _metric_cell(value: float, ci: list[float]) -> str:
    """'value [low, high]', or the value alone when there is no interval (one run)."""
    if ci[0] == ci[1] == value:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _metric_rows(per_method: dict[str, dict], **extra) -> list[dict]:
    """Report rows from ``evaluation.score_with_baselines``: each metric with its 95%
    bootstrap interval, and the item count."""
    return [
        {
            **extra,
            "method": METHOD_NAMES[m],
            "n": v["n"],
            **{k: _metric_cell(v[k], v["ci95"][k]) for k in evaluation.METRICS},
        }
        for m, v in per_method.items()
    ]


def fit(
    config: FitJobConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> tuple[BayesVLM, Path]:
    """Fit K-FAC factors on image-caption pairs and the prior precision; save them.
    The running factor sums are checkpointed after every class batch; ``resume`` picks
    them up from the run folder ``out`` and skips the batches already counted; sums
    made from other pairs, another model or other batch settings are refused (the run
    folder's stored config and inputs are checked first, see ``core.runs.claim``)."""
    config = config or FitJobConfig()
    device = _start(device, config.seed)
    images, captions = data.read_pairs(config.pairs)
    vlm = load_model(config.model, device)
    bvlm = BayesVLM(vlm, config)
    vlm.preprocess(images[:1])  # a wrong size or channel count fails before any write
    data.check_pair_count(len(images), config.pairs)
    identity = {
        "model": checkpoints.model_fingerprint(vlm),
        "pairs": digest(images, captions),
        **config.model_dump(include={"class_batch", "data_batch", "encode_batch"}),
    }
    run = Run(
        SYSTEM,
        out,
        config,
        resume=resume,
        overwrite=overwrite,
        inputs=path_inputs(model=config.model, pairs=config.pairs),
    )
    _warn_if_rank_deficient(bvlm, len(images))  # once the run is accepted
    sums = None
    if resume:
        sums = checkpoints.load_sums(run / "checkpoints", identity, bvlm.device)
        if sums is None:
            log.info("no checkpoint in %s: fitting from the first class batch", run.path)
    log.info(
        "fitting the posterior of %s on %d image-caption pairs (encoders on %s, "
        "float64 factors on %s)",
        config.model,
        len(images),
        device,
        bvlm.device,
    )
    start = time.perf_counter()
    resumed_after = sums.n_batches if sums is not None else 0
    bvlm.fit(
        (images, captions),
        sums=sums,
        on_batch=lambda s: checkpoints.save_sums(run / "checkpoints", s, identity),
    )
    bvlm.optimize_prior_precision()
    seconds = time.perf_counter() - start
    lam = bvlm.prior_precision
    log.info("prior precision by marginal likelihood: image %.4g, text %.4g", *lam.values())
    bvlm.save(run.path)
    results = {
        "model": config.model,
        "n_pairs": len(images),
        "resumed_after_batches": resumed_after,
        "prior_precision": lam,
        "posterior": posterior_summary(bvlm),
        "fit_seconds": seconds,
        "env": environment(device, config.seed),
    }
    run.write_results(results)
    rep = Report(f"BayesVLM posterior for {config.model}")
    rep.text(_posterior_text(results["posterior"]))
    rep.text(
        f"K-FAC factors of the image and text projections from {len(images)} "
        f"image-caption pairs ({seconds:.1f} s on {device}); prior precision by marginal "
        "likelihood."
    )
    rep.table([{"tower": t, "prior precision": v} for t, v in lam.items()])
    rep.save(run.path)
    return bvlm, run.path


def _warn_if_rank_deficient(bvlm: BayesVLM, n_pairs: int) -> None:
    """Fewer pairs than a projection has inputs leave its input factor A singular: the
    directions no pair spans keep the prior's variance. Legitimate (the prior is proper),
    but rarely intended, so it is said."""
    for tower, layer in bvlm.layers.items():
        inputs = layer.in_features + (layer.bias is not None)
        if n_pairs < inputs:
            log.warning(
                "%d image-caption pairs span at most %d of the %d input directions of the "
                "%s projection; the others keep the prior's variance",
                n_pairs,
                n_pairs,
                inputs,
                tower,
            )


def zeroshot(
    config: ZeroshotJobConfig | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Zero-shot predictions with uncertainty; metrics when the images carry labels."""
    config = config or ZeroshotJobConfig()
    device = _start(device, config.seed)
    hessian = _hessian_folder(config.hessian)
    class_names = data.read_classes(config.classes)
    x, labels = data.read_images(config.images)
    data.check_labels(labels, len(class_names), "image")
    cal_x, cal_y = None, None
    if config.calibration is not None:
        cal_x, cal_y = data.read_images(config.calibration, split="train")
        if cal_y is None:
            raise InputError(
                f"calibration folder {config.calibration} has no labels.npy; temperature "
                "scaling is fitted on labelled images"
            )
        data.check_labels(cal_y, len(class_names), "calibration")
    vlm = load_model(config.model, device)
    bvlm = BayesVLM.load(vlm, hessian)
    vlm.preprocess(x[:1])  # a wrong size or channel count fails before any write
    if cal_x is not None:
        vlm.preprocess(cal_x[:1])
    run = Run(SYSTEM, out, config, overwrite=overwrite, resumable=False)
    img = image_inputs(vlm, x, bvlm.config.encode_batch)
    cls = bvlm.class_inputs(class_names, config.templates)
    log.info("zero-shot on %d images and %d classes (%s)", len(x), len(class_names), device)
    logits = bvlm.logits(img, cls)
    probs = bvlm.probs(img, cls, config)

    buf = io.BytesIO()
    np.savez(
        buf,
        mean=logits.mean.cpu().numpy(),
        var=logits.var.cpu().numpy(),
        probs=probs.cpu().numpy(),
    )
    atomic_write_bytes(run / "predictions.npz", buf.getvalue())
    results = {
        "model": config.model,
        "n_images": len(x),
        "classes": class_names,
        "prior_precision": bvlm.prior_precision,
        "posterior": posterior_summary(bvlm),
        "mean_logit_std": float(logits.var.sqrt().mean()),
        "env": environment(device, config.seed),
    }
    rep = Report(f"BayesVLM zero-shot: {config.model}")
    rep.text(_posterior_text(results["posterior"]))
    temperature = None
    if cal_x is not None:
        cal_in = image_inputs(vlm, cal_x, bvlm.config.encode_batch)
        temperature = evaluation.fit_temperature(
            bvlm.logits(cal_in, cls, map_estimate=True).mean, cal_y
        )
        results["temperature"] = {
            "value": temperature,
            "calibration": config.calibration,
            "n": len(cal_y),
        }
        rep.text(
            f"Temperature scaling: T = {temperature:.3f}, fitted by NLL on {len(cal_y)} "
            f"labelled held-out images ({config.calibration}) and applied to the MAP logits."
        )
    if labels is not None:
        results["metrics"] = evaluation.score_with_baselines(
            bvlm, img, labels, cls, config, temperature
        )
        rep.table(_metric_rows(results["metrics"]))
        rep.text(
            "Each metric with its 95% percentile-bootstrap interval over the images (1,000 "
            "resamples); ECE with "
            f"{config.ece_bins} bins."
            + (
                ""
                if temperature is not None
                else " No temperature-scaling baseline: pass --calibration DIR (labelled "
                "held-out images from the model's own distribution) to add one."
            )
        )
        map_probs = bvlm.logits(img, cls, map_estimate=True).probs()
        rep.figure(
            plots.reliability_grid(
                {config.images: {"MAP": (map_probs, labels), "BayesVLM": (probs, labels)}},
                config.ece_bins,
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
    config: ActiveJobConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Select a support set from the labelled pool for the targets; with target labels,
    also tune on it and report accuracy and ECE against the budget. Each finished
    (budget, seed) row is checkpointed; ``resume`` reuses the rows in ``out`` whose
    inputs (model, posterior, pool, targets, classes, settings) are unchanged."""
    config = config or ActiveJobConfig()
    device = _start(device, config.seed)
    hessian = _hessian_folder(config.hessian)
    budgets = sorted(set(config.budgets or [config.budget]))
    if budgets[0] < 1 or budgets[-1] > config.budget:
        raise InputError(f"the budgets {budgets} must lie in 1..{config.budget} (the budget)")
    class_names = data.read_classes(config.classes)
    pool_x, pool_y = data.read_pool(config.pool)
    target_x, target_y = data.read_images(config.targets)
    data.check_labels(pool_y, len(class_names), "pool")
    data.check_labels(target_y, len(class_names), "target")
    vlm = load_model(config.model, device)
    bvlm = BayesVLM.load(vlm, hessian)
    vlm.preprocess(pool_x[:1])  # a wrong size or channel count fails before any write
    vlm.preprocess(target_x[:1])
    run = Run(
        SYSTEM,
        out,
        config,
        resume=resume,
        overwrite=overwrite,
        inputs=path_inputs(
            model=config.model, hessian=hessian, pool=config.pool, targets=config.targets
        ),
        per_item=True,  # rows are keyed on their inputs: a changed setting redoes its rows
    )
    pool_in = image_inputs(vlm, pool_x, bvlm.config.encode_batch)
    target_in = image_inputs(vlm, target_x, bvlm.config.encode_batch)
    cls = bvlm.class_inputs(class_names)
    log.info(
        "selecting %d of %d pool items for %d targets by %s (%s)",
        config.budget,
        len(pool_x),
        len(target_x),
        config.strategy,
        device,
    )
    picks = al.select(bvlm, pool_in, target_in, cls, config)
    shared_inputs = {
        "model": checkpoints.model_fingerprint(vlm),
        "hessian": folder_digest(hessian, (FACTORS_FILE, META_FILE)),
        "pool": digest(pool_x, pool_y),
        "targets": digest(target_x, target_y),
        "classes": class_names,
    }
    results = {
        "strategy": config.strategy,
        "budget": config.budget,
        "selected": picks.tolist(),
        "selected_labels": pool_y[picks].tolist(),
        "posterior": posterior_summary(bvlm),
    }
    rep = Report(f"BayesVLM support-set selection: {config.strategy}")
    rep.text(_posterior_text(results["posterior"]))
    rep.text(
        f"Selected {len(picks)} of {len(pool_x)} pool items for {len(target_x)} targets "
        f"(select on {config.select_on})."
    )
    if target_y is not None:
        store = checkpoints.RowStore(run / "checkpoints" / "rows", shared_inputs, resume)
        rows = al.budget_curve(
            bvlm,
            pool_in,
            pool_y,
            target_in,
            target_y,
            cls,
            budgets,
            config,
            seeds=config.seeds,
            store=store,
        )
        rows = [{"strategy": config.strategy, **r} for r in rows]
        # written whole, not appended: a resumed run must not list its reused rows twice
        atomic_write_text(run / "metrics.jsonl", "".join(to_json(r, None) + "\n" for r in rows))
        results["curve"] = rows
        results["rows_reused"] = store.reused
        if store.reused:
            log.info("reused %d finished rows from %s", store.reused, run.path)
        results["summary"] = mean_over_seeds(rows)
        rep.table(_curve_rows(results["summary"]))
        rep.text(
            f"Mean over {config.seeds} selection seed(s) with a 95% Student-t interval "
            "(a single seed has none). Each tuning also used val_items labelled pool "
            "items, outside the support set and not counted in the budget, to pick its "
            "best epoch."
        )
        rep.figure(plots.budget_curves(rows), "budget_curves")
    results["env"] = environment(device, config.seed)
    run.write_results(results)
    return rep.save(run.path)


def calibration_split(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified half of the items to fit a temperature on, and the other half to
    report on (indices): digits-clip was trained on the digits train split, so a
    temperature fitted there would be fitted on training data."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    cal, held = train_test_split(idx, test_size=0.5, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(np.sort(cal)), torch.from_numpy(np.sort(held))


def demo(
    out_dir: str | Path, quick: bool = False, device: str | None = None, overwrite: bool = False
) -> Path:
    """digits-clip: factors from the digits train pairs; MAP, temperature-scaled MAP and
    BayesVLM zero-shot on clean and shifted digits; active-learning curves for the four
    strategies on noisy digits over 5 seeds. ``quick`` (the tour's) tunes for 30 epochs
    instead of 100 at budgets 10 and 50 only, with 200 BALD samples instead of 1000 and
    2 seeds instead of 5."""
    from lucidml.core.zoo import load_digits

    device = _start(device, 0)
    out_dir = claim(SYSTEM, out_dir, overwrite=overwrite, resumable=False)
    d, vlm = load_digits(), load_model("digits-clip", device)
    post_cfg, pred_cfg = PosteriorConfig(), PredictConfig()
    captions = data.digits_captions(d.train_y, d.class_names)
    log.info("demo: fitting the posterior on %d digits image-caption pairs", len(captions))
    train_in = image_inputs(vlm, d.train_x)
    start = time.perf_counter()
    bvlm = BayesVLM(vlm, post_cfg).fit_inputs(train_in, text_inputs(vlm, captions))
    bvlm.optimize_prior_precision()
    fit_seconds = time.perf_counter() - start
    bvlm.save(out_dir / "posterior")
    posterior = posterior_summary(bvlm)
    cls = bvlm.class_inputs(d.class_names, TEMPLATES)

    log.info("demo: zero-shot on clean digits and %s", ", ".join(data.SHIFTS))
    sets = {
        "clean": d.test_x,
        **{name: data.read_images(f"digits-{name}")[0] for name in data.SHIFTS},
    }
    inputs = {name: image_inputs(vlm, x) for name, x in sets.items()}
    # temperature on half of the clean test split; every set is scored on the other half
    # (the shifted sets are copies of the same test images)
    cal, held = calibration_split(d.test_y)
    temperature = evaluation.fit_temperature(
        bvlm.logits(inputs["clean"][cal], cls, map_estimate=True).mean, d.test_y[cal]
    )
    held_y = d.test_y[held]
    zs, panels, spread = {}, {}, {}
    for name, x_in in inputs.items():
        zs[name] = evaluation.score_with_baselines(
            bvlm, x_in[held], held_y, cls, pred_cfg, temperature
        )
        logits = bvlm.logits(x_in, cls)
        panels[name] = {
            "MAP": (bvlm.logits(x_in[held], cls, map_estimate=True).probs(), held_y),
            "BayesVLM": (logits.probs()[held], held_y),
        }
        spread[name] = logits.var.sqrt().mean(1).cpu().numpy()
    ood_auroc = {
        name: metrics.auroc(
            np.r_[spread["clean"], spread[name]],
            np.r_[np.zeros(len(d.test_y)), np.ones(len(d.test_y))],
        )
        for name in data.SHIFTS
    }

    # Active learning on noisy digits: zero-shot accuracy drops, so a support set helps.
    budgets = [10, 50] if quick else [10, 20, 30, 50]
    seeds = 2 if quick else 5
    finetune = FinetuneConfig(lr=1e-3, epochs=30 if quick else 100)  # paper lr 1e-5: see docs
    log.info("demo: active learning on noisy digits, budgets %s, %d seeds", budgets, seeds)
    pool_in = image_inputs(vlm, data.read_pool("digits-noise")[0])
    rows = []
    for strategy in track(list(al.STRATEGIES), "active-learning strategies"):
        cfg = ActiveConfig(
            strategy=strategy, bald_samples=200 if quick else 1000, finetune=finetune
        )
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
    summary = mean_over_seeds(rows)

    results = {
        "model": "digits-clip",
        "n_pairs": len(captions),
        "fit_seconds": fit_seconds,
        "prior_precision": bvlm.prior_precision,
        "posterior": posterior,
        "temperature": {"value": temperature, "calibration": "clean test half", "n": len(cal)},
        "zeroshot": zs,
        "ood_auroc_logit_std": ood_auroc,
        "active": rows,
        "active_summary": summary,
        "quick": quick,
        "env": environment(device, 0),
    }
    write_json(out_dir / "results.json", results)

    rep = Report("BayesVLM on digits-clip")
    rep.text(
        f"Laplace posterior over both projections from {len(captions)} digits image-caption "
        f"pairs in {fit_seconds:.1f} s; the probit approximation for prediction."
    )
    rep.text(_posterior_text(posterior))
    rep.heading("Zero-shot: MAP, temperature-scaled MAP and BayesVLM")
    rep.text(
        f"Temperature T = {temperature:.3f}, fitted by NLL on a stratified half of the clean "
        f"test split ({len(cal)} images; digits-clip was trained on the train split). Every "
        f"set is scored on the other {len(held)} images (the shifted sets are copies of the "
        "same images); each metric with its 95% percentile-bootstrap interval over them."
    )
    rep.table(
        [r for name, per in zs.items() for r in _metric_rows(per, set=name)],
        ["set", "method", "n", *evaluation.METRICS],
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
        f"epoch). Every strategy runs {seeds} seeds (selection draws, validation split, "
        "tuning batches); the table gives the mean and its 95% Student-t interval. The "
        "validation items (val_items) are labelled pool items outside the support set and "
        "are not counted in the budget."
    )
    rep.figure(plots.budget_curves(rows, ("map_acc", "map_ece", "bayesvlm_ece")), "active_curves")
    rep.table(_curve_rows(summary))
    return rep.save(out_dir)


CURVE_METRICS = ("map_acc", "map_ece", "bayesvlm_nlpd", "bayesvlm_ece")


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per (strategy, budget): each metric's mean over the seeds and its 95%
    Student-t interval (``<metric>_ci95``), with the number of seeds and of validation
    items (labelled, outside the budget)."""
    keys = sorted(
        {(r.get("strategy", ""), r["budget"]) for r in rows},
        key=lambda k: (list(al.STRATEGIES).index(k[0]) if k[0] in al.STRATEGIES else 0, k[1]),
    )
    out = []
    for strategy, budget in keys:
        group = [r for r in rows if r.get("strategy", "") == strategy and r["budget"] == budget]
        row = {"strategy": strategy, "budget": budget, "seeds": len(group)}
        row["val_items"] = max(g.get("val_items", 0) for g in group)
        for k in group[0]:
            if k.startswith(("map_", "bayesvlm_")):
                mean, low, high = evaluation.mean_interval([g[k] for g in group])
                row[k], row[f"{k}_ci95"] = mean, [low, high]
        out.append(row)
    return out


def _curve_rows(summary: list[dict]) -> list[dict]:
    """Report cells 'mean [low, high]' for the curve metrics."""
    return [
        {
            "strategy": r["strategy"],
            "budget": r["budget"],
            "seeds": r["seeds"],
            "val_items": r["val_items"],
            **{k: _metric_cell(r[k], r[f"{k}_ci95"]) for k in CURVE_METRICS},
        }
        for r in summary
    ]
