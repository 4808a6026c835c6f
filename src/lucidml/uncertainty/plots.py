"""Figures: reliability diagrams, uncertainty histograms, budget curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lucidml.core import metrics  # noqa: E402


def reliability_grid(panels: dict[str, dict[str, tuple]], n_bins: int = 20):
    """One column per evaluation set, one row per method; each cell holds (probs, labels)."""
    sets = list(panels)
    methods = list(next(iter(panels.values())))
    fig, axes = plt.subplots(
        len(methods),
        len(sets),
        figsize=(3 * len(sets), 3 * len(methods)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for j, name in enumerate(sets):
        for i, method in enumerate(methods):
            probs, labels = panels[name][method]
            b = metrics.reliability_bins(probs, labels, n_bins)
            ax, width = axes[i, j], 1.0 / n_bins
            centres = b["edges"][:-1] + width / 2
            seen = b["count"] > 0
            ax.bar(
                centres[seen],
                b["accuracy"][seen],
                width=width,
                edgecolor="k",
                lw=0.3,
                label="accuracy",
            )
            ax.plot([0, 1], [0, 1], "r--", lw=1)
            ece = metrics.ece(probs, labels, n_bins)
            ax.set_title(f"{name} / {method}\nECE {ece:.3f}", fontsize=9)
            if i == len(methods) - 1:
                ax.set_xlabel("confidence")
            if j == 0:
                ax.set_ylabel("accuracy")
    fig.tight_layout()
    return fig


def uncertainty_histogram(values: dict[str, np.ndarray], xlabel: str):
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    hi = max(float(np.quantile(v, 0.99)) for v in values.values())
    bins = np.linspace(0, hi, 40)
    for name, v in values.items():
        ax.hist(np.clip(v, 0, hi), bins=bins, alpha=0.5, label=name, density=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig


def budget_curves(rows: list[dict], keys: tuple[str, ...] = ("map_acc", "bayesvlm_ece")):
    """Mean over seeds of each metric against the budget, one line per strategy, shaded
    by its 95% Student-t interval over the seeds."""
    from lucidml.uncertainty.evaluation import mean_interval

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    strategies = sorted({r["strategy"] for r in rows})
    for ax, key in zip(axes[0], keys, strict=True):
        for s in strategies:
            budgets = sorted({r["budget"] for r in rows if r["strategy"] == s})
            stats = np.array(
                [
                    mean_interval([r[key] for r in rows if r["strategy"] == s and r["budget"] == b])
                    for b in budgets
                ]
            )
            (line,) = ax.plot(budgets, stats[:, 0], marker="o", label=s)
            ax.fill_between(budgets, stats[:, 1], stats[:, 2], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("support-set size (budget)")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    return fig
