"""Report figures: state trajectories, chunk dictionaries, PA layers, grafting, UCD."""

from __future__ import annotations

import numpy as np
from matplotlib import pyplot as plt

from lucidml.chunking.dsc import Discretization
from lucidml.chunking.rnn import TrainedRNN


def state_trajectory(trained: TrainedRNN, disc: Discretization, steps: int = 80):
    n = min(steps, len(trained.inputs))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 4.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    top.imshow(trained.hidden[:n].T, aspect="auto", cmap="RdBu_r", interpolation="nearest")
    top.set_ylabel("neuron")
    bottom.plot(np.arange(n), disc.codes[:n], ".-", lw=0.8)
    bottom.set_ylabel("state id")
    bottom.set_xticks(np.arange(n))
    bottom.set_xticklabels(trained.input_symbols[:n], fontsize=6)
    fig.tight_layout()
    return fig


def chunk_counts(top_chunks: list[dict], true_chunks: list[str]):
    fig, ax = plt.subplots(figsize=(8, 3.2))
    labels = [c["chunk"] for c in top_chunks]
    colors = ["tab:orange" if any(w in c for w in true_chunks) else "tab:blue" for c in labels]
    ax.bar(range(len(labels)), [c["count"] for c in top_chunks], color=colors)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("count in parse")
    ax.set_title("chunk dictionary (orange: holds a planted word)")
    fig.tight_layout()
    return fig


def graft_curves(summary: dict):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for arm, color in (("control", "tab:blue"), ("graft", "tab:orange")):
        m, b = summary[f"{arm}_mean"], summary[f"{arm}_ci"]
        x = np.arange(len(m))
        ax.plot(x, m, color=color, label=arm)
        ax.fill_between(x, m - b, m + b, color=color, alpha=0.2)
    ax.set_xlabel("transfer iteration")
    ax.set_ylabel("loss per symbol")
    ax.legend()
    fig.tight_layout()
    return fig


def pa_layers(rows: list[dict], word: str):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for step in sorted({r["step"] for r in rows}):
        rs = sorted((r for r in rows if r["step"] == step), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rs]
        ax.plot(layers, [r["tpr"] for r in rs], "o-", label=f"TPR step {step}")
        ax.plot(layers, [r["fpr"] for r in rs], "x--", label=f"FPR step {step}")
    ax.set_xlabel("layer index (hidden_states)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"'{word}': held-out detection")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def graft_effect(effects: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(effects))
    ax.bar(x - 0.2, [e["word_rate_control"] for e in effects], 0.4, label="control")
    ax.bar(x + 0.2, [e["word_rate"] for e in effects], 0.4, label="grafted")
    ax.set_xticks(x)
    ax.set_xticklabels([e["word"] for e in effects])
    ax.set_ylabel("share of continuations with the word")
    ax.legend()
    fig.tight_layout()
    return fig


def ucd_curves(rows: list[dict]):
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    for r in rows:
        a.plot(r["losses"], label=f"layer {r['layer']}")
        b.plot(r["dead_per_epoch"], label=f"layer {r['layer']}")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    b.set_xlabel("epoch")
    b.set_ylabel("dead chunks")
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig
