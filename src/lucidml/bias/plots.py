"""Figures of the bias reports: funnel, concept forest plot, model scatter, examples."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # the Agg backend is set by lucidml.core.report
import numpy as np
import pandas as pd


def _error_bars(centre, low, high) -> np.ndarray:
    """Error-bar lengths; a percentile interval need not contain its mean, and rounding can
    put a Wilson bound a hair past the estimate, so lengths are clipped at 0."""
    err = np.vstack([np.asarray(centre) - np.asarray(low), np.asarray(high) - np.asarray(centre)])
    return np.clip(np.nan_to_num(err), 0, None)


def funnel_figure(funnel: pd.DataFrame):
    """Images per stage (generated, each drop reason, kept), one bar group per model."""
    fig, ax = plt.subplots(figsize=(6, 3))
    models = list(dict.fromkeys(funnel["model"])) if "model" in funnel.columns else [None]
    stages = list(dict.fromkeys(funnel["stage"]))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        rows = funnel if model is None else funnel[funnel["model"] == model]
        n = rows.set_index("stage")["n"].reindex(stages).fillna(0)
        ax.bar(np.arange(len(stages)) + i * width, n.to_numpy(), width, label=model or "all")
    ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, stages, rotation=20, fontsize=8)
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def concept_figure(concept_stats: pd.DataFrame, top: int = 30):
    """Mean R_f per concept with its 95% interval, sorted by the first model's bias."""
    frame = concept_stats.dropna(subset=["mean_ratio"])
    models = list(dict.fromkeys(frame["model"]))
    first = frame[frame["model"] == models[0]].sort_values("mean_ratio")
    keep = list(first["concept"])
    if len(keep) > top:  # the most skewed at both ends
        keep = keep[: top // 2] + keep[-(top - top // 2) :]
    fig, ax = plt.subplots(figsize=(6.5, 0.22 * len(keep) + 1.2))
    names = first.set_index("concept")["concept_name"]
    for i, model in enumerate(models):
        rows = frame[frame["model"] == model].set_index("concept").reindex(keep)
        y = np.arange(len(keep)) + 0.25 * i
        err = _error_bars(rows["mean_ratio"], rows["ci_low"], rows["ci_high"])
        ax.errorbar(rows["mean_ratio"], y, xerr=err, fmt="o", ms=3, lw=1, label=model)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(keep)), [str(names.get(c, c))[:40] for c in keep], fontsize=6)
    ax.set_xlabel("female ratio R_f (perceived)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def model_scatter(prompt_stats: pd.DataFrame):
    """R_f per prompt of the first model against the second."""
    models = list(dict.fromkeys(prompt_stats["model"]))[:2]
    wide = prompt_stats.pivot(index="prompt_id", columns="model", values="female_ratio")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(wide[models[0]], wide[models[1]], s=8, alpha=0.6)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"R_f {models[0]}")
    ax.set_ylabel(f"R_f {models[1]}")
    fig.tight_layout()
    return fig


def example_grid(manifest: pd.DataFrame, root: Path, per_model: int = 8):
    """The first images of each model."""
    from PIL import Image

    models = list(dict.fromkeys(manifest["model"]))
    fig, axes = plt.subplots(
        len(models), per_model, figsize=(1.1 * per_model, 1.2 * len(models)), squeeze=False
    )
    for r, model in enumerate(models):
        rows = manifest[manifest["model"] == model].head(per_model)
        for c in range(per_model):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(rows):
                with Image.open(Path(root) / rows.iloc[c]["path"]) as img:
                    ax.imshow(np.asarray(img.convert("RGB")))
        axes[r, 0].set_title(model, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def planted_figure(prompt_stats: pd.DataFrame, prompts: pd.DataFrame, planted_ratios):
    """Recovered R_f (with Wilson intervals) against the planted ratio, per model."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for model, group in prompt_stats.groupby("model", sort=False):
        planted = planted_ratios(prompts, model).reindex(group["prompt_id"]).to_numpy()
        err = _error_bars(group["female_ratio"], group["ci_low"], group["ci_high"])
        ax.errorbar(planted, group["female_ratio"], yerr=err, fmt="o", ms=2, lw=0.5, label=model)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("planted R_f")
    ax.set_ylabel("recovered R_f")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
