"""Figures of a leaderboard: the scores, the paired differences from random subsets, IOR
against HLR, and soft against hard labels.

Every axis is scaled to the data it shows: DD-Ranking scores of one leaderboard usually lie
within a few hundredths of each other, which an axis from 0 to 1 flattens into equal bars.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

# The baseline method whose scores the leaderboard draws as reference lines: the score of
# random real images under this run's recipe. (1/(1+e), the score at alpha = 0, equals it
# only when HLR = 0, so random's own LRS lies below 1/(1+e) whenever HLR > 0.)
BASELINE = "random"


def _by_lrs(methods: dict[str, dict]) -> list[str]:
    return sorted(methods, key=lambda m: -methods[m]["lrs_mean"])


def _width(names: list[str]) -> float:
    return max(4.5, 0.9 * len(names))


def data_limits(low, high, pad: float = 0.15) -> tuple[float, float]:
    """Axis limits around the values from ``low`` to ``high`` (error bars included), with
    a margin of ``pad`` times their span, so that differences between them stay visible."""
    lo, hi = float(np.min(low)), float(np.max(high))
    margin = pad * (hi - lo) if hi > lo else max(abs(hi), 1e-3) * 0.05
    return lo - margin, hi + margin


def leaderboard_figure(methods: dict[str, dict], title: str):
    """LRS and ARS per method as points with std error bars, on an axis scaled to them,
    with dashed lines at the LRS and ARS of the ``random`` method when the leaderboard has
    it."""
    names = _by_lrs(methods)
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(_width(names), 3.4))
    lows, highs = [], []
    for shift, key, label in ((-0.12, "lrs", "LRS"), (0.12, "ars", "ARS")):
        mean = np.array([methods[m][f"{key}_mean"] for m in names])
        std = np.array([methods[m][f"{key}_std"] for m in names])
        lows.append(mean - std)
        highs.append(mean + std)
        points = ax.errorbar(pos + shift, mean, yerr=std, fmt="o", capsize=3, label=label)
        if BASELINE in methods:
            ax.axhline(
                methods[BASELINE][f"{key}_mean"],
                color=points.lines[0].get_color(),
                ls="--",
                lw=0.8,
                label=f"{label} of {BASELINE}",
            )
    ax.set(xticks=pos, xticklabels=names, ylabel="score", title=title)
    ax.set_ylim(*data_limits(np.concatenate(lows), np.concatenate(highs)))
    ax.legend(frameon=False, fontsize="small")
    return fig


def leaderboard_caption(methods: dict[str, dict]) -> str:
    """What the leaderboard figure shows, and what its reference lines are."""
    text = (
        "LRS and ARS, mean with std error bars over runs, on an axis scaled to the scores "
        "(not 0 to 1)"
    )
    if BASELINE not in methods:
        return text + "; no random baseline in this leaderboard, so no reference lines."
    return (
        text + "; the dashed lines are the mean LRS and ARS of the random method (random "
        "real images) in this run, the scores a distilled set must beat; random's LRS lies "
        "below 1/(1+e) ≈ 0.269, the score at IOR = HLR = 0, whenever its hard-label gap to "
        "full data (HLR) is positive."
    )


def difference_figure(methods: dict[str, dict], title: str):
    """Bars of the paired difference Acc(syn) - Acc(rdm) per method, with and without
    augmentation, with 95% intervals over runs; zero is 'as good as random real images'."""
    names = _by_lrs(methods)
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(_width(names), 3.4))
    for shift, key, label in ((-0.2, "aug", "with augmentation (IOR)"), (0.2, "noaug", "without")):
        diffs = [methods[m]["syn_minus_rdm"][key] for m in names]
        mean = np.array([d["mean"] for d in diffs])
        # a single run has no interval: no error bar
        low = np.array([d["mean"] if d["low"] is None else d["low"] for d in diffs])
        high = np.array([d["mean"] if d["high"] is None else d["high"] for d in diffs])
        ax.bar(pos + shift, mean, 0.4, yerr=[mean - low, high - mean], capsize=3, label=label)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(
        xticks=pos,
        xticklabels=names,
        ylabel="acc syn − acc random subset",
        title=title,
    )
    ax.legend(frameon=False, fontsize="small")
    return fig


def difference_caption(methods: dict[str, dict]) -> str:
    n = next(iter(methods.values()))["syn_minus_rdm"]["aug"]["n"]
    interval = (
        f"95% Student-t intervals over n = {n} runs paired by seed"
        if n > 1
        else "no interval: a single run"
    )
    return (
        "Test accuracy of students trained on each set minus that of students trained on "
        "the same run's random real subset (same images per class, same seed), with and "
        f"without augmentation; {interval}. Bars above zero: the images beat random real "
        "images under this recipe."
    )


def ior_hlr_figure(methods: dict[str, dict], lam: float, title: str):
    """IOR against HLR per method (means with std bars). With ``random`` in the
    leaderboard, a dashed line joins the points whose LRS equals random's:
    lam * IOR - (1 - lam) * HLR = alpha of random; points above it score higher."""
    names = _by_lrs(methods)
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for m in names:
        r = methods[m]
        ax.errorbar(
            r["hlr_mean"], r["ior_mean"], xerr=r["hlr_std"], yerr=r["ior_std"], fmt="o", capsize=2
        )
        ax.annotate(m, (r["hlr_mean"], r["ior_mean"]), textcoords="offset points", xytext=(4, 4))
    if BASELINE in methods:
        base = methods[BASELINE]
        hlr0, ior0 = base["hlr_mean"], base["ior_mean"]
        if lam == 0:  # LRS then depends on HLR alone
            ax.axvline(hlr0, color="grey", ls="--", lw=0.8, label=f"LRS of {BASELINE}")
        else:
            xs, ys = np.array(ax.get_xlim()), ax.get_ylim()
            slope = (1 - lam) / lam
            ax.plot(
                xs,
                ior0 + slope * (xs - hlr0),
                color="grey",
                ls="--",
                lw=0.8,
                label=f"LRS of {BASELINE}",
            )
            ax.set(xlim=tuple(xs), ylim=ys)  # the line does not widen the axes
        ax.legend(frameon=False, fontsize="small")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set(
        xlabel="HLR = acc real (hard) − acc syn (hard)",
        ylabel="IOR = acc syn − acc random subset",
        title=title,
    )
    return fig


def ior_hlr_caption(methods: dict[str, dict], lam: float) -> str:
    text = (
        "Each method's hard-label gap to full data (HLR, lower is better) against its "
        f"improvement over random subsets (IOR, higher is better), with std bars; LRS rises "
        f"with λ·IOR − (1−λ)·HLR, λ = {lam:g}"
    )
    if BASELINE not in methods:
        return text + "."
    return text + "; the dashed line holds the points with the LRS of the random method."


def soft_vs_hard_figure(hard: dict[str, dict], soft: dict[str, dict], title: str):
    """Each set's student accuracy under hard labels (``hard[m]["acc_syn_hard_*"]``) and
    soft labels (``soft[m]["acc_syn_*"]``), with std bars; the line is full-data accuracy.
    ``hard`` and ``soft`` are one soft-label leaderboard (its hard-label condition) or a
    hard-label and a soft-label leaderboard of the same sets (the demo)."""
    names = sorted(hard, key=lambda m: -hard[m]["acc_syn_hard_mean"])
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(_width(names), 3.4))
    bars = (
        (-0.2, hard, "acc_syn_hard", "hard labels"),
        (0.2, soft, "acc_syn", f"soft labels ({next(iter(soft.values()))['soft_label_mode']})"),
    )
    for shift, methods, key, label in bars:
        ax.bar(
            pos + shift,
            [methods[m][f"{key}_mean"] for m in names],
            0.4,
            yerr=[methods[m][f"{key}_std"] for m in names],
            capsize=3,
            label=label,
        )
    ax.axhline(hard[names[0]]["acc_real_hard_mean"], color="k", ls="--", lw=0.8)
    # bars are read by their length, so this axis starts at 0
    ax.set(xticks=pos, xticklabels=names, ylim=(0, 1), ylabel="test accuracy", title=title)
    ax.legend(frameon=False, loc="lower left")
    return fig
