"""What a reviewer reads in a distill run folder: the report sections and ``runs.parquet``.

For each scored leaderboard (or single set), ``add_section`` writes, in order: the recipe
(label regime and mode, loss, temperature, augmentation, student training, learning rates,
selection split, runs); per set the scores LRS, ARS, HLR and IOR and every underlying
accuracy with its std over runs; the paired differences syn − rdm (and soft − hard under
soft labels) with 95% Student-t intervals and n; the figures (``plots.py``); and per run the
accuracies and the learning rate and epoch selected in each condition. ``runs_table`` gives
the same per-run rows as one flat table, written beside ``results.json`` as
``runs.parquet``.
"""

from __future__ import annotations

import io
from pathlib import Path

from lucidml.core.report import Report
from lucidml.core.runs import atomic_write_bytes
from lucidml.distill.config import EvalConfig
from lucidml.distill.plots import (
    difference_caption,
    difference_figure,
    ior_hlr_caption,
    ior_hlr_figure,
    leaderboard_caption,
    leaderboard_figure,
    soft_vs_hard_figure,
)

RUNS_FILE = "runs.parquet"
# the conditions of a run, as they name the per-run learning rates and epochs
CONDITION_NAMES = {
    "syn_hard": "syn hard",
    "syn": "syn",
    "syn_noaug": "syn no-aug",
    "rdm": "rdm",
    "rdm_noaug": "rdm no-aug",
}


def _mean_std(r: dict, key: str) -> str:
    return f"{r[f'{key}_mean']:.4f} ± {r[f'{key}_std']:.4f}"


def _interval(d: dict | None) -> str:
    """A paired difference as "+0.0123 [-0.0040, +0.0286]" (no interval for one run)."""
    if d is None:
        return ""
    if d["low"] is None:
        return f"{d['mean']:+.4f} (n = 1, no interval)"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _augmentation(cfg: EvalConfig) -> str:
    a = cfg.augment
    parts = []
    if a.dsa:
        ops = ", ".join(f"{op} {v:g}" for op, v in a.dsa_strengths().items())
        strategy = "one op per batch" if a.dsa_strategy == "one" else "every op"
        parts.append(f"DSA, {strategy} ({ops})")
    if a.mix != "none":
        name, param = {"mixup": ("Mixup", "a"), "cutmix": ("CutMix", "β")}[a.mix]
        parts.append(f"{name}, {param} = {a.mix_strength:g}")
    if a.zca:
        parts.append(f"ZCA whitening, ε = {a.zca_eps:g} (on every input, not an augmentation)")
    return "; ".join(parts) or "none"


def recipe_summary(cfg: EvalConfig, acc_real_hard: float, teacher_files: int = 0) -> dict[str, str]:
    """The recipe that produced a leaderboard, as {setting: description}: the top block of
    its report and ``recipe`` in ``results.json`` (``config.yaml`` has the exact values).
    ``teacher_files``: how many teacher checkpoints the user gave (0: the real-data models
    teach)."""
    if cfg.labels == "hard":
        labels = "hard: one-hot targets"
    elif cfg.soft_label_mode == "S":
        labels = "soft, mode S: stored teacher logits (the teacher's, of un-augmented images, when none are stored)"
    else:
        count = teacher_files or cfg.num_teachers
        teachers = (
            "the teacher relabels"
            if count == 1
            else f"an ensemble of {count} teachers (mean logits) relabels"
        )
        if teacher_files:
            teachers += " (your checkpoints)"
        labels = f"soft, mode M: {teachers} every augmented batch"
    if cfg.labels == "hard":
        loss = "cross-entropy"
    elif cfg.loss == "mse_ce":
        loss = f"mse_ce: {cfg.mse_weight:g}·MSE(logits) + {cfg.ce_weight:g}·CE(ground-truth label)"
    else:
        loss = {"kl": "KL(teacher ‖ student)", "soft_ce": "soft cross-entropy"}[cfg.loss]
        loss += ", × T²" if cfg.scale_loss else ", not scaled by T²"
    if cfg.labels == "soft":
        loss += "; the hard-label condition (HLR) uses cross-entropy"
    m, r, real = cfg.model, cfg.recipe, cfg.real
    model = m.name if m.name not in ("convnet", "mlp") else f"{m.name}-{m.depth}, width {m.width}"
    if m.name == "convnet":
        model += f", {m.norm} norm, {m.pooling} pooling"
    schedule = r.schedule
    if r.schedule == "step":
        schedule += f" ×0.1 every {r.step_every or r.epochs // 2} epochs"
    lrs = ", ".join(f"{lr:g}" for lr in cfg.lr_grid)
    if cfg.selection == "val":
        selection = (
            f"validation split: {cfg.val_fraction:.0%} of the training split, stratified, held "
            "out from teachers, random subsets and distillers"
        )
    else:
        selection = "test set (the reference's choice; optimistic, rows flagged)"
    return {
        "labels": labels,
        "loss": loss,
        "temperature": f"{cfg.temperature:g}" if cfg.labels == "soft" else "unused (hard labels)",
        "augmentation": _augmentation(cfg),
        "student": model,
        "training": (
            f"{r.epochs} epochs, {r.optimizer}"
            + (f" momentum {r.momentum:g}" if r.optimizer == "sgd" else "")
            + f", weight decay {r.weight_decay:g}, batch {r.batch_size}, {schedule}"
        ),
        "learning rates": lrs
        + (
            f" (the set under soft labels: {cfg.syn_lr:g})"
            if cfg.labels == "soft" and cfg.syn_lr
            else ""
        ),
        "selection": f"{selection}; checkpoints every {r.eval_every} epochs and at the end",
        "runs": f"{cfg.num_eval}, seeds derived from seed {cfg.seed}",
        "real data": (
            f"{real.epochs} epochs at lr {real.lr:g}, no LR search: acc real (hard) "
            f"{acc_real_hard:.4f}"
        ),
    }


def score_rows(methods: dict[str, dict]) -> list[dict]:
    """Per set, sorted by LRS: LRS, ARS, HLR and IOR as mean ± std over runs, and n."""
    return [
        {
            "method": name,
            "LRS": _mean_std(r, "lrs"),
            "ARS": _mean_std(r, "ars"),
            "HLR": _mean_std(r, "hlr"),
            "IOR": _mean_std(r, "ior"),
            "n": r["num_eval"],
        }
        for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["lrs_mean"])
    ]


def accuracy_rows(methods: dict[str, dict], labels: str) -> list[dict]:
    """Per set, every accuracy behind the scores as mean ± std over runs."""
    ell = f"{labels} " if labels == "soft" else ""
    columns = {
        "real hard": "acc_real_hard",
        "syn hard": "acc_syn_hard",
        f"syn {ell}aug": "acc_syn_aug",
        f"syn {ell}no-aug": "acc_syn_noaug",
        f"rdm {ell}aug": "acc_rdm_aug",
        f"rdm {ell}no-aug": "acc_rdm_noaug",
    }
    return [
        {"method": name} | {col: _mean_std(r, key) for col, key in columns.items()}
        for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["lrs_mean"])
    ]


def difference_rows(methods: dict[str, dict]) -> list[dict]:
    """Per set, the paired differences with their 95% intervals and n."""
    rows = []
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["lrs_mean"]):
        row = {
            "method": name,
            "syn − rdm, aug (IOR)": _interval(r["syn_minus_rdm"]["aug"]),
            "syn − rdm, no-aug": _interval(r["syn_minus_rdm"]["noaug"]),
        }
        if r["soft_minus_hard"] is not None:
            row["syn soft − syn hard"] = _interval(r["soft_minus_hard"])
        rows.append(row | {"n": r["syn_minus_rdm"]["aug"]["n"]})
    return rows


def run_rows(methods: dict[str, dict]) -> list[dict]:
    """One row per set and run: seed, accuracies, and the selected "lr @ epoch" of each
    condition."""
    rows = []
    for name, r in methods.items():
        for run in r["runs"]:
            row = {"method": name, "run": run["run"], "seed": run["seed"]}
            row |= {
                "syn hard": run["acc_syn_hard"],
                "syn": run["acc_syn"],
                "rdm": run["acc_rdm"],
                "syn no-aug": run["acc_syn_noaug"],
                "rdm no-aug": run["acc_rdm_noaug"],
                "syn − rdm": run["gap_aug"],
            }
            row |= {
                f"{label}: lr @ epoch": f"{run[f'lr_{c}']:g} @ {run[f'epoch_{c}']}"
                for c, label in CONDITION_NAMES.items()
            }
            rows.append(row)
    return rows


def add_section(
    rep: Report,
    methods: dict[str, dict],
    cfg: EvalConfig,
    recipe: dict[str, str],
    title: str,
    name: str,
) -> None:
    """The report of one leaderboard (or one scored set) under ``cfg``: the ``recipe``
    block (``recipe_summary``), tables and figures. ``name`` names its figures
    (``leaderboard_<name>.png``, ...)."""
    rep.heading(title)
    rep.table([{"setting": k, "value": v} for k, v in recipe.items()])
    rep.text(
        "Scores (LRS, ARS in [0, 1]; HLR, IOR as accuracy fractions): mean ± std (population) "
        "over runs."
    )
    rep.table(score_rows(methods))
    rep.text("Accuracies behind the scores (mean ± std over runs).")
    rep.table(accuracy_rows(methods, cfg.labels))
    rep.text(
        "Paired differences of test accuracy, mean [95% Student-t interval] over n runs; run r "
        "of the set and of its random subset share one seed. syn − rdm is the lead of the "
        "images over random real images with the same images per class."
    )
    rep.table(difference_rows(methods))
    rep.figure(
        leaderboard_figure(methods, title), f"leaderboard_{name}", leaderboard_caption(methods)
    )
    rep.figure(
        difference_figure(methods, title), f"differences_{name}", difference_caption(methods)
    )
    rep.figure(
        ior_hlr_figure(methods, cfg.lrs_lambda, title),
        f"ior_hlr_{name}",
        ior_hlr_caption(methods, cfg.lrs_lambda),
    )
    if cfg.labels == "soft":
        rep.figure(
            soft_vs_hard_figure(methods, methods, title),
            f"soft_vs_hard_{name}",
            "Student accuracy on each set under hard labels and under this recipe's soft "
            "labels, same runs and seeds; the dashed line is the full-data accuracy.",
        )
    else:
        rep.text(
            "Soft against hard labels: this leaderboard trains hard labels only; "
            "`--labels soft` trains both and draws the comparison."
        )
    rep.text("Per run: accuracies and the learning rate and epoch selected in each condition.")
    rep.table(run_rows(methods))


def runs_table(methods: dict[str, dict], **columns) -> list[dict]:
    """Every run of every set as one flat row: ``method``, the given ``columns`` (dataset,
    IPC, ...), the set's label regime, selection and hashes, and the run's row."""
    rows = []
    for name, r in methods.items():
        fixed = {
            "method": name,
            **columns,
            "labels": r["labels"],
            "soft_label_mode": r["soft_label_mode"],
            "data_hash": r["data_hash"],
            "recipe_hash": r["recipe_hash"],
            "version": r["version"],
        }
        rows += [fixed | run for run in r["runs"]]
    return rows


def write_runs(path: str | Path, rows: list[dict]) -> Path:
    """Write per-run rows as a Parquet file, whole or not at all."""
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())
