"""Open-world compositional zero-shot learning (CZSL) on precomputed image features.

An image shows one (state, object) pair; an open-world model scores every pair of
S x O, indexed p = s * n_objects + o. Training images come from the seen pairs P_s
only; validation and test images come from seen and unseen pairs. This module holds
the data container, CompCos and KG-SP heads, hard feasibility masking with the
threshold chosen on validation, a czsl-compatible evaluator (dense and streaming) and
the ranking quality of a feasibility score against a ground-truth feasible set.

File formats read by ``load_dataset`` and written by ``save_dataset``:

- features (safetensors): ``train_x``, ``val_x``, ``test_x`` float (N, D) with one D,
  and ``train_pair``, ``val_pair``, ``test_pair`` int64 (N,) open-world pair indices
  p = s * n_objects + o. Every training pair must be seen; NaN or infinite features
  are refused.
- pairs (JSON): ``{"states": [...], "objects": [...], "seen": [[state, object], ...]}``
  with unique names; the optional ``"feasible": [[state, object], ...]`` is the
  ground-truth feasible set when known (synthetic data).

Evaluator (spec 2.11). A bias b is added to unseen-pair scores; S(b) and U(b) are the
top-1 pair accuracies on images whose true pair is seen and unseen. The bias grid holds,
for unseen-label images correct at b = ``bias_end``, d_i = max seen score - true score
- 1e-4, sorted, every max(1, floor(n / bias_bins))-th kept, then ``bias_end``. Scores
of -inf (masked pairs) are allowed; argmax ties go to the lowest pair index, as in
``np.argmax``.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.metrics import average_precision_score
from torch import nn

from lucidml.core.metrics import auroc, harmonic_mean
from lucidml.errors import InputError, ShapeError, require_file
from lucidml.feasibility.vocab import Vocabulary, read_vocabulary

SPLITS = ("train", "val", "test")
HEAD_KINDS = ("compcos", "kgsp")
BIAS_OFFSET = 1e-4  # d_i sits just below the bias at which image i turns correct
HEAD_HPARAMS = {
    "compcos": {
        "hidden": 256,
        "emb_dim": 64,
        "gamma": 20.0,
        "margin": 0.4,
        "margin_steps": 100,
        "weight_decay": 5e-5,
    },
    "kgsp": {"hidden": 256, "weight_decay": 5e-5},
}


@dataclass
class CzslData:
    """Features and open-world pair labels of the three splits, plus the seen pairs.

    ``seen`` and ``feasible`` are (n_pairs,) booleans in pair order p = s * n_objects + o;
    ``feasible`` is the ground truth when known (synthetic data), else None.
    """

    states: list[str]
    objects: list[str]
    train_x: np.ndarray
    train_pairs: np.ndarray
    val_x: np.ndarray
    val_pairs: np.ndarray
    test_x: np.ndarray
    test_pairs: np.ndarray
    seen: np.ndarray
    feasible: np.ndarray | None = None

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def n_pairs(self) -> int:
        return self.n_states * self.n_objects

    @property
    def pair_state(self) -> np.ndarray:
        """State index of each pair, (n_pairs,)."""
        return np.arange(self.n_pairs, dtype=np.int64) // self.n_objects

    @property
    def pair_object(self) -> np.ndarray:
        """Object index of each pair, (n_pairs,)."""
        return np.arange(self.n_pairs, dtype=np.int64) % self.n_objects


# --------------------------------------------------------------------------- data


def synthetic_dataset(
    n_states: int = 16,
    n_objects: int = 12,
    feasible_fraction: float = 0.4,
    seen_fraction: float = 0.5,
    noise: float = 0.3,
    dim: int = 32,
    per_pair: tuple[int, int, int] = (20, 10, 10),
    seed: int = 0,
    vocabulary: Vocabulary | None = None,
) -> CzslData:
    """The spec 5.10 toy: x = e_s + e_o + eps, eps ~ N(0, noise^2), e ~ N(0, I / dim).

    About ``feasible_fraction`` of S x O is feasible and ``seen_fraction`` of that is
    seen, with every state and object in at least one seen pair. Training images come
    from seen pairs; validation and test images from every feasible pair (seen and
    unseen), ``per_pair`` images per pair and split. A labelled ``vocabulary`` (with
    ``feasible``) gives the names, the seen and the feasible pairs instead of drawing
    them, so real feasibility scores of its words can mask the toy's output space.
    """
    rng = np.random.default_rng(seed)
    if vocabulary is not None:
        if vocabulary.feasible is None:
            raise InputError("a synthetic dataset from a vocabulary needs its feasible pairs")
        n_states, n_objects = vocabulary.seen.shape
        seen_pairs = np.flatnonzero(vocabulary.seen.ravel())
        unseen_feasible = np.flatnonzero(vocabulary.feasible.ravel() & ~vocabulary.seen.ravel())
    else:
        n_feasible = round(feasible_fraction * n_states * n_objects)
        n_seen = round(seen_fraction * n_feasible)
        if n_seen < max(n_states, n_objects) or n_feasible <= n_seen:
            raise InputError(
                f"{n_states} x {n_objects} pairs with feasible_fraction {feasible_fraction} "
                f"and seen_fraction {seen_fraction} give {n_seen} seen of {n_feasible} "
                "feasible pairs, but every state and object needs a seen pair and some "
                "feasible pair must be unseen"
            )
        seen_pairs, unseen_feasible = _synthetic_pair_sets(
            n_states, n_objects, n_seen, n_feasible, rng
        )
    n_pairs = n_states * n_objects
    state_emb = rng.normal(size=(n_states, dim)) / math.sqrt(dim)
    object_emb = rng.normal(size=(n_objects, dim)) / math.sqrt(dim)
    feasible_pairs = np.sort(np.concatenate([seen_pairs, unseen_feasible]))

    def images(pairs: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(pairs, count).astype(np.int64)
        clean = state_emb[labels // n_objects] + object_emb[labels % n_objects]
        return (clean + noise * rng.normal(size=clean.shape)).astype(np.float32), labels

    train_x, train_pairs = images(seen_pairs, per_pair[0])
    val_x, val_pairs = images(feasible_pairs, per_pair[1])
    test_x, test_pairs = images(feasible_pairs, per_pair[2])
    return CzslData(
        states=vocabulary.states if vocabulary else [f"state{i}" for i in range(n_states)],
        objects=vocabulary.objects if vocabulary else [f"object{i}" for i in range(n_objects)],
        train_x=train_x,
        train_pairs=train_pairs,
        val_x=val_x,
        val_pairs=val_pairs,
        test_x=test_x,
        test_pairs=test_pairs,
        seen=np.isin(np.arange(n_pairs), seen_pairs),
        feasible=np.isin(np.arange(n_pairs), feasible_pairs),
    )


def _synthetic_pair_sets(
    n_states: int, n_objects: int, n_seen: int, n_feasible: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted seen pairs and unseen feasible pairs. The first max(S, O) seen pairs pair
    permuted states with permuted objects cyclically, so each state and object is seen;
    they are distinct because k = k' mod S and mod O forces k = k' below max(S, O)."""
    states, objects = rng.permutation(n_states), rng.permutation(n_objects)
    cover = max(n_states, n_objects)
    covering = np.array(
        [states[k % n_states] * n_objects + objects[k % n_objects] for k in range(cover)]
    )
    rest = rng.permutation(np.setdiff1d(np.arange(n_states * n_objects), covering))
    seen = np.concatenate([covering, rest[: n_seen - cover]])
    unseen_feasible = rest[n_seen - cover : n_feasible - cover]
    return np.sort(seen), np.sort(unseen_feasible)


def save_dataset(data: CzslData, features_path: Path, pairs_path: Path) -> None:
    """Write ``data`` as a safetensors features file and a JSON pairs file (module doc)."""
    tensors = {}
    for split in SPLITS:
        tensors[f"{split}_x"] = np.ascontiguousarray(getattr(data, f"{split}_x"), np.float32)
        tensors[f"{split}_pair"] = np.ascontiguousarray(getattr(data, f"{split}_pairs"), np.int64)
    save_file(tensors, str(features_path))
    doc = {
        "states": list(data.states),
        "objects": list(data.objects),
        "seen": _pair_names(data, data.seen),
    }
    if data.feasible is not None:
        doc["feasible"] = _pair_names(data, data.feasible)
    Path(pairs_path).write_text(json.dumps(doc, indent=1) + "\n")


def _pair_names(data: CzslData, member: np.ndarray) -> list[list[str]]:
    return [
        [data.states[p // data.n_objects], data.objects[p % data.n_objects]]
        for p in np.flatnonzero(member)
    ]


def load_dataset(features: Path, pairs: Path) -> CzslData:
    """Read the features and pairs files (formats in the module doc), checking each."""
    features, pairs = Path(features), Path(pairs)
    states, objects, seen, feasible = _read_pairs(pairs)
    tensors = _read_safetensors(features)
    n_pairs = len(states) * len(objects)
    splits = {}
    for split in SPLITS:
        x, labels = _split_arrays(tensors, split, features)
        if splits and x.shape[1] != splits["train"][0].shape[1]:
            raise ShapeError(
                f"features file {features}: '{split}_x' has dimension {x.shape[1]} but "
                f"'train_x' has {splits['train'][0].shape[1]}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= n_pairs):
            raise InputError(
                f"features file {features}: '{split}_pair' has indices outside [0, {n_pairs}) "
                f"for the {len(states)} states x {len(objects)} objects of {pairs}"
            )
        splits[split] = (x, labels)
    unseen_train = splits["train"][1][~seen[splits["train"][1]]]
    if unseen_train.size:
        raise InputError(
            f"features file {features}: {unseen_train.size} training images have pairs that "
            f"{pairs} does not list as seen (first: index {unseen_train[0]})"
        )
    return CzslData(
        states=states,
        objects=objects,
        train_x=splits["train"][0],
        train_pairs=splits["train"][1],
        val_x=splits["val"][0],
        val_pairs=splits["val"][1],
        test_x=splits["test"][0],
        test_pairs=splits["test"][1],
        seen=seen,
        feasible=feasible,
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    require_file(path, "features file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(
            f"features file {path} is not a readable safetensors file ({err})"
        ) from err


def _split_arrays(
    tensors: dict[str, np.ndarray], split: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """One split's (N, D) float32 features and (N,) int64 pair indices, checked."""
    x_key, pair_key = f"{split}_x", f"{split}_pair"
    for key in (x_key, pair_key):
        if key not in tensors:
            raise InputError(f"features file {path} lacks tensor '{key}'")
    x, labels = tensors[x_key], tensors[pair_key]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(
            f"features file {path}: '{x_key}' must be a float (N, D) matrix, "
            f"got {x.dtype} of shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise InputError(f"features file {path}: '{x_key}' contains NaN or infinite values")
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(
            f"features file {path}: '{pair_key}' must be an integer vector of length "
            f"{x.shape[0]}, got {labels.dtype} of shape {labels.shape}"
        )
    return x.astype(np.float32), labels.astype(np.int64)


def _read_pairs(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray | None]:
    """States, objects, the seen mask and the optional feasible mask of a pairs file
    (the vocabulary JSON of ``lucid feasibility score --vocab``), flattened to pairs."""
    vocab = read_vocabulary(path)
    if not vocab.seen.any():
        raise InputError(f"pairs file {path}: 'seen' lists no pairs")
    feasible = None if vocab.feasible is None else vocab.feasible.ravel()
    return vocab.states, vocab.objects, vocab.seen.ravel(), feasible


# --------------------------------------------------------------------------- heads


class Head(nn.Module, ABC):
    """An open-world classifier over precomputed features, one score per pair."""

    def __init__(self, n_states: int, n_objects: int):
        super().__init__()
        self.n_states, self.n_objects = n_states, n_objects

    @abstractmethod
    def pair_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_pairs) scores of a batch of features."""

    @abstractmethod
    def training_loss(self, x: torch.Tensor, pairs: torch.Tensor, step: int) -> torch.Tensor:
        """Scalar loss of a batch of features and their pair labels at optimiser ``step``."""

    @torch.no_grad()
    def pair_scores(self, x, chunk: int = 4096) -> np.ndarray:
        """(N, n_pairs) float32 open-world scores, in eval mode, ``chunk`` rows at a time."""
        self.eval()
        device = next(self.parameters()).device
        x = torch.as_tensor(x, dtype=torch.float32)
        blocks = [
            self.pair_logits(x[i : i + chunk].to(device)).float().cpu()
            for i in range(0, x.shape[0], chunk)
        ]
        if not blocks:
            return np.zeros((0, self.n_states * self.n_objects), dtype=np.float32)
        return torch.cat(blocks).numpy()


class CompCosHead(Head):
    """CompCos: logits gamma * cos(MLP(x), normalize(W [e_s; e_o])) over all pairs.

    With a feasibility score f, training shifts unseen-pair logits by
    -margin * min(1, step / margin_steps) * f(s, o): the more feasible an unseen pair,
    the less it is pushed away as a negative.
    """

    def __init__(
        self,
        dim: int,
        n_states: int,
        n_objects: int,
        seen: np.ndarray,
        feasibility: np.ndarray | None,
        hidden: int,
        emb_dim: int,
        gamma: float,
        margin: float,
        margin_steps: int,
    ):
        super().__init__(n_states, n_objects)
        self.image = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, emb_dim))
        self.state_emb = nn.Embedding(n_states, emb_dim)
        self.object_emb = nn.Embedding(n_objects, emb_dim)
        self.compose = nn.Linear(2 * emb_dim, emb_dim)
        self.gamma, self.margin, self.margin_steps = gamma, margin, margin_steps
        pairs = torch.arange(n_states * n_objects)
        self.register_buffer("pair_state", pairs // n_objects)
        self.register_buffer("pair_object", pairs % n_objects)
        unseen_f = np.zeros(len(seen)) if feasibility is None else np.where(seen, 0.0, feasibility)
        self.register_buffer("unseen_feasibility", torch.as_tensor(unseen_f, dtype=torch.float32))

    def pair_logits(self, x: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([self.state_emb(self.pair_state), self.object_emb(self.pair_object)], 1)
        pair = F.normalize(self.compose(pair), dim=-1)
        return self.gamma * F.normalize(self.image(x), dim=-1) @ pair.T

    def training_loss(self, x: torch.Tensor, pairs: torch.Tensor, step: int) -> torch.Tensor:
        ramp = 1.0 if self.margin_steps == 0 else min(1.0, step / self.margin_steps)
        logits = self.pair_logits(x) - self.margin * ramp * self.unseen_feasibility
        return F.cross_entropy(logits, pairs)


class KgspHead(Head):
    """KG-SP: independent state and object MLP heads with one cross-entropy each.

    The pair score is log P(s|x) + log P(o|x), the log of the spec's product P(s|x) P(o|x):
    the same ranking and argmax, without products underflowing to 0.
    """

    def __init__(self, dim: int, n_states: int, n_objects: int, hidden: int):
        super().__init__(n_states, n_objects)
        self.state_head = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_states)
        )
        self.object_head = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_objects)
        )

    def pair_logits(self, x: torch.Tensor) -> torch.Tensor:
        log_state = F.log_softmax(self.state_head(x), dim=-1)
        log_object = F.log_softmax(self.object_head(x), dim=-1)
        return (log_state[:, :, None] + log_object[:, None, :]).flatten(1)

    def training_loss(self, x: torch.Tensor, pairs: torch.Tensor, step: int) -> torch.Tensor:
        states, objects = pairs // self.n_objects, pairs % self.n_objects
        return F.cross_entropy(self.state_head(x), states) + F.cross_entropy(
            self.object_head(x), objects
        )


def train_head(
    data: CzslData,
    kind: str = "compcos",
    feasibility: np.ndarray | None = None,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    **hparams,
) -> Head:
    """Train a CompCos or KG-SP head (spec 2.9) with Adam on the training images.

    ``feasibility`` ((S, O) or (n_pairs,)) turns on CompCos's feasibility margin; its
    unseen entries are used as given, so pass scores on a margin-sized scale (the
    word-embedding baseline lies in [-1, 1]). ``hparams`` override ``HEAD_HPARAMS[kind]``;
    ``margin_steps`` is E_m counted in optimiser steps. ``lr`` defaults to 1e-3 rather
    than the references' 5e-5 because a few hundred steps replace their 300 epochs.
    """
    if kind not in HEAD_KINDS:
        raise InputError(f"unknown head kind '{kind}'; choose one of {', '.join(HEAD_KINDS)}")
    unknown = sorted(set(hparams) - set(HEAD_HPARAMS[kind]))
    if unknown:
        raise InputError(
            f"unknown {kind} hyper-parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(HEAD_HPARAMS[kind])}"
        )
    if len(data.train_pairs) == 0:
        raise InputError("the dataset has no training images")
    options = {**HEAD_HPARAMS[kind], **hparams}
    weight_decay = options.pop("weight_decay")
    torch.manual_seed(seed)
    dim = data.train_x.shape[1]
    if kind == "compcos":
        f = None if feasibility is None else _unseen_feasibility(feasibility, data.seen)
        head = CompCosHead(dim, data.n_states, data.n_objects, data.seen, f, **options)
    else:
        if feasibility is not None:
            raise InputError(
                "the feasibility margin applies to CompCos heads only; "
                "apply feasibility to KG-SP scores with hard_mask"
            )
        head = KgspHead(dim, data.n_states, data.n_objects, **options)
    head.to(device)
    x = torch.as_tensor(data.train_x, dtype=torch.float32, device=device)
    pairs = torch.as_tensor(data.train_pairs, dtype=torch.long, device=device)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    batches = torch.Generator().manual_seed(seed)
    head.train()
    for step in range(steps):
        idx = torch.randint(0, len(pairs), (min(batch_size, len(pairs)),), generator=batches)
        idx = idx.to(device)
        loss = head.training_loss(x[idx], pairs[idx], step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    return head


# --------------------------------------------------------------------------- masks


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _unseen_feasibility(feasibility, seen: np.ndarray) -> np.ndarray:
    """Feasibility as a (n_pairs,) float64 vector, accepting (S, O); unseen entries must be
    finite (seen ones, often +inf, are never used as values)."""
    f = _to_numpy(feasibility).astype(np.float64).ravel()
    if f.shape != seen.shape:
        raise ShapeError(
            f"feasibility scores have {f.size} entries but there are {seen.size} pairs"
        )
    if not np.isfinite(f[~seen]).all():
        raise InputError("feasibility scores of unseen pairs must be finite (no NaN or inf)")
    return f


def hard_mask(scores, feasibility, seen, tau: float) -> np.ndarray:
    """Scores with -inf where a pair is unseen and f < tau (spec 2.10).

    Seen pairs are always kept, whatever their f: KG-SP's masking drops seen pairs whose
    knowledge-base score is below tau, which lucidml treats as a defect.
    """
    s = _to_numpy(scores)
    seen = _to_numpy(seen).astype(bool)
    f = _unseen_feasibility(feasibility, seen)
    if s.ndim != 2 or s.shape[1] != seen.size:
        raise ShapeError(f"scores must be (N, {seen.size}), got {s.shape}")
    keep = seen | (f >= tau)
    return np.where(keep[None, :], s, -np.inf).astype(s.dtype)


def ranking_metrics(feasibility, feasible, seen) -> dict:
    """ROC-AUC (ties averaged) and average precision of f on unseen pairs against the
    ground-truth feasible set (spec 2.12); seen pairs are feasible by definition."""
    seen = _to_numpy(seen).astype(bool)
    f = _unseen_feasibility(feasibility, seen)[~seen]
    truth = _to_numpy(feasible).astype(bool).ravel()
    if truth.shape != seen.shape:
        raise ShapeError(f"feasible has {truth.size} entries but there are {seen.size} pairs")
    truth = truth[~seen]
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(
            f"ranking needs feasible and infeasible unseen pairs, got {n_pos} and {n_neg}"
        )
    return {
        "roc_auc": auroc(f, truth),
        "average_precision": float(average_precision_score(truth, f)),
        "n_pos": n_pos,
        "n_neg": n_neg,
    }


# --------------------------------------------------------------------------- evaluator


@dataclass(frozen=True)
class _ImageStats:
    """Per-image maxima from which the prediction at any bias follows exactly."""

    max_seen: np.ndarray
    argmax_seen: np.ndarray
    max_unseen: np.ndarray
    argmax_unseen: np.ndarray
    true_score: np.ndarray

    def predict(self, bias: float) -> np.ndarray:
        """argmax over pairs of score + bias on unseen pairs; a tie goes to the lower index."""
        shifted = self.max_unseen + bias
        pred = np.where(shifted > self.max_seen, self.argmax_unseen, self.argmax_seen)
        tie = shifted == self.max_seen
        return np.where(tie, np.minimum(self.argmax_seen, self.argmax_unseen), pred)


@dataclass(frozen=True)
class _Labels:
    """Checked evaluation labels: true pairs (N,) and per-pair seen / state / object."""

    true_pairs: np.ndarray
    seen: np.ndarray
    pair_state: np.ndarray
    pair_object: np.ndarray

    @property
    def unseen_label(self) -> np.ndarray:
        return ~self.seen[self.true_pairs]


def _check_labels(true_pairs, seen, pair_state, pair_object) -> _Labels:
    seen = _to_numpy(seen).astype(bool).ravel()
    n_pairs = seen.size
    pair_state = _to_numpy(pair_state).astype(np.int64).ravel()
    pair_object = _to_numpy(pair_object).astype(np.int64).ravel()
    true_pairs = _to_numpy(true_pairs).astype(np.int64).ravel()
    if pair_state.size != n_pairs or pair_object.size != n_pairs:
        raise ShapeError(
            f"seen, pair_state and pair_object need one entry per pair, got "
            f"{n_pairs}, {pair_state.size} and {pair_object.size}"
        )
    if seen.all() or not seen.any():
        raise InputError("open-world evaluation needs both seen and unseen pairs")
    if true_pairs.size and (true_pairs.min() < 0 or true_pairs.max() >= n_pairs):
        raise InputError(f"true pair indices must lie in [0, {n_pairs})")
    labels = _Labels(true_pairs, seen, pair_state, pair_object)
    if labels.unseen_label.all() or not labels.unseen_label.any():
        raise InputError("evaluation needs images of both seen and unseen pairs")
    return labels


def _check_scores(block, n_pairs: int) -> np.ndarray:
    s = _to_numpy(block).astype(np.float64)
    if s.ndim != 2 or s.shape[1] != n_pairs:
        raise ShapeError(f"scores must be (N, {n_pairs}), got {s.shape}")
    if np.isnan(s).any():
        raise InputError("scores contain NaN; mask pairs with -inf instead")
    return s


def _score_gaps(max_seen: np.ndarray, true_score: np.ndarray) -> np.ndarray:
    """max seen score - true score per image; NaN where both are -inf."""
    with np.errstate(invalid="ignore"):
        return max_seen - true_score


def _bias_grid(gaps: np.ndarray, bias_bins: int, bias_end: float) -> np.ndarray:
    """Sorted d_i = gap_i - 1e-4, every max(1, floor(n / bias_bins))-th kept, then bias_end.
    Non-finite gaps (an image whose scores are all -inf) are left out."""
    d = np.sort(gaps[np.isfinite(gaps)] - BIAS_OFFSET)
    return np.append(d[:: max(1, len(d) // bias_bins)], bias_end)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule, points sorted by x (stable)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _curve_metrics(
    predict: Callable[[float], np.ndarray],
    gaps: np.ndarray,
    labels: _Labels,
    bias_bins: int,
    bias_end: float,
    bias: float | None,
) -> dict:
    """Every evaluator number from a bias -> predicted pairs function and per-image gaps
    (max seen score - true score)."""
    truth, unseen_label = labels.true_pairs, labels.unseen_label

    def accuracies(pred: np.ndarray) -> tuple[float, float]:
        correct = pred == truth
        return float(correct[~unseen_label].mean()), float(correct[unseen_label].mean())

    def part_accuracies(pred: np.ndarray) -> tuple[float, float]:
        state = labels.pair_state[pred] == labels.pair_state[truth]
        obj = labels.pair_object[pred] == labels.pair_object[truth]
        return float(state.mean()), float(obj.mean())

    at_end = predict(bias_end)
    grid = _bias_grid(gaps[(at_end == truth) & unseen_label], bias_bins, bias_end)
    preds = [predict(b) for b in grid[:-1]] + [at_end]
    seen_acc, unseen_acc = np.array([accuracies(p) for p in preds]).T
    hm = np.array([harmonic_mean(s, u) for s, u in zip(seen_acc, unseen_acc, strict=True)])
    best = int(np.argmax(hm))
    state_acc, object_acc = part_accuracies(predict(0.0))
    state_best, object_best = part_accuracies(preds[best])
    state_end, object_end = part_accuracies(at_end)
    result = {
        "auc": _trapezoid(seen_acc, unseen_acc),
        "best_seen": float(seen_acc.max()),
        "best_unseen": float(unseen_acc.max()),
        "best_hm": float(hm[best]),
        "best_hm_bias": float(grid[best]),
        "state_acc": state_acc,
        "object_acc": object_acc,
        "state_acc_at_best_hm": state_best,
        "object_acc_at_best_hm": object_best,
        "compat_state_acc": state_end,
        "compat_object_acc": object_end,
        "curve": {
            "bias": grid.tolist(),
            "seen": seen_acc.tolist(),
            "unseen": unseen_acc.tolist(),
        },
        "n_seen_images": int((~unseen_label).sum()),
        "n_unseen_images": int(unseen_label.sum()),
    }
    if bias is not None:
        seen_b, unseen_b = accuracies(predict(bias))
        result.update(
            bias=float(bias),
            seen_at_bias=seen_b,
            unseen_at_bias=unseen_b,
            hm_at_bias=harmonic_mean(seen_b, unseen_b),
        )
    return result


def evaluate(
    scores,
    true_pairs,
    seen,
    pair_state,
    pair_object,
    bias_bins: int = 20,
    bias_end: float = 1e3,
    bias: float | None = None,
) -> dict:
    """czsl-style open-world evaluation of dense (N, n_pairs) scores (spec 2.11).

    Predictions are argmax(scores + b on unseen columns) at each bias of the grid (module
    doc). Returns ``auc`` (trapezoid of S over U), ``best_seen``, ``best_unseen``,
    ``best_hm`` and its bias, state and object accuracy (of the predicted pair, over all
    images) at b = 0, at the best-HM bias and at ``bias_end`` (``compat_``, czsl's), the
    S(b), U(b) ``curve`` and image counts; with ``bias``, also S, U and HM at that bias.
    """
    labels = _check_labels(true_pairs, seen, pair_state, pair_object)
    s = _check_scores(scores, labels.seen.size)
    if s.shape[0] != labels.true_pairs.size:
        raise ShapeError(f"{s.shape[0]} score rows for {labels.true_pairs.size} true pairs")
    unseen_cols = ~labels.seen

    def predict(b: float) -> np.ndarray:
        biased = s.copy()
        biased[:, unseen_cols] += b
        return biased.argmax(1)

    rows = np.arange(s.shape[0])
    gaps = _score_gaps(s[:, labels.seen].max(1), s[rows, labels.true_pairs])
    return _curve_metrics(predict, gaps, labels, bias_bins, bias_end, bias)


def _score_chunks(scores, chunk: int) -> Iterator:
    """Row blocks of an (N, P) array or tensor, or the blocks a callable or iterable yields."""
    if isinstance(scores, np.ndarray) or hasattr(scores, "detach"):
        return (scores[i : i + chunk] for i in range(0, scores.shape[0], chunk))
    if callable(scores):
        scores = scores()
    if not isinstance(scores, Iterable):
        raise InputError("scores must be an (N, P) array, an iterable of row blocks or a callable")
    return iter(scores)


def _image_stats(blocks: Iterable, labels: _Labels) -> _ImageStats:
    """Per-image maxima over seen and unseen columns and the true score, block by block."""
    seen_idx, unseen_idx = np.flatnonzero(labels.seen), np.flatnonzero(~labels.seen)
    parts, start = [], 0
    for block in blocks:
        s = _check_scores(block, labels.seen.size)
        truth = labels.true_pairs[start : start + s.shape[0]]
        if truth.size != s.shape[0]:
            raise ShapeError(
                f"score blocks hold more rows than the {labels.true_pairs.size} labels"
            )
        rows = np.arange(s.shape[0])
        seen_part, unseen_part = s[:, seen_idx], s[:, unseen_idx]
        best_seen, best_unseen = seen_part.argmax(1), unseen_part.argmax(1)
        parts.append(
            (
                seen_part[rows, best_seen],
                seen_idx[best_seen],
                unseen_part[rows, best_unseen],
                unseen_idx[best_unseen],
                s[rows, truth],
            )
        )
        start += s.shape[0]
    if start != labels.true_pairs.size:
        raise ShapeError(f"score blocks hold {start} rows for {labels.true_pairs.size} labels")
    return _ImageStats(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def evaluate_streaming(
    scores,
    true_pairs,
    seen,
    pair_state,
    pair_object,
    bias_bins: int = 20,
    bias_end: float = 1e3,
    bias: float | None = None,
    chunk: int = 256,
) -> dict:
    """``evaluate`` in O(N) memory: per image only the max seen score and argmax, the max
    unseen score and argmax and the true score are kept, and they give S(b), U(b) exactly.

    ``scores`` is an (N, P) array or tensor (read ``chunk`` rows at a time), an iterable
    of row blocks in image order, or a callable returning one, so N x P never has to
    exist. Equal to ``evaluate`` except if adding a bias rounds two different unseen
    scores of one image to the same float64 (scores within ~1e-13 of each other at
    bias 1e3), where the dense argmax may pick the other, tied pair.
    """
    labels = _check_labels(true_pairs, seen, pair_state, pair_object)
    stats = _image_stats(_score_chunks(scores, chunk), labels)
    gaps = _score_gaps(stats.max_seen, stats.true_score)
    return _curve_metrics(stats.predict, gaps, labels, bias_bins, bias_end, bias)


def calibrated_hm(
    val_scores,
    val_pairs,
    test_scores,
    test_pairs,
    seen,
    pair_state,
    pair_object,
    bias_bins: int = 20,
    bias_end: float = 1e3,
) -> dict:
    """HM on test at the bias that maximises validation HM, so no test label picks it
    (czsl's best_HM chooses the bias on test labels). Scores stream as in
    ``evaluate_streaming``."""
    val = evaluate_streaming(
        val_scores, val_pairs, seen, pair_state, pair_object, bias_bins, bias_end
    )
    test = evaluate_streaming(
        test_scores,
        test_pairs,
        seen,
        pair_state,
        pair_object,
        bias_bins,
        bias_end,
        bias=val["best_hm_bias"],
    )
    return {
        "bias": val["best_hm_bias"],
        "val_hm": val["best_hm"],
        "seen": test["seen_at_bias"],
        "unseen": test["unseen_at_bias"],
        "hm": test["hm_at_bias"],
    }


def _kept_unseen_maxima(
    unseen_part: np.ndarray, by_feasibility: np.ndarray, cuts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Max and argmax column (lowest index on ties) over the ``k`` most feasible unseen
    columns, for every k in ``cuts``: (len(cuts), N) each.

    Each row's columns are ranked by (score desc, column asc); the best kept column is the
    one of smallest rank, a running minimum over the columns in feasibility order. A cut
    with nothing kept, or only -inf kept, gives -inf at column 0, like the dense argmax of
    a masked row.
    """
    n, m = unseen_part.shape
    by_score = np.argsort(-unseen_part, axis=1, kind="stable")
    rank = np.empty_like(by_score)
    np.put_along_axis(rank, by_score, np.broadcast_to(np.arange(m), (n, m)), axis=1)
    best_rank = np.minimum.accumulate(rank[:, by_feasibility], axis=1)
    rows = np.arange(n)
    maxima, columns = np.full((len(cuts), n), -np.inf), np.zeros((len(cuts), n), dtype=np.int64)
    for i, k in enumerate(cuts):
        if k > 0:
            col = by_score[rows, best_rank[:, k - 1]]
            maxima[i] = unseen_part[rows, col]
            columns[i] = np.where(maxima[i] == -np.inf, 0, col)
    return maxima, columns


def choose_threshold(
    val_scores,
    val_pairs,
    seen,
    feasibility,
    pair_state,
    pair_object,
    trials: int = 50,
    bias_bins: int = 20,
    bias_end: float = 1e3,
    chunk: int = 64,
) -> tuple[float, list[dict]]:
    """The tau of linspace(min f_unseen, max f_unseen, trials) whose hard mask gives the
    best validation AUC (ties: the smallest tau, which prunes least), and the sweep as
    [{"tau", "auc", "n_kept_unseen"}].

    Every tau keeps the unseen pairs with the largest f, so one pass over ``chunk``-row
    blocks takes running maxima over unseen columns sorted by f; the AUCs equal
    ``evaluate(hard_mask(val_scores, feasibility, seen, tau), ...)``.
    """
    labels = _check_labels(val_pairs, seen, pair_state, pair_object)
    f = _unseen_feasibility(feasibility, labels.seen)
    seen_idx, unseen_idx = np.flatnonzero(labels.seen), np.flatnonzero(~labels.seen)
    f_unseen = f[unseen_idx]
    taus = np.linspace(f_unseen.min(), f_unseen.max(), trials)
    cuts = np.array([(f_unseen >= t).sum() for t in taus])
    by_feasibility = np.argsort(-f_unseen, kind="stable")
    s = _check_scores(val_scores, labels.seen.size)
    if s.shape[0] != labels.true_pairs.size:
        raise ShapeError(f"{s.shape[0]} score rows for {labels.true_pairs.size} true pairs")
    seen_stats, unseen_max, unseen_col = [], [], []
    for start in range(0, s.shape[0], chunk):
        block = s[start : start + chunk]
        rows = np.arange(block.shape[0])
        best_seen = block[:, seen_idx].argmax(1)
        seen_stats.append((block[rows, seen_idx[best_seen]], seen_idx[best_seen]))
        maxima, columns = _kept_unseen_maxima(block[:, unseen_idx], by_feasibility, cuts)
        unseen_max.append(maxima)
        unseen_col.append(unseen_idx[columns])
    max_seen = np.concatenate([m for m, _ in seen_stats])
    argmax_seen = np.concatenate([a for _, a in seen_stats])
    unseen_max, unseen_col = np.concatenate(unseen_max, 1), np.concatenate(unseen_col, 1)
    raw_true = s[np.arange(s.shape[0]), labels.true_pairs]
    sweep = []
    for i, tau in enumerate(taus):
        kept = labels.seen | (f >= tau)
        true_score = np.where(kept[labels.true_pairs], raw_true, -np.inf)
        stats = _ImageStats(max_seen, argmax_seen, unseen_max[i], unseen_col[i], true_score)
        auc = _curve_metrics(
            stats.predict, _score_gaps(max_seen, true_score), labels, bias_bins, bias_end, None
        )["auc"]
        sweep.append({"tau": float(tau), "auc": auc, "n_kept_unseen": int(cuts[i])})
    best = int(np.argmax([row["auc"] for row in sweep]))
    return sweep[best]["tau"], sweep


# --------------------------------------------------------------------------- protocol


def open_world(
    data: CzslData,
    masks: dict[str, np.ndarray | None],
    kinds: tuple[str, ...] = ("compcos", "kgsp"),
    steps: int = 300,
    seed: int = 0,
    device: str = "cpu",
) -> list[dict]:
    """Train each head kind once (no feasibility margin) and evaluate it on test under each
    named feasibility mask: None means no mask; otherwise tau is chosen on validation
    and the hard mask applied to validation and test scores.

    One row per (kind, mask): auc, best_hm, calibrated_hm, best_seen, best_unseen, tau,
    kept_unseen_feasible_fraction (share of the unseen feasible pairs the mask keeps,
    when ``data.feasible`` is known, else None) and n_test_images.
    """
    pair_state, pair_object, seen = data.pair_state, data.pair_object, data.seen
    unseen_feasible = None if data.feasible is None else data.feasible & ~seen
    rows = []
    for kind in kinds:
        head = train_head(data, kind, steps=steps, seed=seed, device=device)
        val_scores, test_scores = head.pair_scores(data.val_x), head.pair_scores(data.test_x)
        for name, feasibility in masks.items():
            tau, kept = None, np.ones(data.n_pairs, dtype=bool)
            val_masked, test_masked = val_scores, test_scores
            if feasibility is not None:
                tau, _ = choose_threshold(
                    val_scores, data.val_pairs, seen, feasibility, pair_state, pair_object
                )
                val_masked = hard_mask(val_scores, feasibility, seen, tau)
                test_masked = hard_mask(test_scores, feasibility, seen, tau)
                kept = _unseen_feasibility(feasibility, seen) >= tau
            test = evaluate_streaming(test_masked, data.test_pairs, seen, pair_state, pair_object)
            calibrated = calibrated_hm(
                val_masked,
                data.val_pairs,
                test_masked,
                data.test_pairs,
                seen,
                pair_state,
                pair_object,
            )
            rows.append(
                {
                    "kind": kind,
                    "mask": name,
                    "auc": test["auc"],
                    "best_hm": test["best_hm"],
                    "calibrated_hm": calibrated["hm"],
                    "best_seen": test["best_seen"],
                    "best_unseen": test["best_unseen"],
                    "tau": tau,
                    "kept_unseen_feasible_fraction": None
                    if unseen_feasible is None
                    else float(kept[unseen_feasible].mean()),
                    "n_test_images": int(len(data.test_pairs)),
                }
            )
    return rows
