"""Planted-chunk token streams for the tiny-LM tests (not a conftest: importable by name)."""

import numpy as np
import torch

# chunks planted in the tiny LM's training stream (token ids; fillers are 3..29)
CHUNKS = ([30, 31, 32], [33, 34], [35, 36, 37, 38])


def planted_rows(n_rows: int, width: int, rng: np.random.Generator, p_chunk: float = 0.15):
    """BOS then fillers, with a planted chunk starting at each step with ``p_chunk``."""
    rows = []
    for _ in range(n_rows):
        row = [2]
        while len(row) < width:
            if rng.random() < p_chunk:
                row += CHUNKS[rng.integers(len(CHUNKS))]
            else:
                row.append(int(rng.integers(3, 30)))
        rows.append(row[:width])
    return torch.tensor(rows)


def lm_states(model, n_rows: int, seed: int):
    """(token ids, hidden_states per index, sentence ids) of fresh planted rows, flattened."""
    x = planted_rows(n_rows, 64, np.random.default_rng(seed))
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
    d = out.hidden_states[0].shape[-1]
    return (
        x.flatten().numpy(),
        [h.reshape(-1, d) for h in out.hidden_states],
        np.repeat(np.arange(n_rows), x.shape[1]),
    )
