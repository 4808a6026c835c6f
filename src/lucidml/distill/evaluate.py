"""The DD-Ranking protocol: students on D_syn, random subsets D_rdm and D_real -> LRS, ARS.

``Evaluator(data, cfg).fit()`` prepares the splits, ZCA and the cached real-data models;
``.score(x_syn, y_syn)`` trains every condition's students (LR grid x ``num_eval`` runs
in one batched group per condition) and returns per-run rows and their mean and std.
Random-subset conditions depend only on the seed and the images per class, so an
evaluator reuses them across the distilled sets it scores (a leaderboard pays once).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lucidml import __version__
from lucidml.core.zoo import ImageDataset
from lucidml.distill.augment import DSA, ZCA, Augmenter
from lucidml.distill.config import EvalConfig
from lucidml.distill.data import (
    check_distilled,
    class_counts,
    data_hash,
    random_subset,
    stratified_split,
)
from lucidml.distill.losses import LOSSES
from lucidml.distill.models import build_model
from lucidml.distill.scores import augmentation_robust_score, label_robust_score
from lucidml.distill.teachers import TeacherEnsemble, load_or_train, load_teacher_files
from lucidml.distill.trainer import Member, derive_seed, pick_engine, select
from lucidml.errors import InputError

ROW_KEYS = (
    "acc_real_hard",
    "acc_syn_hard",
    "acc_syn",
    "acc_rdm",
    "acc_syn_aug",
    "acc_rdm_aug",
    "acc_syn_noaug",
    "acc_rdm_noaug",
    "hlr",
    "ior",
    "lrs",
    "ars",
)


class Evaluator:
    """Scores distilled sets of one dataset under one evaluation recipe."""

    def __init__(
        self,
        data: ImageDataset,
        cfg: EvalConfig | None = None,
        teacher_files: list | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.data, self.cfg = data, cfg or EvalConfig()
        self.teacher_files, self.log = teacher_files, log or (lambda msg: None)
        self._rdm_cache: dict = {}
        self._fitted = False

    def model_fn(self) -> torch.nn.Module:
        c, h = self.data.train_x.shape[1], self.data.train_x.shape[-1]
        m = self.cfg.model
        return build_model(m.name, c, self.data.n_classes, h, **m.kwargs())

    def split(self) -> Evaluator:
        """Cheap preparation: model check, teacher files, validation split and ZCA."""
        cfg, data = self.cfg, self.data
        self.model_fn()  # an unknown model name fails here, before any training
        if self.teacher_files:
            self.teachers = load_teacher_files(self.teacher_files, self.model_fn)
        if cfg.selection == "val":
            kept, held = stratified_split(data.train_y, cfg.val_fraction, cfg.seed)
        else:
            kept, held = torch.arange(len(data.train_y)), None
        self.zca = ZCA(cfg.augment.zca_eps).fit(data.train_x[kept]) if cfg.augment.zca else None
        self.train_index = kept
        self.train_x, self.train_y = self.prepare(data.train_x[kept]), data.train_y[kept]
        self.val = None if held is None else (self.prepare(data.train_x[held]), data.train_y[held])
        self.test = (self.prepare(data.test_x), data.test_y)
        return self

    def fit(self) -> Evaluator:
        """Split the data, then load (or train and cache) the real-data models."""
        cfg, data = self.cfg, self.data
        if not hasattr(self, "train_x"):
            self.split()
        key = {
            "data": data_hash(data),
            "split": cfg.selection,
            "val_fraction": cfg.val_fraction,
            "model": cfg.model.model_dump(),
            "real": cfg.real.model_dump(),
            "dsa": cfg.augment.dsa_strengths() if cfg.augment.dsa else None,  # what the real
            "zca": cfg.augment.zca_eps if cfg.augment.zca else None,  # recipe uses, no mixing
            "teachers": cfg.num_teachers,
            "seed": cfg.seed,
        }
        real_models, real_accs = load_or_train(
            data.name, key, self.train_x, self.train_y, self.test, self.model_fn, cfg, self.log
        )
        self.acc_real_hard = float(np.mean(real_accs))
        if not self.teacher_files:
            self.teachers = real_models
        self.teacher = TeacherEnsemble(self.teachers).to(cfg.device)
        self.engine = pick_engine(cfg.engine, self.model_fn)
        self.data_key = key["data"]
        self._fitted = True
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessing shared by every student input (ZCA when enabled)."""
        return self.zca.transform(x) if getattr(self, "zca", None) is not None else x

    def _augmenter(self, aug: bool) -> Augmenter | None:
        a = self.cfg.augment
        if not aug:
            return None
        augmenter = Augmenter(
            DSA(a.dsa_strengths(), a.dsa_strategy) if a.dsa else None, a.mix, a.mix_strength
        )
        return None if augmenter.identity else augmenter

    def _targets(self, x, y, labels: str, soft: torch.Tensor | None) -> torch.Tensor:
        if labels == "soft" and self.cfg.soft_label_mode == "S":
            # Mode S: stored teacher logits, computed without augmentation when not given.
            return soft if soft is not None else self.teacher(x.to(self.cfg.device)).cpu()
        return F.one_hot(y, self.data.n_classes).float()

    def _train_cell(self, labels: str, aug: bool, sources: list, grid: list[float], runs):
        """Train one (labels, augmentation) cell for several training sets at once.

        ``sources`` holds (x, y, stored soft labels) per set, or None for the run's random
        subset. Returns, per set, the selected accuracy of each run.
        """
        cfg = self.cfg
        members = []
        for source in sources:
            for seed in runs:
                if source is None:
                    idx = random_subset(self.train_y, self._counts, seed)
                    x, y, stored = self.train_x[idx], self.train_y[idx], None
                else:
                    x, y, stored = source
                targets = self._targets(x, y, labels, stored)
                members += [Member(x, targets, lr, seed) for lr in grid]
        soft_m = labels == "soft" and cfg.soft_label_mode == "M"
        loss_fn = LOSSES["ce" if labels == "hard" else cfg.loss]
        start = time.time()
        fitted = self.engine(
            members,
            self.model_fn,
            cfg.recipe,
            lambda s, t: loss_fn(s, t, cfg),
            self._augmenter(aug),
            self.teacher if soft_m else None,
            self.test,
            self.val,
            cfg.device,
        )
        self.log(
            f"  {labels} labels, {'aug' if aug else 'no aug'}: {len(members)} students "
            f"in {time.time() - start:.1f}s"
        )
        picks = [
            select(fitted[i : i + len(grid)], cfg.selection)
            for i in range(0, len(fitted), len(grid))
        ]
        return [picks[i : i + len(runs)] for i in range(0, len(picks), len(runs))]

    def _random_cell(self, labels: str, aug: bool, runs) -> list[dict]:
        aug = aug and self._augmenter(True) is not None
        key = (labels, aug, tuple(sorted(self._counts.items())))
        if key not in self._rdm_cache:
            self._rdm_cache[key] = self._train_cell(labels, aug, [None], self.cfg.lr_grid, runs)[0]
        return self._rdm_cache[key]

    def accuracy(
        self, x: torch.Tensor, y: torch.Tensor, labels: str = "hard", aug: bool = True
    ) -> list[float]:
        """Selected test accuracy of each run's student trained on (x, y) in one condition."""
        if not self._fitted:
            self.fit()
        x, y, _ = check_distilled(x, y, self.data)
        runs = [derive_seed(self.cfg.seed, r) for r in range(self.cfg.num_eval)]
        picks = self._train_cell(labels, aug, [(self.prepare(x), y, None)], self.cfg.lr_grid, runs)
        return [p["acc"] for p in picks[0]]

    def score(
        self, x_syn: torch.Tensor, y_syn: torch.Tensor, soft_labels: torch.Tensor | None = None
    ) -> dict:
        """LRS and ARS of a distilled set (images in the dataset's [0, 1] pixel space)."""
        return self.score_many({"syn": (x_syn, y_syn, soft_labels)})["syn"]

    def check(self, sets: dict[str, tuple]) -> dict[str, tuple]:
        """Validate sets of (x, y) or (x, y, soft_labels) against the data; raise before any
        training. Returns them as checked (x, y, soft) triples."""
        if not hasattr(self, "train_x"):
            self.split()
        checked = {}
        for name, item in sets.items():
            x, y, soft = (*item, None)[:3]
            checked[name] = check_distilled(x, y, self.data, soft)
        counts = [class_counts(y) for _, y, _ in checked.values()]
        if any(c != counts[0] for c in counts):
            raise InputError("distilled sets scored together must have equal images per class")
        for c, n in counts[0].items():
            have = int((self.train_y == c).sum())
            if n > have:
                raise InputError(
                    f"IPC {n} for class {c} is larger than the {have} training "
                    "images that class has"
                )
        return checked

    def score_many(self, sets: dict[str, tuple]) -> dict[str, dict]:
        """Score several distilled sets with equal images per class, training each cell's
        students for all sets in one batched group. ``sets`` maps a name to
        (x, y) or (x, y, soft_labels)."""
        checked = self.check(sets)
        if not self._fitted:
            self.fit()
        cfg = self.cfg
        first = class_counts(next(iter(checked.values()))[1])
        self._counts = first
        sources = [(self.prepare(x), y, soft) for x, y, soft in checked.values()]
        runs = [derive_seed(cfg.seed, r) for r in range(cfg.num_eval)]
        regime = cfg.labels
        syn_grid = [cfg.syn_lr] if regime == "soft" and cfg.syn_lr else cfg.lr_grid
        aug = self._augmenter(True) is not None  # without augmentation, aug = no-aug
        syn_cells = {
            "syn_hard": ("hard", aug, cfg.lr_grid),
            "syn": (regime, aug, syn_grid),
            "syn_noaug": (regime, False, syn_grid),
        }
        picks: dict[str, list] = {}
        for name, cell in syn_cells.items():
            same = next((k for k, v in syn_cells.items() if v == cell and k in picks), None)
            picks[name] = (
                picks[same] if same else self._train_cell(*cell[:2], sources, cell[2], runs)
            )
        rdm = self._random_cell(regime, True, runs)
        rdm_noaug = self._random_cell(regime, False, runs)
        results = {}
        for i, name in enumerate(checked):
            rows = []
            for r, seed in enumerate(runs):
                acc = {k: picks[k][i][r]["acc"] for k in syn_cells}
                acc["rdm"], acc["rdm_noaug"] = rdm[r]["acc"], rdm_noaug[r]["acc"]
                rows.append(self._row(r, seed, acc, picks["syn"][i][r]["lr"], rdm[r]["lr"]))
            results[name] = summarize(rows) | {
                "labels": regime,
                "soft_label_mode": cfg.soft_label_mode if regime == "soft" else None,
                "ipc": first,
                "num_eval": cfg.num_eval,
                "selection": cfg.selection,
                "optimistic": cfg.selection == "test",
                "data_hash": self.data_key,
                "recipe_hash": recipe_hash(cfg),
                "version": __version__,
                "runs": rows,
            }
        return results

    def _row(self, r: int, seed: int, acc: dict, lr_syn: float, lr_rdm: float) -> dict:
        cfg = self.cfg
        lrs = label_robust_score(
            self.acc_real_hard, acc["syn_hard"], acc["syn"], acc["rdm"], lam=cfg.lrs_lambda
        )
        ars = augmentation_robust_score(
            acc["syn"], acc["rdm"], acc["syn_noaug"], acc["rdm_noaug"], gamma=cfg.ars_lambda
        )
        return {
            "run": r,
            "seed": seed,
            "acc_real_hard": self.acc_real_hard,
            "acc_syn_hard": acc["syn_hard"],
            "acc_syn": acc["syn"],
            "acc_rdm": acc["rdm"],
            "acc_syn_aug": acc["syn"],
            "acc_rdm_aug": acc["rdm"],
            "acc_syn_noaug": acc["syn_noaug"],
            "acc_rdm_noaug": acc["rdm_noaug"],
            "hlr": lrs["hlr"],
            "ior": lrs["ior"],
            "lrs": lrs["lrs"],
            "ars": ars["ars"],
            "lr_syn": lr_syn,
            "lr_rdm": lr_rdm,
            "selection": cfg.selection,
            "optimistic": cfg.selection == "test",
        }


def summarize(rows: list[dict]) -> dict:
    """Mean and (population) std over runs of every score and accuracy."""
    out = {}
    for key in ROW_KEYS:
        values = np.array([r[key] for r in rows], dtype=float)
        out[f"{key}_mean"], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def recipe_hash(cfg: EvalConfig) -> str:
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate(
    syn_x: torch.Tensor,
    syn_y: torch.Tensor,
    data: ImageDataset,
    cfg: EvalConfig | None = None,
    soft_labels: torch.Tensor | None = None,
) -> dict:
    """Score one distilled set: ``lrs_mean, lrs_std, ars_mean, ars_std, hlr_mean, ior_mean``,
    every underlying accuracy (mean and std), and one row per run."""
    return Evaluator(data, cfg).score(syn_x, syn_y, soft_labels)
