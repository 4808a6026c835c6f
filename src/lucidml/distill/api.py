"""Public verbs: ``rank`` a set of distillers, ``score`` a user's distilled set, ``demo``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lucidml.core.report import Report
from lucidml.core.runs import Run, write_json
from lucidml.core.zoo import ImageDataset
from lucidml.distill.baselines import METHODS, distill
from lucidml.distill.config import PRESETS_DIR, DistillConfig, EvalConfig
from lucidml.distill.data import load_dataset, load_distilled
from lucidml.distill.evaluate import Evaluator
from lucidml.distill.plots import leaderboard_figure, soft_vs_hard_figure
from lucidml.errors import InputError

DEFAULT_METHODS = ("random", "herding", "kcenter", "classmean", "dm", "dc", "noise")
SUMMARY_KEYS = (
    "lrs_mean",
    "lrs_std",
    "ars_mean",
    "ars_std",
    "hlr_mean",
    "ior_mean",
    "acc_syn_hard_mean",
    "acc_syn_mean",
    "acc_rdm_mean",
    "acc_real_hard_mean",
)


def default_config(dataset: str, labels: str) -> EvalConfig:
    """The shipped preset for this dataset and label regime (``digits-hard``, ``soft``...)."""
    specific = PRESETS_DIR / f"{dataset}-{labels}.yaml"
    return EvalConfig.from_yaml(specific if specific.is_file() else PRESETS_DIR / f"{labels}.yaml")


def parse_methods(methods: str | list[str]) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise InputError(
            f"unknown method '{unknown[0] if unknown else ''}': choose from {', '.join(METHODS)}"
        )
    return names


def distill_all(
    data: ImageDataset,
    methods: list[str],
    ipc: int,
    seed: int,
    cfg: DistillConfig,
    train_idx: torch.Tensor | None = None,
) -> dict:
    """Distilled sets from the training split (the evaluator's split, so no validation or
    test image leaks into a distilled set)."""
    x, y = data.train_x, data.train_y
    if train_idx is not None:
        x, y = x[train_idx], y[train_idx]
    return {m: distill(m, x, y, ipc, seed=seed, cfg=cfg) for m in methods}


def leaderboard(methods: dict[str, dict]) -> list[dict]:
    """Rows sorted by LRS, with the scores as mean +- std."""
    rows = []
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["lrs_mean"]):
        rows.append(
            {
                "method": name,
                "LRS": f"{r['lrs_mean']:.4f} ± {r['lrs_std']:.4f}",
                "ARS": f"{r['ars_mean']:.4f} ± {r['ars_std']:.4f}",
                "HLR": r["hlr_mean"],
                "IOR": r["ior_mean"],
                "acc syn (hard)": r["acc_syn_hard_mean"],
                "acc syn": r["acc_syn_mean"],
                "acc random": r["acc_rdm_mean"],
                "acc real": r["acc_real_hard_mean"],
            }
        )
    return rows


def _rank_one(evaluator: Evaluator, sets: dict, run: Run | None, key: str, resume: bool):
    if run is not None and resume:
        saved = run.resume(key)
        if saved is not None:
            return saved
    scored = evaluator.score_many(sets)
    if run is not None:
        run.checkpoint(key, scored)
    return scored


def rank(
    dataset: str = "digits",
    ipc: int = 10,
    methods=DEFAULT_METHODS,
    labels: str = "hard",
    cfg: EvalConfig | None = None,
    distill_cfg: DistillConfig | None = None,
    data_root: str | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Distil with each method, score every set, write a leaderboard run folder."""
    names = parse_methods(methods)
    if ipc < 1:
        raise InputError(f"--ipc must be at least 1, got {ipc}")
    cfg = cfg or default_config(dataset, labels)
    if cfg.labels != labels:
        cfg = cfg.updated(
            labels=labels, loss="kl" if labels == "soft" and cfg.loss == "ce" else cfg.loss
        )
    distill_cfg = distill_cfg or DistillConfig()
    if quick:
        cfg, distill_cfg = cfg.quick(), distill_cfg.quick()
    data = load_dataset(dataset, data_root)
    smallest = int(torch.unique(data.train_y, return_counts=True)[1].min())
    if ipc > smallest:
        raise InputError(
            f"IPC {ipc} is larger than the smallest class of {dataset} ({smallest} training images)"
        )
    log = log or (lambda msg: None)
    evaluator = Evaluator(data, cfg, log=log).split()  # a bad model name fails before writing
    run = Run(
        "distill",
        out,
        {
            "command": "rank",
            "dataset": dataset,
            "ipc": ipc,
            "methods": names,
            "labels": labels,
            "quick": quick,
            "eval": cfg,
            "distill": distill_cfg,
        },
    )
    evaluator.fit()
    log(f"distilling {len(names)} sets at IPC {ipc}")
    sets = distill_all(data, names, ipc, cfg.seed, distill_cfg, evaluator.train_index)
    log(f"scoring with {cfg.labels} labels")
    scored = _rank_one(evaluator, sets, run, f"rank-{dataset}-ipc{ipc}-{labels}", resume)
    results = {
        "dataset": dataset,
        "ipc": ipc,
        "labels": labels,
        "quick": quick,
        "acc_real_hard": evaluator.acc_real_hard,
        "methods": scored,
        "leaderboard": leaderboard(scored),
    }
    run.write_results(results)
    rep = Report(f"DD-Ranking leaderboard: {dataset}, IPC {ipc}, {labels} labels")
    _leaderboard_section(rep, results, cfg)
    rep.save(run.path)
    results["out"] = str(run.path)
    return results


def _leaderboard_section(rep: Report, results: dict, cfg: EvalConfig) -> None:
    ipc, labels = results["ipc"], results["labels"]
    rep.heading(f"IPC {ipc}, {labels} labels")
    rep.text(
        f"{cfg.num_eval} runs, learning rates {cfg.lr_grid}, {cfg.recipe.epochs} epochs, "
        f"selection on the {'validation split' if cfg.selection == 'val' else 'test set (optimistic)'}; "
        f"real-data accuracy {results['acc_real_hard']:.4f}."
    )
    rep.table(results["leaderboard"])
    rep.figure(
        leaderboard_figure(results["methods"], f"IPC {ipc}, {labels} labels"),
        f"leaderboard_ipc{ipc}_{labels}",
        "LRS and ARS, mean with std error bars over runs; the dashed line is 1/(1+e), "
        "the score of a set exactly as good as random real images.",
    )


def score(
    images: str | Path,
    dataset: str = "digits",
    labels: str | Path | None = None,
    soft_labels: str | Path | None = None,
    teachers: list[str] | None = None,
    label_regime: str = "hard",
    cfg: EvalConfig | None = None,
    data_root: str | None = None,
    quick: bool = False,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """LRS and ARS of a user's distilled set (tensor file or image folder)."""
    cfg = cfg or default_config(dataset, label_regime)
    if cfg.labels != label_regime:
        cfg = cfg.updated(
            labels=label_regime,
            loss="kl" if label_regime == "soft" and cfg.loss == "ce" else cfg.loss,
        )
    if quick:
        cfg = cfg.quick()
    if soft_labels is not None and cfg.labels == "soft" and cfg.soft_label_mode == "M":
        cfg = cfg.updated(soft_label_mode="S")  # stored logits given: use them
    data = load_dataset(dataset, data_root)
    x, y, soft = load_distilled(images, data, labels, soft_labels)
    evaluator = Evaluator(data, cfg, teacher_files=teachers, log=log)
    evaluator.check({"syn": (x, y, soft)})  # fail before writing anything
    run = Run(
        "distill",
        out,
        {
            "command": "score",
            "images": str(images),
            "dataset": dataset,
            "labels": str(labels) if labels else None,
            "eval": cfg,
        },
    )
    result = evaluator.score(x, y, soft)
    result["images"] = str(images)
    run.write_results(result)
    rep = Report(f"DD-Ranking score: {Path(images).name} on {dataset}")
    rep.table(
        [
            {
                "LRS": f"{result['lrs_mean']:.4f} ± {result['lrs_std']:.4f}",
                "ARS": f"{result['ars_mean']:.4f} ± {result['ars_std']:.4f}",
                "HLR": result["hlr_mean"],
                "IOR": result["ior_mean"],
                "acc syn": result["acc_syn_mean"],
                "acc random": result["acc_rdm_mean"],
                "acc real": result["acc_real_hard_mean"],
            }
        ]
    )
    rep.heading("Runs")
    rep.table(
        [
            {k: v for k, v in r.items() if k not in ("selection", "optimistic")}
            for r in result["runs"]
        ]
    )
    rep.save(run.path)
    result["out"] = str(run.path)
    return result


def demo(out_dir: Path, quick: bool = False) -> Path:
    """Rank every baseline on digits at IPC 1 and 10 with hard and soft labels."""
    out_dir = Path(out_dir)
    data = load_dataset("digits")
    rep = Report("DD-Ranking on digits: which distilled sets beat random real images?")
    rep.text(
        "Each distiller's set is scored against random real subsets with the same images "
        "per class, under a hard-label recipe (DSA) and a soft-label recipe (the teacher "
        "relabels every augmented batch, KL loss, CutMix). LRS and ARS lie in [0, 1]; "
        "1/(1+e) ≈ 0.269 means exactly as good as random real images."
    )
    results, boards, sets = {}, {}, {}
    distill_cfg = DistillConfig().quick() if quick else DistillConfig()
    for labels in ("hard", "soft"):
        cfg = default_config("digits", labels)
        cfg = cfg.quick() if quick else cfg
        evaluator = Evaluator(data, cfg).fit()
        for ipc in (1, 10):
            if ipc not in sets:  # the same distilled sets are scored under both regimes
                sets[ipc] = distill_all(
                    data, list(DEFAULT_METHODS), ipc, cfg.seed, distill_cfg, evaluator.train_index
                )
            scored = evaluator.score_many(sets[ipc])
            key = f"ipc{ipc}_{labels}"
            results[key] = {
                "ipc": ipc,
                "labels": labels,
                "acc_real_hard": evaluator.acc_real_hard,
                "methods": scored,
                "leaderboard": leaderboard(scored),
            }
            boards[key] = results[key]
            _leaderboard_section(rep, results[key], cfg)
    rep.heading("Soft labels close the gap")
    rep.figure(
        soft_vs_hard_figure(boards),
        "soft_vs_hard",
        "Student accuracy on each distilled set under hard and soft labels at IPC 10; "
        "the line is the full-data accuracy.",
    )
    rep.text(_gap_sentence(boards))
    write_json(out_dir / "results.json", {"quick": quick, "settings": results})
    return rep.save(out_dir)


def _gap_sentence(boards: dict) -> str:
    parts = []
    for method in ("random", "noise"):
        hard = boards["ipc10_hard"]["methods"][method]
        soft = boards["ipc10_soft"]["methods"][method]
        parts.append(
            f"{method} images reach {hard['acc_syn_hard_mean']:.3f} with hard labels "
            f"and {soft['acc_syn_mean']:.3f} with soft labels"
        )
    spreads = []
    for labels, key in (("hard", "acc_syn_hard_mean"), ("soft", "acc_syn_mean")):
        methods = boards[f"ipc10_{labels}"]["methods"]
        best = max(m[key] for name, m in methods.items() if name not in ("random", "noise"))
        spreads.append(f"{best - methods['random'][key]:+.3f} ({labels})")
    real = boards["ipc10_hard"]["acc_real_hard"]
    return (
        f"At IPC 10 (full data {real:.3f}), " + "; ".join(parts) + ". The best distilled "
        "set's lead over random images is " + " and ".join(spreads) + "."
    )
