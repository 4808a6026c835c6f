"""Population averaging (PA): a per-word template of the residual stream, used as a detector.

From n training occurrences S of a word at one layer: the mean mu, a mask of the neurons
that stay within tolerance tau of it on every training occurrence, the masked mean squared
deviation D(h), and the threshold theta = max over S of D. A position is detected when
D(h) <= theta. tau is chosen per layer on the training text, excluding S.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lucidml.errors import InputError, ShapeError

# {100, 30, 20, 10, 3} and 0.8^k for k = 0..34, largest first
TOLERANCES: tuple[float, ...] = tuple(
    sorted({100.0, 30.0, 20.0, 10.0, 3.0} | {0.8**k for k in range(35)}, reverse=True)
)
STEPS: tuple[int, ...] = (-2, -1, 0, 1, 2)
SELECTIONS = ("accuracy", "balanced")
_ROW_BLOCK = 8192  # rows per block when scoring, to bound memory on long texts


def _as_tensor(H) -> torch.Tensor:
    H = torch.as_tensor(H)
    if H.ndim != 2:
        raise ShapeError(f"activations must be a (T, d) matrix, got shape {tuple(H.shape)}")
    return H.float()


# --- labels -------------------------------------------------------------------------------


def word_variants(word: str) -> list[str]:
    """{w, Capitalised, lower, UPPER} x {with or without a leading space}, without repeats."""
    forms = dict.fromkeys([word, word[:1].upper() + word[1:], word.lower(), word.upper()])
    return [p + f for f in forms for p in ("", " ")]


def variant_ids(tokenizer, word: str) -> list[tuple[int, ...]]:
    """The distinct token-id sequences of the word's variants (unknown-token encodings dropped)."""
    unk = tokenizer.unk_token_id
    seqs = [tuple(tokenizer(v, add_special_tokens=False)["input_ids"]) for v in word_variants(word)]
    return list(dict.fromkeys(s for s in seqs if s and unk not in s))


# markers a tokenizer puts on a piece that starts after a space: byte-level BPE (GPT-2,
# Llama 3, SmolLM2) and SentencePiece (Llama 2, T5)
SPACE_MARKS = ("\u0120", "\u2581", " ")


def _continuation_prefix(tokenizer) -> str | None:
    """WordPiece's continuation prefix ("##"), or None for tokenizers without one."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(model).__name__ == "WordPiece":
        return model.continuing_subword_prefix
    wordpiece = getattr(tokenizer, "wordpiece_tokenizer", None)  # a slow BertTokenizer
    return "##" if wordpiece is not None else None


def marks_spaces(tokenizer) -> bool:
    """Whether pieces carry their leading space (byte-level BPE, SentencePiece) rather
    than the pre-tokenizer dropping it (WordPiece, whitespace-split word vocabularies)."""
    ids = tokenizer(" the a", add_special_tokens=False)["input_ids"]
    return any(str(p).startswith(SPACE_MARKS) for p in tokenizer.convert_ids_to_tokens(ids))


def word_edges(tokenizer, token_ids) -> tuple[np.ndarray, np.ndarray]:
    """Per position: (opens, ends_in_word). ``opens`` is True where the token cannot
    continue the word before it: a special token, a piece carrying a leading space,
    one starting with a non-alphanumeric character, or, for tokenizers that drop spaces,
    any piece without the continuation prefix. ``ends_in_word`` is True where the
    token's last character is alphanumeric (so a following piece without a space would
    extend that word)."""
    token_ids = np.asarray(token_ids, dtype=np.int64)
    uniq, inverse = np.unique(token_ids, return_inverse=True)
    pieces = tokenizer.convert_ids_to_tokens(uniq.tolist())
    special = set(tokenizer.all_special_ids)
    marked, prefix = marks_spaces(tokenizer), _continuation_prefix(tokenizer)
    opens, ends_in_word = np.zeros(len(uniq), bool), np.zeros(len(uniq), bool)
    for j, (i, piece) in enumerate(zip(uniq.tolist(), pieces, strict=True)):
        if i in special or not piece:
            opens[j] = True
            continue
        body = piece[len(prefix) :] if prefix and piece.startswith(prefix) else piece
        continues = bool(prefix) and piece.startswith(prefix) and bool(body)
        if marked:
            opens[j] = piece.startswith(SPACE_MARKS) or not piece[0].isalnum()
        else:
            opens[j] = not continues
        ends_in_word[j] = body[-1:].isalnum()
    return opens[inverse], ends_in_word[inverse]


def match_positions(
    token_ids: np.ndarray,
    sentence_ids: np.ndarray,
    variants: Sequence[Sequence[int]],
    step: int = 0,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Indices labelled for a word: the last sub-token of each exact id-sequence match,
    shifted to i - step, kept only when match and label lie inside one sentence.

    With ``edges`` (from ``word_edges``) a match counts only on word boundaries: it
    starts a sentence, or its first token opens a word, or the token before ends in
    a non-alphanumeric character; and it ends a sentence or the next token opens a word.
    """
    token_ids, sentence_ids = np.asarray(token_ids), np.asarray(sentence_ids)
    T = len(token_ids)
    labels = set()
    for var in variants:
        k = len(var)
        if k == 0 or k > T:
            continue
        hit = np.ones(T - k + 1, dtype=bool)
        for j, tok in enumerate(var):  # vectorised over positions, loop over the few sub-tokens
            hit &= token_ids[j : T - k + 1 + j] == tok
        starts = np.flatnonzero(hit)
        ends = starts + k - 1
        keep = sentence_ids[starts] == sentence_ids[ends]
        if edges is not None:
            opens, ends_in_word = edges
            before, after = starts - 1, ends + 1
            first = (starts == 0) | (sentence_ids[np.maximum(before, 0)] != sentence_ids[starts])
            left = first | opens[starts] | ~ends_in_word[np.maximum(before, 0)]
            last = (after >= T) | (sentence_ids[np.minimum(after, T - 1)] != sentence_ids[ends])
            right = last | opens[np.minimum(after, T - 1)]
            keep &= left & right
        labels.update(int(e) for e in ends[keep])
    ends = np.array(sorted(labels), dtype=np.int64)
    shifted = ends - step
    ok = (shifted >= 0) & (shifted < T)
    ok[ok] &= sentence_ids[shifted[ok]] == sentence_ids[ends[ok]]
    return np.unique(shifted[ok])


def word_positions(tokenizer, token_ids, sentence_ids, word: str, step: int = 0) -> np.ndarray:
    """Positions of ``word`` (any variant) on word boundaries, labelled at step ``step``:
    "hotdog" holds no "dog", "Grain" no "rain", "coffeehouse" no "coffee"."""
    edges = word_edges(tokenizer, token_ids)
    return match_positions(token_ids, sentence_ids, variant_ids(tokenizer, word), step, edges)


# --- metrics ------------------------------------------------------------------------------


def _label_vector(T: int, positions) -> np.ndarray:
    y = np.zeros(T, dtype=bool)
    y[np.asarray(positions, dtype=np.int64)] = True
    return y


def detection_metrics(detected: np.ndarray, positions, exclude=()) -> dict:
    """TPR = TP/|I|, FPR = FP/(T - |I|) and accuracy, leaving out the ``exclude`` rows."""
    detected = np.asarray(detected, dtype=bool)
    y = _label_vector(len(detected), positions)
    keep = np.ones(len(detected), dtype=bool)
    keep[np.asarray(exclude, dtype=np.int64)] = False
    d, y = detected[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, fp = int((d & y).sum()), int((d & ~y).sum())
    return {
        "tpr": tp / n_pos if n_pos else 0.0,
        "fpr": fp / n_neg if n_neg else 0.0,
        "accuracy": float((d == y).mean()) if len(y) else 0.0,
        "tp": tp,
        "fp": fp,
        "n_pos": n_pos,
        "n_neg": n_neg,
    }


def sweep_auc(fpr: Sequence[float], tpr: Sequence[float]) -> float:
    """Trapezoid area under the FPR-sorted sweep points, with (0,0) and (1,1) added."""
    pts = sorted(zip([0.0, *fpr, 1.0], [0.0, *tpr, 1.0], strict=True))
    x, y = np.array(pts).T
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def auroc(scores: np.ndarray, positions, exclude=()) -> float:
    """AUROC of -D as a detector score (lower deviation = more word-like)."""
    y = _label_vector(len(scores), positions)
    keep = np.ones(len(scores), dtype=bool)
    keep[np.asarray(exclude, dtype=np.int64)] = False
    if y[keep].all() or not y[keep].any():
        return float("nan")
    return float(roc_auc_score(y[keep], -np.asarray(scores)[keep]))


def _select_score(m: dict, select: str) -> float:
    return m["accuracy"] if select == "accuracy" else (m["tpr"] + 1.0 - m["fpr"]) / 2


# --- templates ----------------------------------------------------------------------------


@dataclass
class Template:
    """The stored detector of one (word, step, layer)."""

    mask: torch.Tensor  # (d,) bool: neurons within tolerance on every training occurrence
    mean: torch.Tensor  # (|m|,) mu restricted to the mask
    theta: float  # max training deviation
    tau: float  # tolerance that built the mask
    train_positions: np.ndarray
    n_occurrences: int
    meta: dict = field(default_factory=dict)  # word, step, layer, sweep records ...
    # word mean minus the mean of all other tokens at this layer (full width), for
    # additive grafting; None when it was not computed
    contrast: torch.Tensor | None = None

    @property
    def n_dims(self) -> int:
        return int(self.mask.sum())

    def score(self, H) -> np.ndarray:
        """D(h) = mean over masked neurons of (h_j - mu_j)^2, for every row: (T,)."""
        H = _as_tensor(H)
        if H.shape[1] != self.mask.numel():
            raise ShapeError(
                f"activations have {H.shape[1]} features; the template was fit on "
                f"{self.mask.numel()}"
            )
        mu, cols = self.mean.float(), self.mask.nonzero().flatten()
        return torch.cat(
            [((blk.index_select(1, cols) - mu) ** 2).mean(1) for blk in H.split(_ROW_BLOCK)]
        ).numpy()

    def detect(self, H) -> np.ndarray:
        """Boolean (T,): rows whose deviation is at most theta."""
        return self.score(H) <= self.theta

    def fields(self) -> dict:
        """Everything but the two tensors, JSON-able (the sweep records are left out)."""
        return {
            "theta": self.theta,
            "tau": self.tau,
            "n_occurrences": self.n_occurrences,
            "train_positions": self.train_positions.tolist(),
            "meta": {k: v for k, v in self.meta.items() if k != "sweep"},
        }

    @classmethod
    def from_fields(cls, mask: torch.Tensor, mean: torch.Tensor, fields: dict) -> Template:
        return cls(
            mask=mask.bool(),
            mean=mean.float(),
            theta=fields["theta"],
            tau=fields["tau"],
            train_positions=np.array(fields["train_positions"], dtype=np.int64),
            n_occurrences=fields["n_occurrences"],
            meta=dict(fields.get("meta", {})),
        )

    def to_json(self) -> dict:
        """The whole template as JSON (the mask as indices), for resumable items."""
        return {
            **self.fields(),
            "width": self.mask.numel(),
            "mask": self.mask.nonzero().flatten().tolist(),
            "mean": self.mean.float().tolist(),
            "contrast": None if self.contrast is None else self.contrast.float().tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Template:
        mask = torch.zeros(data["width"], dtype=torch.bool)
        mask[torch.tensor(data["mask"], dtype=torch.long)] = True
        t = cls.from_fields(mask, torch.tensor(data["mean"], dtype=torch.float32), data)
        if data.get("contrast") is not None:
            t.contrast = torch.tensor(data["contrast"], dtype=torch.float32)
        return t

    def full_vector(self, fill: torch.Tensor | None = None) -> torch.Tensor:
        """A d-vector holding mu on the mask and ``fill`` (default 0) elsewhere."""
        out = torch.zeros(self.mask.numel()) if fill is None else fill.clone().float()
        out[self.mask] = self.mean.float()
        return out


def _draw_train(positions: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    if len(positions) < n_train + 1:
        raise InputError(
            f"PA needs at least {n_train + 1} labelled positions ({n_train} to fit, "
            f"the rest to score), got {len(positions)}"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(positions, size=n_train, replace=False))


def sweep(H, positions, train: np.ndarray, tolerances: Sequence[float] = TOLERANCES) -> list[dict]:
    """Every tolerance's mask size, theta and training-text metrics (S excluded), in one pass."""
    H = _as_tensor(H)
    positions = np.asarray(positions, dtype=np.int64)
    train_t = torch.as_tensor(train, dtype=torch.long)
    mu = H[train_t].mean(0)
    dev = (H[train_t] - mu).abs().max(0).values  # neuron j is in mask(tau) iff dev_j < tau
    D, taus, sizes = deviations(H, mu, dev, tolerances)  # empty masks are skipped
    theta = D[train_t].max(0).values if taus else None
    records = []
    for j, (tau, k) in enumerate(zip(taus, sizes, strict=True)):
        detected = (D[:, j] <= theta[j]).numpy()
        m = detection_metrics(detected, positions, exclude=train)
        records.append({"tau": tau, "n_dims": k, "theta": float(theta[j]), **m})
    return records


def fit(
    H,
    positions,
    n_train: int = 5,
    tolerances: Sequence[float] = TOLERANCES,
    seed: int = 0,
    select: str = "accuracy",
    tau: float | None = None,
) -> Template:
    """Fit a template on ``n_train`` seeded occurrences; pick tau on the rest of this text.

    ``tau`` fixes the tolerance instead of sweeping. ``select`` is ``accuracy`` (the
    paper) or ``balanced`` ((TPR + TNR) / 2).
    """
    if select not in SELECTIONS:
        raise InputError(f"unknown selection '{select}': choose from {', '.join(SELECTIONS)}")
    H = _as_tensor(H)
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    if len(positions) and (positions[0] < 0 or positions[-1] >= len(H)):
        raise InputError(f"positions must lie in 0..{len(H) - 1}")
    train = _draw_train(positions, n_train, seed)
    records = sweep(H, positions, train, [tau] if tau is not None else tolerances)
    if not records:
        raise InputError("every tolerance gives an empty mask; try larger tolerances")
    best = max(records, key=lambda r: (_select_score(r, select), r["tpr"]))
    train_t = torch.as_tensor(train)
    mu = H[train_t].mean(0)
    mask = (H[train_t] - mu).abs().max(0).values < best["tau"]
    template = Template(
        mask=mask,
        mean=mu[mask].clone(),
        theta=best["theta"],
        tau=best["tau"],
        train_positions=train,
        n_occurrences=len(positions),
        meta={
            "sweep": records,
            "select": select,
            "sweep_auc": sweep_auc([r["fpr"] for r in records], [r["tpr"] for r in records]),
        },
    )
    # theta again with the detector's own arithmetic: the sweep's running sums round
    # differently, and every training occurrence must pass its own threshold
    template.theta = float(template.score(H[train_t]).max())
    return template


def deviations(H, mu: torch.Tensor, dev: torch.Tensor, tolerances: Sequence[float]):
    """D(h) of every row for every tolerance's mask at once: ((T, n_live), live taus, sizes).

    Neuron j is in mask(tau) iff dev_j < tau, so masks are nested in tau: neurons are
    sorted by dev and a running sum over that order gives D for every tau in one pass.
    """
    H = _as_tensor(H)
    order = torch.argsort(dev)
    sorted_dev = dev[order]
    ks = [
        int(torch.searchsorted(sorted_dev, torch.tensor(float(t)), side="left")) for t in tolerances
    ]
    live = [(float(t), k) for t, k in zip(tolerances, ks, strict=True) if k > 0]
    if not live:
        return torch.empty(len(H), 0), [], []
    cols = torch.tensor([k - 1 for _, k in live])
    counts = torch.tensor([k for _, k in live], dtype=torch.float32)
    D = torch.cat(
        [
            ((blk[:, order] - mu[order]) ** 2).cumsum(1)[:, cols] / counts
            for blk in H.split(_ROW_BLOCK)
        ]
    )
    return D, [t for t, _ in live], [k for _, k in live]


def youden_threshold(scores, positions) -> tuple[float, float]:
    """The threshold t of the rule "detect when score >= t" that maximises TPR - FPR on
    these labels, and that maximum. Without positives or negatives: (inf, 0)."""
    from sklearn.metrics import roc_curve

    y = _label_vector(len(scores), positions)
    if y.all() or not y.any():
        return float("inf"), 0.0
    fpr, tpr, thr = roc_curve(y, np.asarray(scores, dtype=np.float64))
    best = int(np.argmax(tpr - fpr))
    return float(thr[best]), float(tpr[best] - fpr[best])


def fit_validated(
    H_fit,
    positions,
    H_val,
    val_positions,
    n_train: int = 5,
    tolerances: Sequence[float] = TOLERANCES,
    seed: int = 0,
) -> Template:
    """A template fit on ``n_train`` seeded occurrences of the fitting text, with tau and
    theta chosen on a separate validation text (the largest TPR - FPR there).

    The paper picks tau on the fitting text and sets theta to the largest of the n
    training deviations; ``fit`` does that. Choosing both on other sentences is what
    makes the test-split numbers honest.
    """
    H_fit, H_val = _as_tensor(H_fit), _as_tensor(H_val)
    if H_val.shape[1] != H_fit.shape[1]:
        raise ShapeError("the fitting and validation activations differ in width")
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    train = _draw_train(positions, n_train, seed)
    train_t = torch.as_tensor(train)
    mu = H_fit[train_t].mean(0)
    dev = (H_fit[train_t] - mu).abs().max(0).values
    D, taus, sizes = deviations(H_val, mu, dev, tolerances)
    if not taus:
        raise InputError("every tolerance gives an empty mask; try larger tolerances")
    picks = [youden_threshold(-D[:, j].numpy(), val_positions) for j in range(len(taus))]
    best = max(range(len(taus)), key=lambda j: (picks[j][1], -j))
    mask = dev < taus[best]
    return Template(
        mask=mask,
        mean=mu[mask].clone(),
        theta=-picks[best][0],
        tau=taus[best],
        train_positions=train,
        n_occurrences=len(positions),
        meta={"select": "validation", "validation_youden": picks[best][1]},
    )


# --- baselines ----------------------------------------------------------------------------


def mean_difference(H, positions, exclude=()) -> torch.Tensor:
    """Mean of the labelled rows minus the mean of the other rows (``exclude`` left out):
    the difference-of-means direction, (d,)."""
    H = _as_tensor(H)
    y = _label_vector(len(H), positions)
    keep = np.ones(len(H), dtype=bool)
    keep[np.asarray(exclude, dtype=np.int64)] = False
    pos, neg = torch.as_tensor(y & keep), torch.as_tensor(~y & keep)
    if not pos.any() or not neg.any():
        raise InputError("a difference of means needs labelled and unlabelled rows")
    return H[pos].mean(0) - H[neg].mean(0)


def token_identity(fit_token_ids, fit_positions, token_ids) -> np.ndarray:
    """Detect a position when its token is one found at the word's positions in the
    fitting text. At step 0 this is an exact match of the word's (last) token; at other
    steps, of the tokens that preceded or followed it."""
    seen = np.unique(np.asarray(fit_token_ids)[np.asarray(fit_positions, dtype=np.int64)])
    return np.isin(np.asarray(token_ids), seen)


def logistic_probe(H_fit, positions, exclude=(), seed: int = 0):
    """A class-balanced logistic regression on standardised rows: a fitted sklearn
    pipeline whose ``decision_function`` scores new rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    H = _as_tensor(H_fit).numpy()
    y = _label_vector(len(H), positions)
    keep = np.ones(len(H), dtype=bool)
    keep[np.asarray(exclude, dtype=np.int64)] = False
    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=500, random_state=seed),
    )
    return probe.fit(H[keep], y[keep])


def rate_intervals(metrics: dict) -> dict:
    """``metrics`` with 95% Wilson intervals of its TPR and FPR added."""
    from lucidml.core.metrics import wilson_intervals

    low, high = wilson_intervals(
        [metrics["tp"], metrics["fp"]], [metrics["n_pos"], metrics["n_neg"]]
    )
    return {
        **metrics,
        "tpr_low": float(low[0]),
        "tpr_high": float(high[0]),
        "fpr_low": float(low[1]),
        "fpr_high": float(high[1]),
    }


# --- a dictionary of templates ------------------------------------------------------------

Key = tuple[str, int, int]  # (word, step, layer)


@dataclass
class TemplateBank:
    """Templates per word x step x layer, saved as safetensors (tensors) + JSON (the rest)."""

    templates: dict[Key, Template] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # model, index convention, ...

    def __getitem__(self, key: Key) -> Template:
        if key not in self.templates:
            raise InputError(f"no template for word {key[0]!r}, step {key[1]}, layer {key[2]}")
        return self.templates[key]

    def __setitem__(self, key: Key, t: Template) -> None:
        self.templates[key] = t

    def words(self) -> list[str]:
        return sorted({k[0] for k in self.templates})

    def for_word(self, word: str, step: int = 0) -> dict[int, Template]:
        return {k[2]: t for k, t in self.templates.items() if k[0] == word and k[1] == step}

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save

        from lucidml.core.runs import atomic_write_bytes, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, entries = {}, []
        for i, ((word, step, layer), t) in enumerate(sorted(self.templates.items())):
            tensors[f"{i}.mask"] = t.mask.to(torch.uint8).contiguous()
            tensors[f"{i}.mean"] = t.mean.float().contiguous()
            if t.contrast is not None:
                tensors[f"{i}.contrast"] = t.contrast.float().contiguous()
            entries.append({"id": i, "word": word, "step": step, "layer": layer, **t.fields()})
        atomic_write_bytes(folder / "templates.safetensors", save(tensors))
        write_json(folder / "templates.json", {"info": self.info, "templates": entries})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TemplateBank:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path, data_path = folder / "templates.json", folder / "templates.safetensors"
        if not meta_path.is_file() or not data_path.is_file():
            raise InputError(
                f"{folder} holds no template bank (templates.json and templates.safetensors)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path} is not valid JSON (line {exc.lineno})") from None
        except UnicodeDecodeError:
            raise InputError(f"{meta_path} is not UTF-8 text") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("templates"), list):
            raise InputError(f"{meta_path} has no 'templates' list: it was not written by PA")
        try:
            tensors = load_file(str(data_path))
        except Exception:  # safetensors raises its own error type for truncated headers
            raise InputError(
                f"{data_path} is not a readable safetensors file (truncated or corrupt)"
            ) from None
        bank = cls(info=meta.get("info", {}))
        for e in meta["templates"]:
            try:
                i = e["id"]
                mask, mean = tensors[f"{i}.mask"], tensors[f"{i}.mean"]
                key = (e["word"], e["step"], e["layer"])
                t = Template.from_fields(mask, mean, e)
                t.contrast = tensors.get(f"{i}.contrast")
            except (KeyError, TypeError):
                raise InputError(
                    f"{meta_path} and {data_path.name} do not match: an entry lacks its "
                    "word, step, layer, id, theta, tau or tensors"
                ) from None
            if t.n_dims != t.mean.numel() or (
                t.contrast is not None and t.contrast.numel() != t.mask.numel()
            ):
                raise InputError(f"{data_path} holds tensors of inconsistent sizes")
            bank[key] = t
        return bank
