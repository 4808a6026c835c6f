"""Figures of the feasibility reports: ROC curves, score histograms, open-world AUCs."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the Agg backend is set by lucidml.core.report
import numpy as np
from sklearn.metrics import roc_curve


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str):
    """``curves``: name -> (scores, labels, auc) over the same evaluated pairs."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, (scores, labels, auc) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random (AUC 0.5)")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def histogram_figure(panels: dict[str, tuple[np.ndarray, np.ndarray]]):
    """One panel per score: its distribution on feasible vs infeasible pairs."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, (scores, labels)) in zip(axes[0], panels.items(), strict=True):
        scores = np.asarray(scores, dtype=np.float64)
        low, high = float(scores.min()), float(scores.max())
        bins = np.linspace(low, max(high, low + 1e-3 * max(1.0, abs(low))), 21)  # even if flat
        ax.hist(scores[labels], bins=bins, alpha=0.6, label="feasible")
        ax.hist(scores[~labels], bins=bins, alpha=0.6, label="infeasible")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("pairs")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def open_world_figure(rows: list[dict]):
    """Test AUC of each head under each mask, with the best harmonic mean beside it."""
    heads = list(dict.fromkeys(r["kind"] for r in rows))
    masks = list(dict.fromkeys(r["mask"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    width = 0.8 / len(masks)
    for k, metric in enumerate(("auc", "best_hm")):
        ax = axes[k]
        for m, mask in enumerate(masks):
            vals = [
                next((r[metric] for r in rows if r["kind"] == h and r["mask"] == mask), np.nan)
                for h in heads
            ]
            ax.bar(np.arange(len(heads)) + m * width, vals, width, label=mask)
        ax.set_xticks(np.arange(len(heads)) + width * (len(masks) - 1) / 2, heads)
        ax.set_title({"auc": "seen-unseen AUC (test)", "best_hm": "best HM (test)"}[metric])
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
