"""Merge operators on state dicts, one tensor at a time (TIME spec §2.5).

Every operator is a :class:`MergeMethod` in :data:`METHODS`; :func:`merge` runs one on
dicts of tensors. A lazy checkpoint merge drives the very same steps tensor by tensor,
so streamed and in-memory merges are bit-for-bit equal:

1. ``check_compatible(base, experts)`` (meta tensors suffice: only keys, shapes and
   dtypes are read) and, when ``method.needs_base``, refuse ``base=None``;
2. ``params = method.check(n_experts, weights, params)``: validated, normalised
   parameters, or :class:`~lucidml.errors.InputError`;
3. if ``method.needs_stats(params)``: ``rec = method.collect(key, base_t, expert_ts,
   params)`` for every key, in any order, then ``stats = method.finalize(recs, params)``;
   otherwise ``stats = None``;
4. ``method.apply(key, base_t, expert_ts, weights, params, stats)`` for every key, in any
   order, with the ``weights`` given to ``check``: the merged tensor.

Conventions: τ_i = θ_i − θ₀; task-vector methods return θ₀ + λ·τ̂; ``density`` is the
fraction of entries kept (``drop_fraction`` = 1 − density, the spec's ρ, is accepted);
``weights`` scale τ_i after any trim or drop and before sign election; a trim keeps
exactly round(density·n) entries (halves round up), ties going to lower flat indices;
random draws come from a generator seeded by (seed, key); arithmetic runs in float32
(float64 when an input is float64; angles and cosines in float64) and results take the
base's dtype (experts[0]'s without a base); integer and bool tensors are copied from
the base (experts[0]). Inputs are never modified.
"""

from __future__ import annotations

import math
import numbers
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lucidml.errors import InputError

StateDict = Mapping[str, Tensor]
Cast = Callable[[Tensor], Tensor]

LERP_ABOVE_ABS_COS = 0.9995
DISJOINT_MERGES = ("mean", "sum", "max", "weighted_mean")
TRIM_SCOPES = ("tensor", "global")
LINES_MODES = ("multiply", "replace")
LINES_CURVES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "square": lambda x: x * x,
    "sqrt": math.sqrt,
}
LINES_FIELDS = ("pattern", "alpha", "beta", "g", "mode")


# ---------------------------------------------------------------- input checks


def check_compatible(base: StateDict | None, experts: Sequence[StateDict]) -> None:
    """Raise InputError unless all models have the same keys, shapes and kinds of dtype.

    The reference is the base, or experts[0] without one; keys are checked in its order
    so the message names the first bad key. Floating dtypes may differ (bf16 experts on
    an fp32 base merge in fp32); a non-floating tensor (ids, counters) is copied, not
    merged, so its dtype must match exactly. Only ``.shape`` and ``.dtype`` are read, so
    ``device="meta"`` tensors let a lazy reader check checkpoints without loading them.
    """
    if len(experts) == 0:
        raise InputError("merging needs at least one expert model")
    reference, ref_name = (experts[0], "experts[0]") if base is None else (base, "the base")
    others = list(enumerate(experts))[1:] if base is None else list(enumerate(experts))
    for key, ref_tensor in reference.items():
        _require_tensor(ref_tensor, key, ref_name)
        for index, expert in others:
            name = f"experts[{index}]"
            if key not in expert:
                raise InputError(f"{name} lacks key {key!r}, which {ref_name} has")
            tensor = expert[key]
            _require_tensor(tensor, key, name)
            if tuple(tensor.shape) != tuple(ref_tensor.shape):
                raise InputError(
                    f"key {key!r} has shape {tuple(tensor.shape)} in {name} "
                    f"but {tuple(ref_tensor.shape)} in {ref_name}"
                )
            if not same_dtype_kind(tensor.dtype, ref_tensor.dtype):
                raise InputError(
                    f"key {key!r} is {tensor.dtype} in {name} but {ref_tensor.dtype} in {ref_name}"
                )
    for index, expert in others:
        extra = next((key for key in expert if key not in reference), None)
        if extra is not None:
            raise InputError(f"experts[{index}] has key {extra!r}, which {ref_name} lacks")


def _require_tensor(value: Any, key: str, owner: str) -> None:
    """InputError unless ``value`` is a torch tensor."""
    if not isinstance(value, Tensor):
        raise InputError(f"key {key!r} of {owner} is a {type(value).__name__}, not a torch tensor")


def same_dtype_kind(a: torch.dtype, b: torch.dtype) -> bool:
    """Both floating (any width: they merge in float32), or exactly the same dtype (other
    tensors are copied, not merged)."""
    return (a.is_floating_point and b.is_floating_point) or a == b


def _number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high], else InputError naming the parameter."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and low <= value <= high):
        bounds = (
            f" between {low:g} and {high:g}" if math.isfinite(low) and math.isfinite(high) else ""
        )
        raise InputError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    """``value`` as an int, else InputError naming the parameter."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _flag(value: Any, name: str) -> bool:
    """``value`` as a bool, else InputError naming the parameter."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(value: Any, name: str, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``, else InputError listing them."""
    if value not in options:
        raise InputError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def _density(params: Mapping[str, Any], default: float) -> float:
    """The kept fraction, from ``density`` or its complement ``drop_fraction`` (spec ρ)."""
    density = params.get("density")
    if density is not None:
        density = _number(density, "density", 0, 1)
    if params.get("drop_fraction") is not None:
        drop = _number(params["drop_fraction"], "drop_fraction", 0, 1)
        if density is not None and abs(density - (1 - drop)) > 1e-9:
            raise InputError(
                f"density {density:g} and drop_fraction {drop:g} disagree "
                "(density = 1 − drop_fraction); give only one of them"
            )
        density = 1 - drop if density is None else density
    return default if density is None else density


def _disjoint_merge(params: Mapping[str, Any]) -> str:
    """How agreeing entries combine, from ``merge`` or its alias ``majority``."""
    given = {name: params[name] for name in ("merge", "majority") if name in params}
    if len(given) == 2 and given["merge"] != given["majority"]:
        raise InputError(
            f"merge {given['merge']!r} and majority {given['majority']!r} disagree "
            "(majority is an alias of merge); give only one of them"
        )
    return _choice(next(iter(given.values()), "mean"), "merge", DISJOINT_MERGES)


def _check_weights(weights: Any, n_experts: int) -> list[float] | None:
    """``weights`` as floats, one per expert, or None; InputError otherwise."""
    if weights is None:
        return None
    if isinstance(weights, (str, bytes, Mapping)) or not hasattr(weights, "__iter__"):
        raise InputError(f"weights must be a list of numbers, got {weights!r}")
    weights = list(weights)
    if len(weights) != n_experts:
        raise InputError(
            f"weights has {len(weights)} entries but there are {n_experts} experts; "
            "give one weight per expert"
        )
    return [_number(w, f"weights[{i}]") for i, w in enumerate(weights)]


def _expert_scalings(weights: Sequence[float] | None, n_experts: int) -> list[float]:
    """Per-expert scaling of τ_i for task-vector methods: the weights, or all 1."""
    return [1.0] * n_experts if weights is None else [float(w) for w in weights]


def _linear_weights(weights: Sequence[float] | None, n_experts: int, normalize: bool):
    """Interpolation weights: uniform 1/N by default, divided by their sum if normalising."""
    if weights is None:
        return [1.0 / n_experts] * n_experts
    total = math.fsum(weights)
    return [w / total for w in weights] if normalize else [float(w) for w in weights]


def kept_count(fraction: float, n: int) -> int:
    """round(fraction·n) with halves rounded up: how many of n entries a trim keeps."""
    return min(n, math.floor(fraction * n + 0.5))


# ---------------------------------------------------------------- LiNeS


def _block_pattern(pattern: Any) -> re.Pattern:
    """Compile a LiNeS block regex; it must have exactly one group (the block index)."""
    if not isinstance(pattern, str):
        raise InputError(f"the LiNeS pattern must be a regex string, got {pattern!r}")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InputError(f"the LiNeS pattern {pattern!r} is not a valid regex ({exc})") from None
    if regex.groups != 1:
        raise InputError(
            f"the LiNeS pattern {pattern!r} has {regex.groups} groups; it needs exactly one, "
            r"capturing the block index, such as 'encoder\.layers\.(\d+)\.'"
        )
    return regex


def lines_scales(
    keys, pattern: str, alpha: float = 0.5, beta: float = 0.5, g: str = "linear"
) -> dict[str, float]:
    """LiNeS scale of each key: block l of L gets α + β·g(l/(L−1)), other keys get α.

    ``pattern`` is searched anywhere in the key and its one group captures the block
    number; l is the block's rank among the L distinct numbers found (so numbering may
    start at 1 or skip), and a single block counts as depth 0, i.e. gets α. Keys of two
    towers that one pattern both matches share one depth scale: anchor a pattern per
    tower instead. A pattern matching no key raises, since it would silently scale
    everything by α.
    """
    regex = _block_pattern(pattern)
    curve = LINES_CURVES[_choice(g, "the LiNeS curve g", tuple(LINES_CURVES))]
    alpha, beta = _number(alpha, "LiNeS alpha"), _number(beta, "LiNeS beta")
    keys = list(keys)
    block_of = {}
    for key in keys:
        found = regex.search(key)
        if found is not None:
            block_of[key] = _block_number(found.group(1), key, pattern)
    if not block_of:
        raise InputError(f"the LiNeS pattern {pattern!r} matches none of the {len(keys)} keys")
    rank = {block: r for r, block in enumerate(sorted(set(block_of.values())))}
    deepest = max(len(rank) - 1, 1)
    return {
        key: alpha + beta * curve(rank[block_of[key]] / deepest) if key in block_of else alpha
        for key in keys
    }


def _block_number(text: str | None, key: str, pattern: str) -> int:
    """The block index a LiNeS pattern captured in ``key``, as an int."""
    if text is None or not text.isdigit():
        raise InputError(
            f"the LiNeS pattern {pattern!r} captures {text!r} in key {key!r}, not a block number"
        )
    return int(text)


def _check_lines(value: Any, lam_given: bool) -> dict | None:
    """Validate the ``lines`` parameter into a plain dict (pattern, alpha, beta, g, mode).

    ``mode`` defaults to "replace" (the spec's default: s instead of λ); giving ``lam``
    with it raises, because the reference silently ignored λ there.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or "pattern" not in value:
        raise InputError(
            "lines must be a dict with a 'pattern' (a regex capturing the block index) "
            "and optionally alpha, beta, g and mode"
        )
    unknown = [field for field in value if field not in LINES_FIELDS]
    if unknown:
        raise InputError(f"lines does not take {unknown[0]!r}; it takes {', '.join(LINES_FIELDS)}")
    mode = _choice(value.get("mode", "replace"), "the LiNeS mode", LINES_MODES)
    if mode == "replace" and lam_given:
        raise InputError(
            "lam has no effect with LiNeS mode 'replace' (the layer scale replaces it); "
            "drop lam or use mode 'multiply'"
        )
    return {
        "pattern": _block_pattern(value["pattern"]).pattern,
        "alpha": _number(value.get("alpha", 0.5), "LiNeS alpha"),
        "beta": _number(value.get("beta", 0.5), "LiNeS beta"),
        "g": _choice(value.get("g", "linear"), "the LiNeS curve g", tuple(LINES_CURVES)),
        "mode": mode,
    }


# ---------------------------------------------------------------- tensor helpers


def _compute_cast(tensors: Sequence[Tensor]) -> Cast:
    """Conversion of inputs to the compute dtype on the first tensor's device.

    float32, or float64 if any input is float64. The result may be the input itself, so
    callers never write into it.
    """
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    device = tensors[0].device
    return lambda t: t.detach().to(device=device, dtype=dtype)


def tensor_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded by (seed, key).

    Each tensor's random draws then depend on neither the other tensors nor their order
    (so streamed merges equal in-memory ones), nor on the device that does the merging.
    """
    from lucidml.core.runs import derive_seed

    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, key))


def keep_mask(magnitudes: Tensor, threshold, tie_quota) -> Tensor:
    """Entries above ``threshold`` plus, per row, the first ``tie_quota`` entries equal to it.

    Works on the last dimension; ``threshold`` and ``tie_quota`` are scalars or broadcast
    per row. Taking tied entries in index order makes trims exact and deterministic.
    """
    tied = magnitudes == threshold
    if bool((tied.sum(-1, keepdim=True) <= tie_quota).all()):
        return (magnitudes > threshold) | tied  # every tie kept: skip the int64 cumsum
    return (magnitudes > threshold) | (tied & (tied.cumsum(-1) <= tie_quota))


def top_k_mask(magnitudes: Tensor, k: int) -> Tensor:
    """Mask of the k largest entries of each row (last dimension), ties to lower indices."""
    width = magnitudes.shape[-1]
    if k <= 0:
        return torch.zeros_like(magnitudes, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    threshold = magnitudes.kthvalue(width - k + 1, dim=-1, keepdim=True).values
    return keep_mask(magnitudes, threshold, k - (magnitudes > threshold).sum(-1, keepdim=True))


def trim_mask(task_vector: Tensor, density: float) -> Tensor:
    """TIES trim of one tensor: keep its round(density·n) largest |τ| entries."""
    flat = task_vector.abs().reshape(1, -1)
    return top_k_mask(flat, kept_count(density, flat.shape[1])).reshape(task_vector.shape)


def breadcrumbs_mask(task_vector: Tensor, density: float, gamma: float) -> Tensor:
    """Breadcrumbs mask per row (dim 0; a 0-D or 1-D tensor is one row).

    In each row of m entries the round(gamma·m) largest |τ| are dropped as outliers and
    the next round(density·m) are kept, so density is the kept fraction exactly (the
    outlier count shrinks if both would not fit).
    """
    n_rows = task_vector.shape[0] if task_vector.dim() >= 2 else 1
    width = task_vector[0].numel() if task_vector.dim() >= 2 else task_vector.numel()
    rows = task_vector.abs().reshape(n_rows, width)
    n_keep = kept_count(density, width)
    n_top = min(kept_count(gamma, width), width - n_keep)
    keep = top_k_mask(rows, n_top + n_keep) & ~top_k_mask(rows, n_top)
    return keep.reshape(task_vector.shape)


def dare_masks(task_vectors: Sequence[Tensor], density: float, generator: torch.Generator):
    """DARE's keep masks: each entry kept with probability ``density``, drawn on the CPU
    in expert order."""
    return [
        (torch.rand(tau.shape, generator=generator) < density).to(tau.device)
        for tau in task_vectors
    ]


CHUNK = 1 << 20  # entries per block of the elementwise merge steps


def masked_merge(
    task_vectors: Sequence[Tensor],
    masks: Sequence[Tensor],
    scalings: Sequence[float],
    how: str | None,
    rescale: float = 1.0,
) -> Tensor:
    """Σ or TIES elect + merge (``how``; None: the weighted sum) of the masked task
    vectors w_i·(m_i ⊙ τ_i)/rescale, in flat blocks of ``CHUNK`` entries.

    Every step is elementwise, so the blocks give the same numbers as whole tensors
    while the working memory is a few blocks instead of several N-sized stacks (on a
    135M-parameter model, TIES on the embedding alone needed about 2.5 GB)."""
    shape = task_vectors[0].shape
    flat = [tau.reshape(-1) for tau in task_vectors]
    keep = [m.reshape(-1) for m in masks]
    out = torch.empty_like(flat[0])
    for start in range(0, flat[0].numel(), CHUNK):
        block = slice(start, start + CHUNK)
        parts = [tau[block].masked_fill(~m[block], 0) for tau, m in zip(flat, keep, strict=True)]
        if rescale != 1.0:
            parts = [part / rescale for part in parts]
        parts = _scaled(parts, scalings)
        out[block] = sum(parts) if how is None else elect_and_merge(parts, how, scalings)
    return out.reshape(shape)


def elect_and_merge(
    task_vectors: Sequence[Tensor], how: str, scalings: Sequence[float] | None = None
) -> Tensor:
    """TIES sign election and disjoint merge of (already weighted) task vectors.

    Each entry's sign is that of the sum over experts; only the entries with that sign
    are combined (mean, sum, or the largest magnitude); an entry that sums to 0 gives 0.
    ``weighted_mean`` divides the agreeing sum by the agreeing experts' ``scalings``
    (mergekit's TIES with ``normalize: true``: Σ w_i τ_i / Σ w_i over agreeing i).
    """
    stacked = torch.stack(list(task_vectors))
    elected = torch.sign(stacked.sum(0))
    agrees = (torch.sign(stacked) == elected) & (elected != 0)
    agreeing = stacked.masked_fill(~agrees, 0)
    if how == "sum":
        return agreeing.sum(0)
    if how == "mean":
        return agreeing.sum(0) / agrees.sum(0).clamp(min=1)
    if how == "weighted_mean":
        w = torch.tensor(list(scalings or [1.0] * len(stacked)), dtype=stacked.dtype)
        w = w.to(stacked.device).view(-1, *([1] * (stacked.dim() - 1)))
        total = (agrees * w).sum(0)
        return torch.where(total != 0, agreeing.sum(0) / total.where(total != 0, 1), 0)
    return elected * agreeing.abs().amax(0)


def largest_magnitude(task_vectors: Sequence[Tensor]) -> Tensor:
    """Per entry, the task-vector entry of largest magnitude (ties to the earlier expert).

    A running comparison rather than an argmax over a stack: same answer, far faster on
    CPU.
    """
    best = task_vectors[0]
    for tau in task_vectors[1:]:
        best = torch.where(tau.abs() > best.abs(), tau, best)
    return best


def pick_per_entry(task_vectors: Sequence[Tensor], choice: Tensor) -> Tensor:
    """Entry-wise selection: entry j of τ_{choice[j]}."""
    stacked = torch.stack(list(task_vectors))
    return stacked.gather(0, choice.unsqueeze(0).to(stacked.device)).squeeze(0)


def slerp_coefficients(a: Tensor, b: Tensor, t: float) -> tuple[float, float]:
    """Coefficients (c_a, c_b) with slerp(a, b, t) = c_a·a + c_b·b.

    Ω is the angle between the flattened tensors (float64); when |cos Ω| > 0.9995 or a
    tensor is zero the angle is unreliable and linear interpolation (1 − t, t) is used.
    """
    a64, b64 = a.flatten().double(), b.flatten().double()
    norms = (a64.norm() * b64.norm()).item()
    cos = (a64 @ b64).item() / norms if norms > 0 else 1.0
    if abs(cos) > LERP_ABOVE_ABS_COS:
        return 1 - t, t
    omega = math.acos(cos)
    return math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)


def model_stock_ratio(task_vectors: Sequence[Tensor]) -> float:
    """Model Stock's t = N·c̄ / ((N−1)·c̄ + 1), c̄ the mean pairwise cosine of the τ_i.

    Cosines are taken in float64; a zero task vector has cosine 0 with everything. c̄ is
    clamped to [0, 1]: τ_i pointing apart on average (c̄ < 0) give t = 0, i.e. θ₀, where
    the formula would give t < 0 and a pole at c̄ = −1/(N−1).
    """
    n = len(task_vectors)
    flat = torch.stack([tau.flatten().double() for tau in task_vectors])
    gram = flat @ flat.T
    norms = gram.diagonal().clamp(min=0).sqrt()
    first, second = torch.triu_indices(n, n, offset=1)
    scale = norms[first] * norms[second]
    cosines = torch.where(scale > 0, gram[first, second] / scale, torch.zeros_like(scale))
    mean_cos = cosines.mean().clamp(0, 1).item()
    return n * mean_cos / ((n - 1) * mean_cos + 1)


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TensorRecord:
    """What pass 1 keeps of one tensor: its key and, for a global trim, each expert's |τ|
    (float, flattened, on the CPU; shape (n_experts, numel))."""

    key: str
    magnitudes: Tensor | None = None


@dataclass(frozen=True)
class GlobalTrim:
    """Per-expert rule of a global trim: keep |τ| > thresholds[i], plus the first
    tie_quota[key][i] entries of ``key`` whose |τ| equals the threshold."""

    thresholds: list[float]
    tie_quota: dict[str, list[int]]


@dataclass(frozen=True)
class TaskVectorStats:
    """Pass-1 results of a task-vector method: LiNeS scales per key and a global trim."""

    lines: dict[str, float] | None = None
    trim: GlobalTrim | None = None


def global_trim(records: Sequence[TensorRecord], density: float) -> GlobalTrim:
    """Keep rules that keep exactly round(density·n) of each expert's n entries, all
    floating tensors together, by |τ|.

    Ties at the threshold go to keys in sorted order, then to lower flat indices, so the
    rules do not depend on the order the tensors were collected in. The exact k-th value
    needs all magnitudes at once: N × (parameter count) floats in CPU memory.
    """
    records = sorted((r for r in records if r.magnitudes is not None), key=lambda r: r.key)
    n_experts = records[0].magnitudes.shape[0] if records else 0
    total = sum(r.magnitudes.shape[1] for r in records)
    k = kept_count(density, total)
    thresholds, quotas = [], []
    for expert in range(n_experts):
        threshold, quota = _global_rule([r.magnitudes[expert] for r in records], k, total)
        thresholds.append(threshold)
        quotas.append(quota)
    return GlobalTrim(
        thresholds=thresholds,
        tie_quota={r.key: [quota[i] for quota in quotas] for i, r in enumerate(records)},
    )


def _global_rule(magnitudes: Sequence[Tensor], k: int, total: int) -> tuple[float, list[int]]:
    """Threshold and per-tensor tie quotas keeping the k largest of all ``magnitudes``."""
    if k == 0:
        return math.inf, [0] * len(magnitudes)
    if k == total:
        return -math.inf, [0] * len(magnitudes)
    everything = torch.cat(list(magnitudes))
    threshold = everything.kthvalue(total - k + 1).values.item()
    missing = k - int((everything > threshold).sum())
    quotas = []
    for tensor_magnitudes in magnitudes:
        take = min(missing, int((tensor_magnitudes == threshold).sum()))
        quotas.append(take)
        missing -= take
    return threshold, quotas


# ---------------------------------------------------------------- the protocol


class MergeMethod(ABC):
    """One merge operator, split into the steps a streamed merge needs (module docstring).

    Subclasses name their parameters in ``accepted``, validate them in ``_check`` and
    merge one floating tensor in ``_merge``; ``apply`` copies non-floating tensors and
    returns the reference dtype.
    """

    name: str = ""
    needs_base: bool = True
    accepted: tuple[str, ...] = ()

    def check(self, n_experts: int, weights, params: Mapping[str, Any]) -> dict:
        """Validated, normalised parameters (canonical names only); InputError if bad."""
        unknown = [name for name in params if name not in self.accepted]
        if unknown:
            takes = f"it takes {', '.join(self.accepted)}" if self.accepted else "it takes none"
            raise InputError(f"{self.name} does not take the parameter {unknown[0]!r}; {takes}")
        if n_experts < 1:
            raise InputError(f"{self.name} needs at least one expert model")
        return self._check(n_experts, weights, dict(params))

    def needs_stats(self, params: Mapping[str, Any]) -> bool:
        """Whether ``collect`` and ``finalize`` must run before ``apply``."""
        return False

    def collect(self, key: str, base_t: Tensor | None, expert_ts: Sequence[Tensor], params):
        """Pass 1 for one tensor: what ``finalize`` needs of it."""
        return TensorRecord(key)

    def finalize(self, collected: Sequence[Any], params: Mapping[str, Any]) -> Any:
        """Statistics for ``apply`` from all collected records (any order)."""
        return None

    def apply(
        self,
        key: str,
        base_t: Tensor | None,
        expert_ts: Sequence[Tensor],
        weights,
        params: Mapping[str, Any],
        stats: Any,
    ) -> Tensor:
        """Pass 2: the merged tensor for ``key``, a new tensor in the reference's dtype.

        ``weights`` are those given to ``check``, ``params`` what it returned and
        ``stats`` what ``finalize`` returned (None when ``needs_stats`` is false).
        """
        reference = expert_ts[0] if base_t is None else base_t
        if not reference.is_floating_point():
            return reference.clone()
        cast = _compute_cast([reference, *expert_ts])
        merged = self._merge(key, base_t, list(expert_ts), weights, params, stats, cast)
        return merged.to(reference.dtype)

    @abstractmethod
    def _check(self, n_experts: int, weights, params: dict) -> dict:
        """The method's validated parameters (InputError on bad ones)."""

    @abstractmethod
    def _merge(self, key, base_t, expert_ts, weights, params, stats, cast: Cast) -> Tensor:
        """One floating tensor merged, in the compute dtype ``cast`` gives."""


class Linear(MergeMethod):
    """Σ w_i θ_i; weights default to 1/N and are divided by their sum unless
    ``normalize=False`` (then used as given, e.g. negative weights, mergekit #213)."""

    name = "linear"
    needs_base = False
    accepted = ("normalize",)

    def _check(self, n_experts, weights, params):
        weights = _check_weights(weights, n_experts)
        normalize = _flag(params.get("normalize", True), "normalize")
        if normalize and weights is not None and abs(math.fsum(weights)) < 1e-12:
            raise InputError(
                "the weights sum to 0, so they cannot be normalised; "
                "pass normalize=False to use them as given"
            )
        return {"normalize": normalize}

    def _merge(self, key, base_t, expert_ts, weights, params, stats, cast):
        coefficients = _linear_weights(weights, len(expert_ts), params["normalize"])
        return sum(w * cast(theta) for w, theta in zip(coefficients, expert_ts, strict=True))


class Slerp(MergeMethod):
    """Spherical interpolation of exactly two models per tensor, t the weight on the
    second (t = 0 gives experts[0], t = 1 experts[1]); a given base is not used."""

    name = "slerp"
    needs_base = False
    accepted = ("t",)

    def _check(self, n_experts, weights, params):
        if n_experts != 2:
            raise InputError(f"slerp merges exactly 2 models, got {n_experts}")
        if weights is not None:
            raise InputError("slerp takes t (the weight on the second model), not weights")
        return {"t": _number(params.get("t", 0.5), "t", 0, 1)}

    def _merge(self, key, base_t, expert_ts, weights, params, stats, cast):
        first, second = cast(expert_ts[0]), cast(expert_ts[1])
        c_first, c_second = slerp_coefficients(first, second, params["t"])
        return c_first * first + c_second * second


class TaskVectorMethod(MergeMethod):
    """θ₀ + s·τ̂ with τ_i = θ_i − θ₀, τ̂ from ``_combine`` and s = lam, or with LiNeS the
    layer scale times lam ("multiply") or instead of it ("replace")."""

    accepted = ("lam", "lines")

    def _check(self, n_experts, weights, params):
        _check_weights(weights, n_experts)
        return {
            "lam": _number(params.get("lam", 1.0), "lam"),
            "lines": _check_lines(params.get("lines"), lam_given="lam" in params),
            **self._check_own(params),
        }

    def _check_own(self, params: dict) -> dict:
        """The method's own parameters, validated."""
        return {}

    def needs_stats(self, params):
        return params["lines"] is not None

    def finalize(self, collected, params):
        lines = params["lines"]
        if lines is None:
            return TaskVectorStats()
        scales = lines_scales(
            [record.key for record in collected],
            lines["pattern"],
            alpha=lines["alpha"],
            beta=lines["beta"],
            g=lines["g"],
        )
        return TaskVectorStats(lines=scales)

    def _merge(self, key, base_t, expert_ts, weights, params, stats, cast):
        base = cast(base_t)
        task_vectors = [cast(theta) - base for theta in expert_ts]
        scalings = _expert_scalings(weights, len(task_vectors))
        merged = self._combine(key, task_vectors, scalings, params, stats)
        return base + self._scale(key, params, stats) * merged

    @abstractmethod
    def _combine(self, key, task_vectors, scalings, params, stats) -> Tensor:
        """τ̂ from the task vectors and the per-expert scalings."""

    @staticmethod
    def _scale(key: str, params, stats) -> float:
        """The factor on τ̂ for ``key``: lam, or the LiNeS scale times or instead of it."""
        lines = params["lines"]
        if lines is None:
            return params["lam"]
        if stats is None or stats.lines is None:
            raise ValueError("LiNeS needs collect and finalize to run before apply")
        layer_scale = stats.lines[key]
        return layer_scale * params["lam"] if lines["mode"] == "multiply" else layer_scale


def _scaled(task_vectors: Sequence[Tensor], scalings: Sequence[float]) -> list[Tensor]:
    """w_i·τ_i for each expert."""
    return [w * tau for w, tau in zip(scalings, task_vectors, strict=True)]


class TaskArithmetic(TaskVectorMethod):
    """τ̂ = Σ w_i τ_i."""

    name = "task_arithmetic"

    def _combine(self, key, task_vectors, scalings, params, stats):
        return sum(_scaled(task_vectors, scalings))


class Ties(TaskVectorMethod):
    """TIES: trim each τ_i to its top ``density`` by |τ| (per tensor, or over all tensors
    of the expert with ``scope="global"``), elect signs, merge the agreeing entries."""

    name = "ties"
    accepted = ("lam", "lines", "density", "drop_fraction", "merge", "majority", "scope")

    def _check_own(self, params):
        return {
            "density": _density(params, default=0.8),
            "merge": _disjoint_merge(params),
            "scope": _choice(params.get("scope", "tensor"), "scope", TRIM_SCOPES),
        }

    def needs_stats(self, params):
        return super().needs_stats(params) or params["scope"] == "global"

    def collect(self, key, base_t, expert_ts, params):
        if params["scope"] != "global" or not base_t.is_floating_point():
            return TensorRecord(key)
        cast = _compute_cast([base_t, *expert_ts])
        base = cast(base_t)
        magnitudes = [(cast(theta) - base).abs().flatten() for theta in expert_ts]
        return TensorRecord(key, torch.stack(magnitudes).cpu())

    def finalize(self, collected, params):
        stats = super().finalize(collected, params)
        if params["scope"] != "global":
            return stats
        return replace(stats, trim=global_trim(collected, params["density"]))

    def _combine(self, key, task_vectors, scalings, params, stats):
        masks = self._masks(key, task_vectors, params, stats)
        return masked_merge(task_vectors, masks, scalings, params["merge"])

    @staticmethod
    def _masks(key, task_vectors, params, stats) -> list[Tensor]:
        """The trim mask of each expert's τ for ``key``."""
        if params["scope"] == "tensor":
            return [trim_mask(tau, params["density"]) for tau in task_vectors]
        if stats is None or stats.trim is None:
            raise ValueError("a global TIES trim needs collect and finalize to run before apply")
        rules = zip(task_vectors, stats.trim.thresholds, stats.trim.tie_quota[key], strict=True)
        return [
            keep_mask(tau.abs().reshape(1, -1), threshold, quota).reshape(tau.shape)
            for tau, threshold, quota in rules
        ]


class DareLinear(TaskVectorMethod):
    """DARE then a weighted sum: τ̂ = Σ w_i · (m_i ⊙ τ_i) / density, m_i ~ Bernoulli(density)."""

    name = "dare_linear"
    accepted = (*TaskVectorMethod.accepted, "density", "drop_fraction", "seed")

    def _check_own(self, params):
        return {
            "density": _density(params, default=0.8),
            "seed": _integer(params.get("seed", 0), "seed"),
        }

    merge_how: str | None = None  # a weighted sum of the dropped task vectors

    def _combine(self, key, task_vectors, scalings, params, stats):
        density = params["density"]
        if density == 0:
            return torch.zeros_like(task_vectors[0])
        masks = dare_masks(task_vectors, density, tensor_generator(params["seed"], key))
        how = params["merge"] if self.merge_how == "param" else None
        return masked_merge(task_vectors, masks, scalings, how, rescale=density)


class DareTies(DareLinear):
    """DARE then TIES sign election and disjoint merge (no further trim)."""

    name = "dare_ties"
    accepted = (*DareLinear.accepted, "merge", "majority")

    def _check_own(self, params):
        return {**super()._check_own(params), "merge": _disjoint_merge(params)}

    merge_how = "param"  # TIES elect + merge with the ``merge`` parameter


class Breadcrumbs(TaskVectorMethod):
    """Model Breadcrumbs: per row, drop the top ``gamma`` (outliers) and keep the next
    ``density`` of the magnitudes (so the bottom 1 − density − gamma go too), then TIES
    sign election and disjoint merge. Spec: gamma = β_high, density = 1 − β_low − β_high."""

    name = "breadcrumbs"
    accepted = ("lam", "lines", "density", "drop_fraction", "gamma", "merge", "majority")

    def _check_own(self, params):
        density = _density(params, default=0.79)
        gamma = _number(params.get("gamma", 0.01), "gamma", 0, 1)
        if density + gamma > 1 + 1e-9:
            raise InputError(
                f"density {density:g} plus gamma {gamma:g} exceeds 1; breadcrumbs keeps a "
                "density share after dropping the top gamma share of each row"
            )
        return {"density": density, "gamma": gamma, "merge": _disjoint_merge(params)}

    def _combine(self, key, task_vectors, scalings, params, stats):
        masks = [breadcrumbs_mask(tau, params["density"], params["gamma"]) for tau in task_vectors]
        return masked_merge(task_vectors, masks, scalings, params["merge"])


class MagMax(TaskVectorMethod):
    """Per entry, the w_i·τ_i of largest magnitude (ties to the lower expert index)."""

    name = "magmax"

    def _combine(self, key, task_vectors, scalings, params, stats):
        return largest_magnitude(_scaled(task_vectors, scalings))


class RandomPick(TaskVectorMethod):
    """Per entry, the w_i·τ_i of a uniformly random expert, drawn from (seed, key)."""

    name = "random"
    accepted = (*TaskVectorMethod.accepted, "seed")

    def _check_own(self, params):
        return {"seed": _integer(params.get("seed", 0), "seed")}

    def _combine(self, key, task_vectors, scalings, params, stats):
        generator = tensor_generator(params["seed"], key)
        choice = torch.randint(len(task_vectors), task_vectors[0].shape, generator=generator)
        return pick_per_entry(_scaled(task_vectors, scalings), choice)


class ModelStock(MergeMethod):
    """Model Stock for N experts per tensor: θ = t·mean_i θ_i + (1 − t)·θ₀ with t from the
    mean pairwise cosine of the τ_i (see ``model_stock_ratio``); one expert is returned
    as it is (t = 1). Takes no weights."""

    name = "model_stock"

    def _check(self, n_experts, weights, params):
        if weights is not None:
            raise InputError("model_stock takes no weights: its ratio comes from the task vectors")
        return {}

    def _merge(self, key, base_t, expert_ts, weights, params, stats, cast):
        if len(expert_ts) == 1:
            return cast(expert_ts[0]).clone()
        base = cast(base_t)
        experts = [cast(theta) for theta in expert_ts]
        t = model_stock_ratio([theta - base for theta in experts])
        return t * torch.stack(experts).mean(0) + (1 - t) * base


METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        Linear(),
        Slerp(),
        TaskArithmetic(),
        Ties(),
        DareLinear(),
        DareTies(),
        Breadcrumbs(),
        MagMax(),
        RandomPick(),
        ModelStock(),
    )
}


def available() -> list[str]:
    """The names of the merge methods, in registry order."""
    return list(METHODS)


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``; InputError listing the choices otherwise."""
    if name not in METHODS:
        raise InputError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def merge(
    method: str,
    base: StateDict | None,
    experts: Sequence[StateDict],
    weights: Sequence[float] | None = None,
    **params,
) -> dict[str, Tensor]:
    """Merge ``experts`` (task vectors relative to ``base``) with ``method``.

    Returns a new dict in the key order of the base (experts[0] without one); the inputs
    are left untouched. Runs exactly the check → collect/finalize → apply steps a
    streamed merge runs, so the two agree bit for bit. ``base`` may be None for linear
    and slerp only.
    """
    operator = get_method(method)
    experts = list(experts)
    params = operator.check(len(experts), weights, params)
    if operator.needs_base and base is None:
        raise InputError(f"{method} needs a base model: its task vectors are expert − base")
    check_compatible(base, experts)
    keys = list((experts[0] if base is None else base).keys())

    def tensors(key: str) -> tuple[Tensor | None, list[Tensor]]:
        return (None if base is None else base[key]), [expert[key] for expert in experts]

    stats = None
    if operator.needs_stats(params):
        collected = [operator.collect(key, *tensors(key), params) for key in keys]
        stats = operator.finalize(collected, params)
    return {key: operator.apply(key, *tensors(key), weights, params, stats) for key in keys}
