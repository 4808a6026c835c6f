"""Figures of the SAE reports: training curves, MS histograms, top images, steering."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the Agg backend is set by lucidml.core.report
import numpy as np


def training_figure(history: list[dict]):
    """Loss, reconstruction MSE and L0 over training steps."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    steps = [h["step"] for h in history]
    for ax, key, title in zip(
        axes, ("loss", "mse", "l0"), ("loss", "MSE (scaled units)", "L0 (training)"), strict=True
    ):
        ax.plot(steps, [h[key] for h in history], lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[1].set_yscale("log")
    fig.tight_layout()
    return fig


def ms_histogram(sets: dict, encoder: str, hai_k: int):
    """MS of each latent set's live latents (SAE, neurons, random dictionary)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = np.linspace(-0.2, 1.0, 49)
    for name, scores in sets.items():
        ms = scores.ms[encoder][scores.live(hai_k)]
        ms = ms[np.isfinite(ms)]
        ax.hist(ms, bins=bins, alpha=0.5, density=True, label=f"{name} (n={ms.size})")
    ax.set_xlabel("MonoSemanticity score")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def top_image_grid(images, top_images: np.ndarray, latents):
    """One row per latent: its top-activating images, best first."""
    n, k = top_images.shape
    fig, axes = plt.subplots(n, k, figsize=(0.5 * k + 0.8, 0.55 * n + 0.2), squeeze=False)
    for r in range(n):
        for c in range(k):
            ax = axes[r, c]
            img = images[int(top_images[r, c])]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(str(int(latents[r])), fontsize=7, rotation=0, labelpad=12)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def steering_figure(curves: dict[int, list[dict]]):
    """Steering score (and the share moved to the latent's class) against alpha."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for latent, rows in curves.items():
        alphas = [r["arm"].removeprefix("alpha ") for r in rows]
        x = [float(a) for a in alphas]
        axes[0].plot(x, [r["score"] for r in rows], marker="o", ms=3, label=f"latent {latent}")
        if "moved to it" in rows[0]:
            axes[1].plot(x, [r["moved to it"] for r in rows], marker="o", ms=3)
    axes[0].set_title("steering score", fontsize=10)
    axes[1].set_title("share moved to the latent's class", fontsize=10)
    for ax in axes:
        ax.set_xlabel("alpha")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
