"""Scores of a sparse autoencoder and of its latents.

Reconstruction (MSE, FVE, L0, dead fraction) streams over held-out rows. The
MonoSemanticity score (MS) of Pach et al. (2025) is computed in closed form, linear in the
number of images, instead of the reference's O(N^2) double sum (kept here as
:func:`monosemanticity_pairwise`, the ground truth for tests and the benchmark). Highest
activating images, uniqueness and taxonomy depth work on per-latent top-k index sets, with
a running top-k and a sparse incidence product so that 65k-latent dictionaries stay cheap.

Functions take numpy arrays or torch tensors and return numpy, except
:func:`reconstruction` (a dict of floats) and :func:`monosemanticity_loss` (a torch scalar
that keeps its graph).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy import sparse

from lucidml.errors import InputError, ShapeError

# A latent whose weight mass sum_{i<j} a_i a_j is below this share of (sum_i a_i)^2 / 2
# fires on at most one image: its MS is 0/0, reported as NaN.
_TINY = 1e-9
# Rows per chunk for in-memory inputs are chosen so one float64 chunk holds about this many
# entries (128 MB), keeping memory bounded for wide dictionaries.
_CHUNK_ENTRIES = 1 << 24
JACCARD_THRESHOLDS = tuple(i / 10 for i in range(10))


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _chunks(data, rows: int | None = None) -> Iterator[tuple[int, object]]:
    """(start, chunk) row chunks of an (N, ...) array or tensor, of a store with
    ``iter_chunks``, or of an iterable that already yields them in row order. ``rows=None``
    sizes in-memory chunks by width (``_CHUNK_ENTRIES``) and store chunks at 4096 rows."""
    if hasattr(data, "iter_chunks"):
        yield from data.iter_chunks(rows or 4096)
    elif isinstance(data, (np.ndarray, torch.Tensor)):
        rows = rows or _rows_for(data.shape[1] if data.ndim > 1 else 1)
        for start in range(0, len(data), rows):
            yield start, data[start : start + rows]
    else:
        yield from data


def _rows_for(width: int) -> int:
    return max(1, _CHUNK_ENTRIES // max(1, width))


def _ms_ratio(num, den, scale, dead):
    """num / den, NaN where the latent is dead or its pair weights vanish (one image)."""
    out = np.full(np.shape(num), np.nan)
    ok = ~dead & (den > _TINY * scale)
    out[ok] = num[ok] / den[ok]
    return out


# ---------------------------------------------------------------- reconstruction


def explained_variance(x, x_hat) -> float:
    """FVE = 1 - sum_j Var(x_j - x_hat_j) / sum_j Var(x_j), over rows (leading dims).

    Per-dimension variances, not the MSE, are used so a constant offset in x_hat is not
    counted as unexplained (the reference's definition); NaN when x has no variance.
    """
    x, x_hat = np.asarray(_numpy(x), np.float64), np.asarray(_numpy(x_hat), np.float64)
    if x.shape != x_hat.shape:
        raise ShapeError(f"x has shape {x.shape} but x_hat has shape {x_hat.shape}")
    x, x_hat = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
    total = x.var(0).sum()
    return float(1 - (x - x_hat).var(0).sum() / total) if total > 0 else float("nan")


def _merge_moments(state, chunk: torch.Tensor):
    """Chan et al.'s pairwise merge of (count, mean, M2) per column: exact streaming
    variances without the cancellation of sum x^2 - (sum x)^2 / n."""
    n_b = chunk.shape[0]
    mean_b = chunk.mean(0)
    m2_b = ((chunk - mean_b) ** 2).sum(0)
    if state is None:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = state
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


def _placement(sae, chunk: torch.Tensor) -> dict:
    """Device and dtype of the SAE's weights (the chunk's own when it has none)."""
    params = getattr(sae, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    p = chunk if p is None else p
    return {"device": p.device, "dtype": p.dtype}


def reconstruction(sae, data, batch_size: int = 4096) -> dict:
    """MSE, FVE, L0 and dead fraction of ``sae`` on ``data``, in one streaming pass.

    ``data`` is an (N, d) tensor/array or a store with ``__len__`` and ``iter_chunks``;
    ``sae`` needs ``encode(x) -> f`` and ``decode(f) -> x_hat`` and is used in whatever mode
    it is in (call ``.eval()`` or ``.train()`` first: BatchTopK differs between them). FVE
    is exact: per-dimension moments of x and of the residual are merged chunk by chunk in
    float64, so no copy of the data or of the reconstructions is kept.
    """
    x_moments = r_moments = fired = None
    sq_err = active = 0  # device tensors after the first chunk: no sync per batch
    n = 0
    with torch.inference_mode():
        for _, chunk in _chunks(data, batch_size):
            chunk = torch.as_tensor(chunk)
            x = chunk.to(**_placement(sae, chunk))
            f = sae.encode(x)
            r = (x - sae.decode(f)).double()
            on = f > 0
            fired = on.any(0) if fired is None else fired | on.any(0)
            active = active + on.sum()
            sq_err = sq_err + (r**2).sum()
            x_moments = _merge_moments(x_moments, x.double())
            r_moments = _merge_moments(r_moments, r)
            n += x.shape[0]
    if n == 0:
        raise InputError("reconstruction needs at least one row of data")
    total = x_moments[2].sum().item()
    return {
        "mse": float(sq_err) / n,
        "fve": 1 - r_moments[2].sum().item() / total if total > 0 else float("nan"),
        "l0": float(active) / n,
        "dead_fraction": 1 - fired.double().mean().item(),
        "n": n,
    }


# ---------------------------------------------------------------- MonoSemanticity


def _check_ms_inputs(acts, embeddings) -> None:
    if acts.ndim != 2 or embeddings.ndim != 2:
        raise ShapeError(
            f"activations and embeddings must be 2-D, got {tuple(acts.shape)} and "
            f"{tuple(embeddings.shape)}"
        )
    if acts.shape[0] != embeddings.shape[0]:
        raise ShapeError(
            f"activations have {acts.shape[0]} rows but embeddings have "
            f"{embeddings.shape[0]}; join them by image id first"
        )


def _check_finite(reduced, what: str) -> None:
    """Raise unless ``reduced`` is finite. It is a per-latent or per-row reduction (min,
    max, column sum, norm) that a NaN or inf propagates into: checking it instead of every
    entry is free, where an element-wise scan costs as much as the score itself."""
    if not bool(torch.isfinite(torch.as_tensor(reduced)).all()):
        raise InputError(f"{what} contain NaN or infinite values")


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    norms = embeddings.norm(dim=1, keepdim=True)
    _check_finite(norms, "embeddings")
    if bool((norms == 0).any()):
        raise InputError(f"{int((norms == 0).sum())} embedding rows have zero norm")
    return embeddings / norms


class MonosemanticityAccumulator:
    """Closed-form MS over rows that arrive in chunks, for N larger than memory.

    MS needs each latent's min and max before any rescaled activation is known, hence two
    passes over the same rows in the same order: ``observe_range`` on every activation chunk,
    then ``add`` on every (activation, embedding) chunk. The second pass accumulates, in
    float64 on the chunks' device, V = P^T A~ (E, K), sum a~ and sum a~^2, from which
    MS = (||v||^2 - sum a~^2) / ((sum a~)^2 - sum a~^2) per latent.
    """

    def __init__(self) -> None:
        self._min = self._max = None
        self._v = self._s1 = self._s2 = None
        self._observed = self._added = 0

    def observe_range(self, acts_chunk) -> None:
        """Pass 1: update each latent's running min and max."""
        a = torch.as_tensor(acts_chunk)
        if a.ndim != 2 or (self._min is not None and a.shape[1] != self._min.shape[0]):
            raise ShapeError(f"activation chunk has shape {tuple(a.shape)}, expected (rows, K)")
        lo, hi = a.min(0).values.double(), a.max(0).values.double()
        _check_finite(lo + hi, "activations")
        if self._min is None:
            self._min, self._max = lo, hi
        else:
            self._min, self._max = torch.minimum(self._min, lo), torch.maximum(self._max, hi)
        self._observed += a.shape[0]

    def add(self, acts_chunk, emb_chunk) -> None:
        """Pass 2: accumulate V, sum a~ and sum a~^2 for one row-aligned chunk."""
        if self._min is None:
            raise RuntimeError("observe_range must see the activations before add")
        a, e = torch.as_tensor(acts_chunk), torch.as_tensor(emb_chunk)
        _check_ms_inputs(a, e)
        lo, hi = self._min.to(a.device), self._max.to(a.device)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        a_t = (a.double() - lo) / span
        p = _unit_rows(e.double())
        v, s1, s2 = p.T @ a_t, a_t.sum(0), (a_t**2).sum(0)
        _check_finite(s2, "activations")
        if self._v is None:
            self._v, self._s1, self._s2 = v, s1, s2
        else:
            if v.shape != self._v.shape:
                raise ShapeError(
                    f"chunk gives V of shape {tuple(v.shape)}, expected {tuple(self._v.shape)}"
                )
            self._v, self._s1, self._s2 = self._v + v, self._s1 + s1, self._s2 + s2
        self._added += a.shape[0]

    def result(self) -> np.ndarray:
        """(K,) MS per latent; NaN for dead latents and latents active on at most one image."""
        if self._v is None:
            raise InputError("no rows were added to the MonoSemanticity accumulator")
        if self._added != self._observed:
            raise InputError(
                f"pass 2 added {self._added} rows but pass 1 observed {self._observed}"
            )
        v, s1, s2 = _numpy(self._v), _numpy(self._s1), _numpy(self._s2)
        dead = _numpy(self._max <= self._min)
        return _ms_ratio((v**2).sum(0) - s2, s1**2 - s2, s1**2, dead)


def monosemanticity(acts, embeddings) -> np.ndarray:
    """(K,) closed-form MS of (N, K) activations against (N, E) embeddings of the same images.

    Linear in N: the accumulator run over row chunks of the in-memory arrays.
    """
    a, e = torch.as_tensor(acts), torch.as_tensor(embeddings)
    _check_ms_inputs(a, e)
    acc = MonosemanticityAccumulator()
    for _, chunk in _chunks(a):
        acc.observe_range(chunk)
    for start, chunk in _chunks(a):
        acc.add(chunk, e[start : start + len(chunk)])
    return acc.result()


def monosemanticity_pairwise(acts, embeddings, block_rows: int = 512) -> np.ndarray:
    """(K,) MS from its definition, sum_{i<j} a~_i a~_j cos(e_i, e_j) / sum_{i<j} a~_i a~_j.

    O(N^2) per latent: the reference's algorithm, kept as ground truth for the closed form.
    Cosines are built in blocks of ``block_rows`` rows (upper triangle only) so memory stays
    at block_rows x N, and each latent's double sum is a masked matrix-vector product.
    """
    a, e = _numpy(acts), _numpy(embeddings)
    _check_ms_inputs(a, e)
    a = a.astype(np.float64)
    lo, hi = a.min(0), a.max(0)
    _check_finite(lo + hi, "activations")
    dead = hi <= lo
    a_t = (a - lo) / np.where(dead, 1.0, hi - lo)
    p = _numpy(_unit_rows(torch.as_tensor(e, dtype=torch.float64)))
    n, k = a.shape
    num, den = np.zeros(k), np.zeros(k)
    for s in range(0, n, block_rows):
        b = min(block_rows, n - s)
        upper = np.triu(np.ones((b, n - s)), 1)  # pairs i < j with i in this block
        cos = (p[s : s + b] @ p[s:].T) * upper
        for j in range(k):
            left, right = a_t[s : s + b, j], a_t[s:, j]
            num[j] += left @ cos @ right
            den[j] += left @ upper @ right
    return _ms_ratio(num, den, a_t.sum(0) ** 2 / 2, dead)


def monosemanticity_loss(acts: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Differentiable mean MS of a batch over its live latents (torch scalar).

    Min-max rescaling uses the batch's own range; latents that are constant or fire on one
    image in the batch are left out (0 if none is live). Minimise ``-ms`` or ``1 - ms`` to
    reward monosemantic latents. Inputs are not scanned for NaN, which would cost a device
    sync every step; zero-norm embedding rows are treated as orthogonal to everything.
    """
    _check_ms_inputs(acts, embeddings)
    lo, hi = acts.min(0).values, acts.max(0).values
    span = hi - lo
    # Safe denominators keep NaN out of the gradients of excluded latents.
    a_t = (acts - lo) / torch.where(span > 0, span, torch.ones_like(span))
    p = torch.nn.functional.normalize(embeddings.to(acts.dtype), dim=1)
    v = p.T @ a_t
    s1, s2 = a_t.sum(0), (a_t**2).sum(0)
    den = s1**2 - s2
    live = (span > 0) & (den > _TINY * s1**2)
    ms = ((v**2).sum(0) - s2) / torch.where(live, den, torch.ones_like(den))
    return ms[live].mean() if bool(live.any()) else (acts * 0).sum()


# ---------------------------------------------------------------- top images and labels


def _top_merge(vals, idx, chunk: np.ndarray, start: int, k: int):
    """Top k of the running (K, k) set plus a (rows, K) chunk, ordered by value descending
    and then index ascending. Linear in the chunk: a partition finds each latent's k-th
    value, everything above it is kept, and ties at it are filled lowest index first."""
    c_vals = np.concatenate([vals, chunk.T], 1)
    c_idx = np.concatenate(
        [idx, np.broadcast_to(start + np.arange(chunk.shape[0]), chunk.T.shape)], 1
    )
    if c_vals.shape[1] > k:
        # Ties at the cut are ordered by index: the running set precedes the chunk, and within
        # each part equal values are already in index order.
        kth = -np.partition(-c_vals, k - 1, axis=1)[:, k - 1 : k]
        above = c_vals > kth
        tied = c_vals == kth
        fill = k - above.sum(1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, 1) <= fill))
        c_vals, c_idx = c_vals[keep].reshape(-1, k), c_idx[keep].reshape(-1, k)
    order = np.argsort(-c_vals, axis=1, kind="stable")
    return np.take_along_axis(c_vals, order, 1), np.take_along_axis(c_idx, order, 1)


def top_activating(acts, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(K, k) image indices and (K, k) activations of each latent's k highest images.

    ``acts`` is an (N, K) array/tensor, or a store or iterable of (start, chunk) in row
    order for one streaming pass with a running top-k. Values descend; ties go to the lower
    image index, so the result equals a stable full sort. Fewer than k columns come back
    when N < k.
    """
    vals = idx = None
    for start, chunk in _chunks(acts):
        chunk = _numpy(chunk)
        if chunk.ndim != 2 or (vals is not None and chunk.shape[1] != vals.shape[0]):
            raise ShapeError(f"activation chunk has shape {chunk.shape}, expected (rows, K)")
        if np.isnan(chunk).any():
            raise InputError("activations contain NaN values")
        if vals is None:
            vals = np.empty((chunk.shape[1], 0), chunk.dtype)
            idx = np.empty((chunk.shape[1], 0), np.int64)
        vals, idx = _top_merge(vals, idx, chunk, start, k)
    if vals is None:
        raise InputError("top_activating needs at least one row of activations")
    return idx, vals


def firing_counts(acts) -> np.ndarray:
    """(K,) number of images on which each latent fires (> 0), from an array or a chunk
    iterable. 0 marks a dead latent; fewer than ``k`` a sparse one, whose top-k set is padded
    with non-firing images and is excluded from uniqueness and hierarchy."""
    counts = None
    for _, chunk in _chunks(acts):
        fired = (_numpy(chunk) > 0).sum(0)
        counts = fired if counts is None else counts + fired
    if counts is None:
        raise InputError("firing_counts needs at least one row of activations")
    return counts.astype(np.int64)


def uniqueness(
    top_indices, thresholds: Sequence[float] = JACCARD_THRESHOLDS, valid=None
) -> dict[float, float]:
    """Share of latent pairs (i < j, both valid) whose top-image sets have Jaccard > t.

    With the sparse latents x images incidence M, |A & B| = (M M^T)_AB and
    |A | B| = |A| + |B| - |A & B|. Pairs sharing no image have J = 0 and never pass a
    threshold t >= 0, so only the product's nonzeros are visited: no loop over K^2 pairs.
    """
    top = _numpy(top_indices).astype(np.int64)
    if top.ndim != 2:
        raise ShapeError(f"top_indices must be (latents, k), got shape {top.shape}")
    if valid is not None:
        top = top[_numpy(valid).astype(bool)]
    n = top.shape[0]
    pairs = n * (n - 1) // 2
    if pairs == 0:
        return {float(t): float("nan") for t in thresholds}
    rows = np.repeat(np.arange(n), top.shape[1])
    m = sparse.csr_matrix((np.ones(top.size), (rows, top.ravel())), shape=(n, int(top.max()) + 1))
    m.data[:] = 1  # a repeated image counts once
    size = np.asarray(m.sum(1)).ravel()
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    jaccard = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    return {float(t): float(np.count_nonzero(jaccard > t) / pairs) for t in thresholds}


def _split_path(path) -> tuple[str, ...]:
    return tuple(path.split("/")) if isinstance(path, str) else tuple(path)


def lca_depth(path_a, path_b) -> int:
    """Depth of the lowest common ancestor: the common-prefix length of two taxonomy paths
    (sequences of names, or "a/b/c" strings)."""
    depth = 0
    for x, y in zip(_split_path(path_a), _split_path(path_b), strict=False):
        if x != y:
            break
        depth += 1
    return depth


def _prefix_codes(paths: Sequence) -> np.ndarray:
    """(n_images, L) integer code of each path's prefix at each level (-1 past its end), so
    that two paths share level l iff their codes at l are equal and non-negative."""
    split = [_split_path(p) for p in paths]
    depth = max((len(p) for p in split), default=0)
    codes = np.full((len(split), depth), -1, np.int64)
    for level in range(depth):
        ids: dict[tuple[str, ...], int] = {}
        for i, p in enumerate(split):
            if len(p) > level:
                codes[i, level] = ids.setdefault(p[: level + 1], len(ids))
    return codes


def hierarchy_depth(top_indices, paths: Sequence, valid=None) -> np.ndarray:
    """(K,) rounded mean LCA depth over the C(k, 2) pairs of each latent's top images.

    ``paths`` holds one taxonomy path per image index. Deep values mean a latent's images
    share a fine category (species), shallow ones a coarse one. Rounding is half to even, as
    Python's ``round``; invalid (dead or sparse) latents get NaN.
    """
    top = _numpy(top_indices).astype(np.int64)
    if top.ndim != 2:
        raise ShapeError(f"top_indices must be (latents, k), got shape {top.shape}")
    if top.size and top.max() >= len(paths):
        raise ShapeError(f"top_indices refer to image {top.max()} but only {len(paths)} paths")
    codes = _prefix_codes(paths)[top]  # (K, k, L)
    i, j = np.triu_indices(top.shape[1], 1)
    shared = (codes[:, i] == codes[:, j]) & (codes[:, i] >= 0)  # (K, pairs, L)
    depth = np.round(shared.sum(2).mean(1)) if len(i) else np.full(top.shape[0], np.nan)
    if valid is not None:
        depth[~_numpy(valid).astype(bool)] = np.nan
    return depth


def group_means(values, group_sizes: Sequence[int]) -> list[float]:
    """NaN-ignoring mean of per-latent values within consecutive groups (Matryoshka groups
    in dictionary order); NaN for a group without a finite value."""
    v = np.asarray(_numpy(values), np.float64)
    if sum(group_sizes) != len(v):
        raise ShapeError(f"group sizes sum to {sum(group_sizes)} but there are {len(v)} values")
    out = []
    for g in np.split(v, np.cumsum(group_sizes)[:-1]):
        g = g[~np.isnan(g)]
        out.append(float(g.mean()) if g.size else float("nan"))
    return out
