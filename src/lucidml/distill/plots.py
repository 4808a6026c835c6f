"""Figures for leaderboards and the soft-versus-hard-label comparison."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# The baseline method whose scores the leaderboard draws as reference lines: the score of
# random real images under this run's recipe. (1/(1+e), the score at alpha = 0, equals it
# only when HLR = 0, so random's own LRS lies below 1/(1+e) whenever HLR > 0.)
BASELINE = "random"


def leaderboard_figure(methods: dict[str, dict], title: str):
    """Grouped bars of LRS and ARS per method, with std error bars, and dashed lines at
    the LRS and ARS of the ``random`` method when the leaderboard has it."""
    names = sorted(methods, key=lambda m: -methods[m]["lrs_mean"])
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(names)), 3.4))
    for shift, key, label in ((-0.2, "lrs", "LRS"), (0.2, "ars", "ARS")):
        bars = ax.bar(
            pos + shift,
            [methods[m][f"{key}_mean"] for m in names],
            0.4,
            yerr=[methods[m][f"{key}_std"] for m in names],
            capsize=3,
            label=label,
        )
        if BASELINE in methods:
            ax.axhline(
                methods[BASELINE][f"{key}_mean"],
                color=bars.patches[0].get_facecolor(),
                ls="--",
                lw=0.8,
                label=f"{label} of {BASELINE}",
            )
    ax.set(xticks=pos, xticklabels=names, ylim=(0, 1), ylabel="score", title=title)
    ax.legend(frameon=False)
    return fig


def leaderboard_caption(methods: dict[str, dict]) -> str:
    """What the leaderboard figure's reference lines are."""
    text = "LRS and ARS, mean with std error bars over runs"
    if BASELINE not in methods:
        return text + "; no random baseline in this leaderboard, so no reference lines."
    return (
        text + "; the dashed lines are the mean LRS and ARS of the random method (random "
        "real images) in this run, the scores a distilled set must beat; random's LRS lies "
        "below 1/(1+e) ≈ 0.269, the score at IOR = HLR = 0, whenever its hard-label gap to "
        "full data (HLR) is positive."
    )


def soft_vs_hard_figure(boards: dict[str, dict]):
    """Accuracy of every method's IPC-10 set under hard and soft labels."""
    hard, soft = boards["ipc10_hard"]["methods"], boards["ipc10_soft"]["methods"]
    names = sorted(hard, key=lambda m: -hard[m]["acc_syn_hard_mean"])
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(names)), 3.4))
    ax.bar(
        pos - 0.2,
        [hard[m]["acc_syn_hard_mean"] for m in names],
        0.4,
        yerr=[hard[m]["acc_syn_hard_std"] for m in names],
        capsize=3,
        label="hard labels",
    )
    ax.bar(
        pos + 0.2,
        [soft[m]["acc_syn_mean"] for m in names],
        0.4,
        yerr=[soft[m]["acc_syn_std"] for m in names],
        capsize=3,
        label="soft labels (M)",
    )
    ax.axhline(hard[names[0]]["acc_real_hard_mean"], color="k", ls="--", lw=0.8)
    ax.set(
        xticks=pos, xticklabels=names, ylim=(0, 1), ylabel="test accuracy", title="IPC 10 on digits"
    )
    ax.legend(frameon=False, loc="lower left")
    return fig
