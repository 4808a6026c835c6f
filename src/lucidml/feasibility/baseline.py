"""CompCos's word-embedding feasibility, the baseline an LM score must beat.

    f(s, o) = 1/2 [ max_{o' != o, (s, o') seen} cos(e_o, e_o')
                  + max_{s' != s, (s', o) seen} cos(e_s, e_s') ]

A side with no seen neighbour contributes -1; seen pairs are 1. Any sentence encoder
gives the vectors (multi-word names are encoded as phrases).
"""

from __future__ import annotations

import numpy as np


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    return v @ v.T


def _best_neighbour(similarity: np.ndarray, seen_rows: np.ndarray) -> np.ndarray:
    """term[r, c] = max over c' != c with seen_rows[r, c'] of similarity[c, c'] (-1 if none).

    One row at a time: C-GQA's 413 x 674 table would need 1.5 GB as one (R, C, C) array.
    """
    n_rows, n_cols = seen_rows.shape
    term = np.full((n_rows, n_cols), -1.0)
    for r in range(n_rows):
        cols = np.flatnonzero(seen_rows[r])
        if cols.size == 0:
            continue
        sims = similarity[:, cols].copy()  # (C, k)
        sims[cols, np.arange(cols.size)] = -np.inf  # c' == c is not a neighbour
        best = sims.max(1)
        term[r] = np.where(np.isinf(best), -1.0, best)
    return term


def compcos_feasibility(
    state_vectors: np.ndarray, object_vectors: np.ndarray, seen: np.ndarray
) -> np.ndarray:
    """(S, O) feasibility from the seen (S, O) mask and one vector per state and object."""
    seen = np.asarray(seen, dtype=bool)
    object_term = _best_neighbour(cosine_matrix(object_vectors), seen)  # over o' seen with s
    state_term = _best_neighbour(cosine_matrix(state_vectors), seen.T).T  # over s' seen with o
    return np.where(seen, 1.0, 0.5 * (object_term + state_term))
