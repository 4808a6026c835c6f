"""The editor interface every method implements, and the answer-loss training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from lucidml.core.config import Config
from lucidml.core.progress import track
from lucidml.editing.evaluate import FEW_SHOT, encode


class Editor(ABC):
    """A knowledge editor: ``apply(model, tokenizer, records) -> model``.

    Records need at least ``update`` (the question) and ``ans``. Editors that keep state
    across timesteps (adapters, memories) return it from ``state_dict`` for checkpoints.
    ``contexts`` lets an editor put text before evaluation questions (RAG); None means
    the default one-shot prefix.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = Config

    def __init__(self, **hparams):
        self.config = self.Config.from_dict(hparams, source=f"{self.name} hyperparameters")

    @abstractmethod
    def apply(self, model, tokenizer, records: list[dict]):
        """Edit ``model`` with ``records``; return the edited model."""

    def check(self, model) -> None:
        """Raise ModelError if the model lacks what this editor needs (before any work).

        Called again when a stream starts; an editor with a model of its own (RAG's
        encoder) puts it on this model's device.
        """
        return None

    def contexts(self, questions: list[str]) -> list[str] | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def save(self, folder: Path, model, tokenizer) -> list[str]:
        """Write what this editor changed into ``folder``; returns the names written.
        By default the edited model as a Hugging Face folder (``model/``, safetensors,
        with its tokenizer), loadable as ``--model FOLDER/model``."""
        model.save_pretrained(folder / "model", safe_serialization=True)
        tokenizer.save_pretrained(folder / "model")
        return ["model"]

    def load_state_dict(self, state: dict) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class TrainConfig(Config):
    """Shared by the training editors; the reference LoRA recipe."""

    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None  # None = 5e-3 * batch_size / 256, the reference scaling
    warmup: float = 0.1  # share of optimiser steps (the reference warmed up per epoch)
    few_shot: bool = True  # train in the evaluation format, one-shot prefix included
    seed: int = 0

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 5e-3 * self.batch_size / 256


def answer_batch(tokenizer, records: list[dict], few_shot: bool):
    """Inputs and labels (-100 outside the answer) in the evaluation format."""
    ctx = [FEW_SHOT if few_shot else ""] * len(records)
    b = encode(tokenizer, [r["update"] for r in records], [r["ans"] for r in records], ctx)
    labels = b.input_ids.masked_fill(~b.answer_mask, -100)
    return b, labels


def train_on_answers(
    model, tokenizer, records: list[dict], params: list[torch.nn.Parameter], cfg: TrainConfig
) -> list[float]:
    """AdamW on the answer-token loss with cosine decay and step-wise warmup.

    Returns the mean loss of each epoch.
    """
    from transformers import get_cosine_schedule_with_warmup

    if not records:
        return []
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    n_batches = -(-len(records) // cfg.batch_size)
    total = n_batches * cfg.epochs
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    model.train()
    losses = []
    try:
        for _ in track(range(cfg.epochs), "training epochs"):
            order = torch.randperm(len(records), generator=gen).tolist()
            epoch = []
            for i in range(0, len(records), cfg.batch_size):
                chunk = [records[j] for j in order[i : i + cfg.batch_size]]
                b, labels = answer_batch(tokenizer, chunk, cfg.few_shot)
                b = b.to(device)
                out = model(
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    position_ids=b.position_ids,
                    labels=labels.to(device),
                )
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                sched.step()
                epoch.append(out.loss.item())
            losses.append(sum(epoch) / len(epoch))
    finally:
        model.eval()
    return losses
