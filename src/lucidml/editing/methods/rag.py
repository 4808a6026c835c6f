"""Retrieval augmentation: a memory of edited (question, answer) pairs, exact cosine top-k."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lucidml.core.config import Config
from lucidml.editing.methods.base import Editor

Embedder = Callable[[list[str]], np.ndarray]


class RAGConfig(Config):
    top_k: int = 2
    encoder: str = "minilm-l6"  # reference: all-mpnet-base-v2 (not embedded offline)


def top_k_cosine(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most cosine-similar keys for each query, best first."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    m = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(1e-12)
    sims = q @ m.T
    k = min(k, keys.shape[0])
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def rag_context(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"Q: {q} A: {a}\n" for q, a in pairs)


class RAG(Editor):
    """Leaves the model alone; evaluation questions get the top-k remembered edits first."""

    name = "rag"
    Config = RAGConfig

    def __init__(self, embedder: Embedder | None = None, **hparams):
        super().__init__(**hparams)
        self._embedder = embedder
        self.device = "cpu"  # the edited model's, once check() has seen it
        self.memory: list[tuple[str, str]] = []
        self.keys = np.zeros((0, 0), dtype=np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            from lucidml.core.zoo import load_sentence_encoder

            encoder = load_sentence_encoder(self.config.encoder, device=self.device)
            self._embedder = lambda xs: encoder.encode(
                xs, convert_to_numpy=True, normalize_embeddings=True
            )
        return np.asarray(self._embedder(texts), dtype=np.float32)

    def check(self, model):
        self.device = str(next(model.parameters()).device)

    def apply(self, model, tokenizer, records):
        if records:
            pairs = [(r["update"], r["ans"]) for r in records]
            new = self.embed([q for q, _ in pairs])
            self.keys = new if not self.memory else np.concatenate([self.keys, new])
            self.memory += pairs
        return model

    def retrieve(self, questions: list[str]) -> list[list[tuple[str, str]]]:
        if not self.memory:
            return [[] for _ in questions]
        idx = top_k_cosine(self.embed(questions), self.keys, self.config.top_k)
        return [[self.memory[j] for j in row] for row in idx]

    def contexts(self, questions):
        if not self.memory:
            return None
        return [rag_context(pairs) for pairs in self.retrieve(questions)]

    def state_dict(self):
        import torch

        # a tensor, not an array: checkpoints load with weights_only, which refuses NumPy
        return {"memory": self.memory, "keys": torch.from_numpy(self.keys)}

    def save(self, folder, model, tokenizer):
        """RAG leaves the weights alone: its edit is the memory, written as
        ``memory.json`` (question, answer pairs in the order they were added)."""
        from lucidml.core.runs import write_json

        write_json(folder / "memory.json", [list(pair) for pair in self.memory])
        return ["memory.json"]

    def load_state_dict(self, state):
        self.memory, self.keys = [tuple(p) for p in state["memory"]], state["keys"].numpy()
