"""Figures of the datagen reports: image grids per class, and methods side by side."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the Agg backend is set by lucidml.core.report
import torch


def _show(ax, image: torch.Tensor) -> None:
    image = image.detach().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(per_class: dict[str, torch.Tensor], title: str, columns: int = 8):
    """One row per class with up to ``columns`` of its images."""
    rows = len(per_class)
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * 0.7, rows * 0.7 + 0.4), squeeze=False
    )
    for r, (name, images) in enumerate(per_class.items()):
        for c in range(columns):
            ax = axes[r][c]
            if c < len(images):
                _show(ax, images[c])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def methods_grid(per_method: dict[str, dict[str, torch.Tensor]], classes: list[str], n: int = 4):
    """Rows: classes; column blocks: methods (``n`` images each), for one side-by-side look."""
    methods = list(per_method)
    fig, axes = plt.subplots(
        len(classes),
        len(methods) * n,
        figsize=(len(methods) * n * 0.55, len(classes) * 0.6 + 0.5),
        squeeze=False,
    )
    for r, name in enumerate(classes):
        for m, method in enumerate(methods):
            images = per_method[method].get(name, torch.zeros(0))
            for c in range(n):
                ax = axes[r][m * n + c]
                if c < len(images):
                    _show(ax, images[c])
                else:
                    ax.axis("off")
                if r == 0 and c == 0:
                    ax.set_title(method, fontsize=7, loc="left")
        axes[r][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig
