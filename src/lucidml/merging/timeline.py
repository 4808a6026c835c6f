"""The TIME loop: where each training starts (init), what is served (deploy), and metrics.

For t = 1..T with a buffer of stored experts: ``init`` turns (θ₀, θˢ₁..θˢ_{t−1}) into the
starting point θⁱ_t, the trainer turns θⁱ_t into the expert θˢ_t, the expert is stored,
and ``deploy`` turns (θ₀, θˢ₁..θˢ_t) into the served model θᵒ_t, which is evaluated.
Both are strategies from one registry, each a pure function of (θ₀, the stored
experts, an :class:`Operator`) built on :func:`lucidml.merging.techniques.merge`:

- ``base``: θ₀;  ``latest``: the newest expert;
- ``merge_all``: f(θˢ₁..θˢ_n; θ₀), with an offline weighting for ``linear``;
- ``ema``: r₁ = θˢ₁, r_k = f([θˢ_k, r_{k−1}]; θ₀);  ``ema0``: the same from r₀ = θ₀;
- ``latest_base``: f([θˢ_n, θ₀]).

With no expert stored every strategy returns θ₀. The loop keeps the EMA merges running
(one merge per task) and keeps all experts only when ``merge_all`` needs them.

Metrics per t, from t = 0 (θ₀): KA_t, the mean accuracy over the adaptation tasks seen
so far (1..t; at t = 0, over all tasks, so the curve starts at the zero-shot model);
``ka_all``, over all tasks whatever t (the paper's definition; equal to KA at t = T);
ZS_t over the held-out sets; GM_t = √(KA_t·ZS_t).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lucidml.core.progress import get_logger, track
from lucidml.core.runs import atomic_write_bytes, digest, read_json, write_json
from lucidml.errors import InputError

State = dict[str, torch.Tensor]
log = get_logger("merging")

# --- the operator -----------------------------------------------------------------------

# Methods whose weights must be a pair summing to 1: interpolation, and slerp (given its
# weight on the older model as ``t``). Task-vector methods take weights as τ scalings.
CONVEX_METHODS = frozenset({"linear", "slerp"})
# Methods that draw random masks: each merge gets its own seed (``seed + k``), else an
# EMA would drop the same entries at every step.
RANDOM_METHODS = frozenset({"dare_linear", "dare_ties", "random"})
RUNNING_MEAN = "running_mean"


@dataclass(frozen=True)
class Operator:
    """A merge operator f (a :mod:`~lucidml.merging.techniques` method) as strategies use it.

    ``weights`` is the pair (new, old) of every two-model merge (``ema``, ``ema0``,
    ``latest_base``), passed to the method: interpolation weights for ``linear`` and
    ``slerp`` (summing to 1), τ scalings for task-vector methods. ``None`` leaves the
    method's default (uniform for ``linear`` and ``slerp``, unscaled τ otherwise, so
    EMA task arithmetic unrolls to Σλ^{t−k+1}τ_k). ``"running_mean"`` gives the new
    model 1/k (``ema``) or 1/(k+1) (``ema0``), so the EMA is the uniform average (½ in
    ``latest_base``). ``weighting`` and ``include_base`` shape ``merge_all``; a
    weighting other than uniform needs ``linear``.
    """

    method: str = "linear"
    weights: tuple[float, float] | str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    weighting: str = "uniform"
    include_base: bool = False

    def __post_init__(self):
        from lucidml.merging.techniques import get_method

        get_method(self.method)  # validates the name
        offline_weights(self.weighting, 1)
        if self.weighting != "uniform" and self.method != "linear":
            raise InputError(
                f"weighting '{self.weighting}' weights an interpolation; "
                f"method '{self.method}' cannot use it (use method 'linear')"
            )
        if self.method == "slerp" and "t" in self.params:
            raise InputError("give slerp's weight as weights=(new, old), not as the parameter t")
        if self.weights is None or self.weights == RUNNING_MEAN:
            return
        pair = _number_pair(self.weights)
        if self.method in CONVEX_METHODS and abs(sum(pair) - 1) > 1e-6:
            raise InputError(f"{self.method} weights must sum to 1, got {list(pair)}")
        object.__setattr__(self, "weights", pair)  # lists from YAML become a tuple

    def pair_weights(self, k: int, strategy: str) -> tuple[float, float] | None:
        """Weights (new, old) of the k-th two-model merge of ``strategy``, or None."""
        if self.weights == RUNNING_MEAN:
            w = {"ema": 1 / k, "ema0": 1 / (k + 1)}.get(strategy, 0.5)
            return (w, 1.0 - w)
        return self.weights

    def _params(self, k: int) -> dict[str, Any]:
        params = dict(self.params)
        if self.method in RANDOM_METHODS:
            params["seed"] = int(params.get("seed", 0)) + k
        return params

    def pair(self, base: State, new: State, old: State, weights, k: int) -> State:
        """f([new, old]; θ₀) with ``weights`` (new, old) or the method's default."""
        from lucidml.merging.techniques import merge

        params = self._params(k)
        if self.method == "slerp":
            t = 0.5 if weights is None else weights[1]  # slerp's t weights the second model
            return merge("slerp", base, [new, old], t=t, **params)
        return merge(self.method, base, [new, old], weights=weights, **params)

    def many(self, base: State, experts: Sequence[State]) -> State:
        """f(experts; θ₀) with the offline weighting (θ₀ first when ``include_base``)."""
        from lucidml.merging.techniques import merge

        models = [base, *experts] if self.include_base else list(experts)
        weights = None
        if self.weighting != "uniform":
            weights = offline_weights(self.weighting, len(models))
        return merge(self.method, base, models, weights=weights, **self._params(len(experts)))


def _number_pair(weights: Any) -> tuple[float, float]:
    """``weights`` as a pair of floats (new, old); InputError otherwise."""
    try:
        pair = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        pair = ()
    if isinstance(weights, str) or len(pair) != 2:
        raise InputError(f"weights must be a pair (new, old) or '{RUNNING_MEAN}', got {weights!r}")
    return pair


# --- offline weightings -----------------------------------------------------------------

# g(k) for k = 1 (oldest) .. n (newest); w_k ∝ g(k)
WEIGHTINGS: dict[str, Callable[[int], float]] = {
    "uniform": lambda k: 1.0,
    "linear": lambda k: float(k),
    "sqrt": lambda k: math.sqrt(k),
    "square": lambda k: float(k**2),
    "cubic": lambda k: float(k**3),
    "quintic": lambda k: float(k**5),
    "power10": lambda k: float(k**10),
    "exp": lambda k: 2.0 ** (k - 1),
    "log": lambda k: math.log(k + 1),
}


def weighting_names() -> list[str]:
    """Every weighting name, ``reverse_*`` (oldest weighted most) included."""
    return [*WEIGHTINGS, *(f"reverse_{n}" for n in WEIGHTINGS if n != "uniform")]


def offline_weights(name: str, n: int) -> list[float]:
    """Normalised weights of n models, oldest first: w_k = g(k) / Σ g; ``reverse_*`` flips."""
    reverse = name.startswith("reverse_")
    g = WEIGHTINGS.get(name.removeprefix("reverse_"))
    if g is None or name == "reverse_uniform":
        raise InputError(f"unknown weighting '{name}'; choose from {', '.join(weighting_names())}")
    if n < 1:
        raise InputError(f"a weighting needs at least one model, got {n}")
    raw = [g(k) for k in range(1, n + 1)]
    total = sum(raw)
    weights = [r / total for r in raw]
    return weights[::-1] if reverse else weights


# --- strategies -------------------------------------------------------------------------


def base_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """θ₀: training always restarts from (or serving stays at) the base model."""
    return base


def latest_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """The newest expert: continual fine-tuning."""
    return experts[-1] if experts else base


def merge_all_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """f(θˢ₁..θˢ_n; θ₀): one merge of every stored expert (offline merging)."""
    return op.many(base, experts) if experts else base


def ema_step(base: State, running: State, new: State, op: Operator, k: int, strategy: str) -> State:
    """r_k = f([θˢ_k, r_{k−1}]; θ₀): fold the k-th expert into the running merge."""
    return op.pair(base, new, running, op.pair_weights(k, strategy), k)


def ema_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """r₁ = θˢ₁, r_k = f([θˢ_k, r_{k−1}]; θ₀): an exponential moving average of experts."""
    if not experts:
        return base
    running = experts[0]
    for k, expert in enumerate(experts[1:], start=2):
        running = ema_step(base, running, expert, op, k, "ema")
    return running


def ema0_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """As ``ema`` but from r₀ = θ₀, so θ₀ keeps weight (1−w)^n (Best-in-TIME)."""
    running = base
    for k, expert in enumerate(experts, start=1):
        running = ema_step(base, running, expert, op, k, "ema0")
    return running


def latest_base_strategy(base: State, experts: Sequence[State], op: Operator) -> State:
    """f([θˢ_n, θ₀]): the newest expert merged back towards the base."""
    if not experts:
        return base
    n = len(experts)
    return op.pair(base, experts[-1], base, op.pair_weights(n, "latest_base"), n)


STRATEGIES: dict[str, Callable[[State, Sequence[State], Operator], State]] = {
    "base": base_strategy,
    "latest": latest_strategy,
    "merge_all": merge_all_strategy,
    "ema": ema_strategy,
    "ema0": ema0_strategy,
    "latest_base": latest_base_strategy,
}
ALIASES = {"zs": "base", "ft": "latest", "all": "merge_all", "unrolled": "ema"}
RECIPES = {
    "continual_finetuning": ("latest", "latest"),
    "offline_merging": ("base", "merge_all"),
    "best_in_time": ("ema0", "ema0"),
}


def resolve_strategy(name: str) -> str:
    """The registry name of a strategy, accepting the reference's aliases."""
    canonical = ALIASES.get(name, name)
    if canonical not in STRATEGIES:
        choices = ", ".join([*STRATEGIES, *ALIASES])
        raise InputError(f"unknown strategy '{name}'; choose from {choices}")
    return canonical


class MergeBuffer:
    """θ₀ and what the strategies need of the stored experts, updated one expert at a time.

    EMA strategies keep only their running merge (one merge per expert); all experts are
    kept only when ``merge_all`` is among ``strategies``, otherwise only the newest.
    ``view(s)`` equals ``STRATEGIES[s](θ₀, all experts so far, op)``.
    """

    def __init__(self, base: State, op: Operator, strategies: Sequence[str]):
        self.base, self.op = base, op
        self.strategies = {resolve_strategy(s) for s in strategies}
        self.keep_all = "merge_all" in self.strategies
        self.kept: list[State] = []
        self.count = 0
        self.running: dict[str, State] = {}
        self.views: dict[str, State] = {}  # merges of the current experts, computed once

    def add(self, expert: State) -> None:
        """Store the next expert and fold it into each running EMA."""
        self.count += 1
        k = self.count
        self.views = {}
        if self.keep_all:
            self.kept.append(expert)
        else:
            self.kept = [expert]
        for strategy in ("ema", "ema0"):
            if strategy not in self.strategies:
                continue
            if strategy == "ema" and k == 1:
                self.running["ema"] = expert
            else:
                previous = self.running.get(strategy, self.base)
                self.running[strategy] = ema_step(self.base, previous, expert, self.op, k, strategy)

    def view(self, strategy: str) -> State:
        """What ``strategy`` returns for θ₀ and every expert added so far."""
        strategy = resolve_strategy(strategy)
        if strategy not in self.strategies:
            raise InputError(f"this buffer was not built for strategy '{strategy}'")
        if strategy in self.running:
            return self.running[strategy]
        if strategy not in self.views:
            self.views[strategy] = STRATEGIES[strategy](self.base, self.kept, self.op)
        return self.views[strategy]


# --- metrics ----------------------------------------------------------------------------


def knowledge_accumulation(adaptation: Mapping[str, float], seen: Sequence[str]) -> float:
    """KA: mean accuracy over the adaptation tasks ``seen`` so far (all tasks when none is
    seen yet, so t = 0 reports the starting point on the whole stream)."""
    names = list(seen) or list(adaptation)
    missing = [n for n in names if n not in adaptation]
    if missing:
        raise InputError(f"the evaluation has no accuracy for task(s) {missing}")
    if not names:
        raise InputError("knowledge accumulation needs at least one adaptation task")
    return sum(adaptation[n] for n in names) / len(names)


def zero_shot_retention(heldout: Mapping[str, float]) -> float:
    """ZS: mean accuracy over the held-out sets no task trains on."""
    if not heldout:
        raise InputError("zero-shot retention needs at least one held-out set")
    return sum(heldout.values()) / len(heldout)


def geometric_mean(ka: float, zs: float) -> float:
    """GM = √(KA·ZS): high only when both are; 0 when either is 0."""
    if ka < 0 or zs < 0:
        raise InputError(f"accuracies must be non-negative, got KA={ka}, ZS={zs}")
    return math.sqrt(ka * zs)


def metrics_row(
    t: int, evaluation: Mapping[str, Mapping[str, float]], seen: Sequence[str]
) -> dict[str, Any]:
    """KA, KA over all tasks, ZS, GM and the per-task accuracies of one evaluation."""
    adaptation, heldout = dict(evaluation["adaptation"]), dict(evaluation["heldout"])
    ka, zs = knowledge_accumulation(adaptation, seen), zero_shot_retention(heldout)
    return {
        "t": t,
        "task": seen[-1] if seen else None,
        "ka": ka,
        "ka_all": knowledge_accumulation(adaptation, []),
        "zs": zs,
        "gm": geometric_mean(ka, zs),
        "adaptation": adaptation,
        "heldout": heldout,
    }


# --- checkpoints ------------------------------------------------------------------------


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A folder name for one recipe: readable names plus a hash of the whole recipe.

    The trainer is not in it (``train_fn`` is opaque): a checkpoint folder belongs to one
    trainer and model, as a run folder does (its config is checked on ``--resume``)."""
    key = digest(recipe)[:10]
    return f"{recipe['init']}-{recipe['deploy']}-{recipe['operator']['method']}-{key}"


def save_step(folder: Path, row: Mapping[str, Any], expert: State | None) -> None:
    """Write step t's expert (safetensors) and then its row (JSON): a row on disk means
    its expert is complete."""
    from safetensors.torch import save

    t = row["t"]
    if expert is not None:
        payload = {k: v.detach().contiguous() for k, v in expert.items()}
        atomic_write_bytes(folder / f"expert-{t:03d}.safetensors", save(payload))
    write_json(folder / f"row-{t:03d}.json", row)


def load_steps(folder: Path, tasks: Sequence[str]) -> tuple[list[dict], list[State]]:
    """Rows 0..n and experts 1..n already finished in ``folder`` (stops at the first gap)."""
    from safetensors.torch import load_file

    rows: list[dict] = []
    experts: list[State] = []
    for t in range(len(tasks) + 1):
        row_path = folder / f"row-{t:03d}.json"
        if not row_path.is_file():
            break
        row = read_json(row_path)
        expected = tasks[t - 1] if t else None
        if row.get("task") != expected:
            raise InputError(f"{row_path} is for task {row.get('task')}, not {expected}")
        if t:
            experts.append(load_file(folder / f"expert-{t:03d}.safetensors"))
        rows.append(row)
    return rows, experts


# --- the loop ---------------------------------------------------------------------------


def run_timeline(
    base_state: State,
    tasks: Sequence[Any],
    train_fn: Callable[[State, Any], State],
    evaluate_fn: Callable[[State], Mapping[str, Mapping[str, float]]],
    init: str = "ema0",
    deploy: str = "ema0",
    method: str = "linear",
    weights: tuple[float, float] | str | None = None,
    params: Mapping[str, Any] | None = None,
    weighting: str = "uniform",
    include_base: bool = False,
    on_task: Callable[[dict], None] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> list[dict]:
    """Run TIME over ``tasks`` (each with a ``.name``) and return one metrics row per t.

    ``train_fn(init_state, task)`` returns the expert; ``evaluate_fn(state)`` returns
    ``{"adaptation": {task name: acc}, "heldout": {name: acc}}``. ``on_task(row)`` is
    called for every row in t order, rows restored from a checkpoint included, so a
    writer starting a fresh ``metrics.jsonl`` ends with one row per t.

    With ``checkpoint_dir``, each finished step's expert and row are saved under a
    folder keyed by the recipe (``<init>-<deploy>-<method>-<hash>/expert-<t>.safetensors``
    and ``row-<t>.json``); a rerun restores them, rebuilds the merges from the stored
    experts and continues after the last finished step.
    """
    init, deploy = resolve_strategy(init), resolve_strategy(deploy)
    op = Operator(method, weights, dict(params or {}), weighting, include_base)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"task names must be unique, got {names}")
    recipe = {"init": init, "deploy": deploy, "operator": _jsonable(asdict(op)), "tasks": names}
    buffer = MergeBuffer(base_state, op, [init, deploy])

    rows, restored = [], []
    folder = None
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir) / recipe_key(recipe)
        rows, restored = load_steps(folder, names)
        write_json(folder / "recipe.json", recipe)
        if rows:
            log.info("resuming %s/%s after task %d of %d", init, deploy, len(rows) - 1, len(tasks))
    for expert in restored:
        buffer.add(expert)
    for row in rows:
        _emit(on_task, row)

    if not rows:
        row = {**metrics_row(0, evaluate_fn(base_state), []), **_labels(init, deploy, op)}
        rows.append(_finish(row, folder, None, on_task, train_s=0.0, merge_s=0.0))
    for t in track(range(len(rows), len(tasks) + 1), f"TIME {init}/{deploy}"):
        task = tasks[t - 1]
        start = time.perf_counter()
        init_state = buffer.view(init)
        merged = time.perf_counter()
        expert = train_fn(init_state, task)
        trained = time.perf_counter()
        buffer.add(expert)
        deployed = buffer.view(deploy)
        done = time.perf_counter()
        row = {**metrics_row(t, evaluate_fn(deployed), names[:t]), **_labels(init, deploy, op)}
        merge_s = (merged - start) + (done - trained)
        rows.append(
            _finish(row, folder, expert, on_task, train_s=trained - merged, merge_s=merge_s)
        )
        log.info("t=%d %s: KA %.3f ZS %.3f GM %.3f", t, task.name, row["ka"], row["zs"], row["gm"])
    return rows


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _labels(init: str, deploy: str, op: Operator) -> dict[str, Any]:
    return {"init": init, "deploy": deploy, "method": op.method}


def _emit(on_task: Callable[[dict], None] | None, row: dict) -> None:
    if on_task is not None:
        on_task(row)


def _finish(row, folder, expert, on_task, train_s: float, merge_s: float) -> dict:
    """Add timings (merge cost reported apart from training, as TIME does), save, emit."""
    row = {**row, "train_seconds": train_s, "merge_seconds": merge_s}
    if folder is not None:
        save_step(folder, row, expert)
    _emit(on_task, row)
    return row
