"""Figures of the TIME reports: curves over tasks, the KA-ZS plane, init x deploy."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the Agg backend is set by lucidml.core.report
import numpy as np


def curves_figure(results: dict[str, dict]):
    """KA_t, ZS_t and GM_t of every recipe, t = 0 being the base model."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    for name, r in results.items():
        t = [row["t"] for row in r["rows"]]
        for ax, key in zip(axes, ("ka", "zs", "gm"), strict=True):
            ax.plot(t, [row[key] for row in r["rows"]], marker="o", ms=3, label=name)
    for ax, title in zip(
        axes, ("knowledge accumulation", "zero-shot retention", "GM"), strict=True
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("task t")
    axes[0].set_ylabel("accuracy")
    axes[2].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def plane_figure(results: dict[str, dict]):
    """Final KA against final ZS, one point per recipe, with the base model marked."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for name, r in results.items():
        ax.scatter(r["final_zs"], r["final_ka"], s=22)
        ax.annotate(
            name,
            (r["final_zs"], r["final_ka"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    first = next(iter(results.values()))
    ax.scatter(first["zero_shot_zs"], first["zero_shot_ka"], marker="*", s=90, color="black")
    ax.annotate("base model", (first["zero_shot_zs"], first["zero_shot_ka"]), fontsize=7)
    ax.set_xlabel("final ZS (held-out)")
    ax.set_ylabel("final KA (adaptation tasks)")
    fig.tight_layout()
    return fig


def heatmap_figure(results: dict[str, dict]):
    """Final GM over init (rows) x deploy (columns) for the linear recipes."""
    specs = [r["spec"] for r in results.values()]
    inits = list(dict.fromkeys(s["init"] for s in specs))
    deploys = list(dict.fromkeys(s["deploy"] for s in specs))
    grid = np.full((len(inits), len(deploys)), np.nan)
    for r in results.values():
        grid[inits.index(r["spec"]["init"]), deploys.index(r["spec"]["deploy"])] = r["final_gm"]
    fig, ax = plt.subplots(figsize=(1.2 * len(deploys) + 2, 0.8 * len(inits) + 1.5))
    im = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(deploys)), deploys)
    ax.set_yticks(range(len(inits)), inits)
    ax.set_xlabel("deploy")
    ax.set_ylabel("init")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(im, ax=ax, label="final GM")
    fig.tight_layout()
    return fig
