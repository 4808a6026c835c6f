"""The DD-Ranking protocol: students on D_syn, random subsets D_rdm and D_real -> LRS, ARS.

``Evaluator(data, cfg).fit()`` prepares the splits, ZCA and the cached real-data models;
``.score(x_syn, y_syn)`` trains every condition's students and returns per-run rows and
their mean and std.

Students are trained in groups of one run: ``train_syn(sources, run)`` trains, for each
synthetic condition (hard labels; the method's regime with and without augmentation),
the learning-rate grid of every given set together in one batched group;
``train_random(counts, run)`` trains the run's random real subset. A group of one run
has the same members however the runs are split over processes, which matters because
a student's weights in the batched engine depend, by float rounding, on the size of its
group (measured in docs/distill.md). Random-subset conditions depend only on the run and
the images per class, so an evaluator reuses them across the sets it scores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lucidml import __version__
from lucidml.core.config import resolve_device
from lucidml.core.distributed import is_main_process, wait_for
from lucidml.core.progress import get_logger, track
from lucidml.core.runs import derive_seed, digest
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
from lucidml.distill.losses import LOSSES, LOSSES_READING_LABELS
from lucidml.distill.models import build_model
from lucidml.distill.scores import (
    augmentation_robust_score,
    label_robust_score,
    paired_difference,
)
from lucidml.distill.teachers import TeacherEnsemble, cache_dir, load_or_train, load_teacher_files
from lucidml.distill.trainer import Member, pick_engine, select
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
# EvalConfig fields that do not change a student: they only combine accuracies into scores,
# set how many runs there are, or name a device (whose kind is keyed separately)
_NOT_IN_CELLS = ("num_eval", "lrs_lambda", "ars_lambda", "device")
LOG = get_logger("distill")

Source = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (x, y, stored soft labels)
Condition = tuple[str, bool, tuple[float, ...]]  # (labels, augmentation, learning rates)


class Evaluator:
    """Scores distilled sets of one dataset under one evaluation recipe.

    ``device`` (default: the config's, ``auto``) is resolved here, before anything is
    trained or written; an unavailable device raises ``InputError``.
    """

    def __init__(
        self,
        data: ImageDataset,
        cfg: EvalConfig | None = None,
        teacher_files: list | None = None,
        device: str | None = None,
    ):
        self.data, self.cfg = data, cfg or EvalConfig()
        self.device = resolve_device(device if device is not None else self.cfg.device)
        self.teacher_files = teacher_files
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
        self.data_key = data_hash(data)
        return self

    def real_key(self) -> dict:
        """What the real-data models (Acc(D_real) and the teachers) depend on: everything
        ``teachers.train_real`` reads, so two recipes never share a cached teacher."""
        cfg, aug = self.cfg, self.cfg.augment
        return {
            "data": self.data_key,
            "split": cfg.selection,
            "val_fraction": cfg.val_fraction,
            "model": cfg.model.model_dump(),
            "real": cfg.real.model_dump(),
            # the augmentation the real recipe uses (DSA ops and strategy, ZCA; no mixing)
            "dsa": aug.dsa_strengths() if aug.dsa else None,
            "dsa_strategy": aug.dsa_strategy if aug.dsa else None,
            "zca": aug.zca_eps if aug.zca else None,
            # batched and sequential training round differently
            "engine": pick_engine(cfg.engine, self.model_fn).__name__,
            "teachers": cfg.num_teachers,
            "seed": cfg.seed,
        }

    def fit(self) -> Evaluator:
        """Split the data, then load (or train and cache) the real-data models. Under a
        multi-process launch the main process trains them once and the others load them."""
        if not hasattr(self, "train_x"):
            self.split()
        key = self.real_key()
        folder = cache_dir(self.data.name, key)
        if not is_main_process():
            wait_for([folder / "meta.json"])
        real_models, real_accs = load_or_train(
            folder, key, self.train_x, self.train_y, self.test, self.model_fn, self.cfg, self.device
        )
        self.acc_real_hard = float(np.mean(real_accs))
        if not self.teacher_files:
            self.teachers = real_models
        self.teacher = TeacherEnsemble(self.teachers).to(self.device)
        self.engine = pick_engine(self.cfg.engine, self.model_fn)
        self._fitted = True
        return self

    def cell_basis(self) -> dict:
        """Everything besides the training set and the run that determines a student's
        selected accuracy: the recipe, the data, the teachers, the kind of device and the
        lucidml version. Keys stored cells (``cells.py``)."""
        recipe = self.cfg.model_dump(mode="json", exclude=set(_NOT_IN_CELLS))
        teachers = None  # the real-data models: fixed by the recipe and the data
        if self.teacher_files:
            teachers = [digest(*t.state_dict().values()) for t in self.teachers]
        return {
            "recipe": recipe,
            "data": self.data_key,
            "train_index": digest(self.train_index),
            "teacher_files": teachers,
            "device": self.device.split(":")[0],
            "version": __version__,
        }

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
            return soft if soft is not None else self.teacher(x.to(self.device)).cpu()
        return F.one_hot(y, self.data.n_classes).float()

    def syn_conditions(self) -> dict[str, Condition]:
        """The conditions a distilled set is trained in (equal ones are trained once)."""
        cfg = self.cfg
        grid = tuple(cfg.lr_grid)
        syn_grid = (cfg.syn_lr,) if cfg.labels == "soft" and cfg.syn_lr else grid
        aug = self._augmenter(True) is not None  # without augmentation, aug = no-aug
        return {
            "syn_hard": ("hard", aug, grid),
            "syn": (cfg.labels, aug, syn_grid),
            "syn_noaug": (cfg.labels, False, syn_grid),
        }

    def random_conditions(self) -> dict[str, Condition]:
        cfg = self.cfg
        aug = self._augmenter(True) is not None
        return {
            "rdm": (cfg.labels, aug, tuple(cfg.lr_grid)),
            "rdm_noaug": (cfg.labels, False, tuple(cfg.lr_grid)),
        }

    def _train_group(self, condition: Condition, sources: list[Source], run: int) -> list[dict]:
        """Train one condition of run ``run`` for several training sets in one batched group;
        returns, per set, the selected checkpoint (``trainer.select``)."""
        cfg, seed = self.cfg, derive_seed(self.cfg.seed, run)
        labels, aug, grid = condition
        loss_name = "ce" if labels == "hard" else cfg.loss
        k = self.data.n_classes
        members = [
            Member(
                x,
                self._targets(x, y, labels, stored),
                lr,
                seed,
                # MSE+CE's cross-entropy term is against the ground truth, not the teacher
                labels=F.one_hot(y, k).float() if loss_name in LOSSES_READING_LABELS else None,
            )
            for x, y, stored in sources
            for lr in grid
        ]
        soft_m = labels == "soft" and cfg.soft_label_mode == "M"
        loss_fn = LOSSES[loss_name]
        LOG.info(
            "run %d: %d students, %s labels, %s",
            run,
            len(members),
            labels,
            "augmented" if aug else "no augmentation",
        )
        fitted = self.engine(
            members,
            self.model_fn,
            cfg.recipe,
            lambda s, t, labels=None: loss_fn(s, t, cfg, labels),
            self._augmenter(aug),
            self.teacher if soft_m else None,
            self.test,
            self.val,
            self.device,
        )
        n = len(grid)
        return [select(fitted[i : i + n], cfg.selection) for i in range(0, len(fitted), n)]

    def _train_conditions(self, conditions: dict[str, Condition], sources, run) -> list[dict]:
        picks: dict[str, list] = {}
        for name, condition in conditions.items():
            same = next((k for k in picks if conditions[k] == condition), None)
            picks[name] = picks[same] if same else self._train_group(condition, sources, run)
        return [{name: picks[name][i] for name in conditions} for i in range(len(sources))]

    def train_syn(self, sources: list[Source], run: int) -> list[dict[str, dict]]:
        """Every synthetic condition of run ``run`` for prepared (x, y, soft) sources, all
        sources in one group per condition: per source, {condition: selected checkpoint}."""
        return self._train_conditions(self.syn_conditions(), sources, run)

    def train_random(self, counts: dict[int, int], run: int) -> dict[str, dict]:
        """The random-subset conditions of run ``run`` ({condition: selected checkpoint})."""
        key = (tuple(sorted(counts.items())), run)
        if key not in self._rdm_cache:
            idx = random_subset(self.train_y, counts, derive_seed(self.cfg.seed, run))
            source = (self.train_x[idx], self.train_y[idx], None)
            self._rdm_cache[key] = self._train_conditions(self.random_conditions(), [source], run)[
                0
            ]
        return self._rdm_cache[key]

    def accuracy(
        self, x: torch.Tensor, y: torch.Tensor, labels: str = "hard", aug: bool = True
    ) -> list[float]:
        """Selected test accuracy of each run's student trained on (x, y) in one condition."""
        if not self._fitted:
            self.fit()
        x, y, _ = check_distilled(x, y, self.data)
        condition = (labels, aug, tuple(self.cfg.lr_grid))
        source = (self.prepare(x), y, None)
        runs = range(self.cfg.num_eval)
        return [self._train_group(condition, [source], r)[0]["acc"] for r in runs]

    def score(
        self, x_syn: torch.Tensor, y_syn: torch.Tensor, soft_labels: torch.Tensor | None = None
    ) -> dict:
        """LRS and ARS of a distilled set (images in the dataset's [0, 1] pixel space)."""
        return self.score_many({"syn": (x_syn, y_syn, soft_labels)})["syn"]

    def check(self, sets: dict[str, tuple]) -> dict[str, Source]:
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

    def sources(self, checked: dict[str, Source]) -> list[Source]:
        """Checked sets as student inputs (ZCA applied when enabled)."""
        return [(self.prepare(x), y, soft) for x, y, soft in checked.values()]

    def score_many(self, sets: dict[str, tuple]) -> dict[str, dict]:
        """Score several distilled sets with equal images per class, training each run's
        condition for all sets in one batched group. ``sets`` maps a name to (x, y) or
        (x, y, soft_labels)."""
        checked = self.check(sets)
        if not self._fitted:
            self.fit()
        counts = class_counts(next(iter(checked.values()))[1])
        sources = self.sources(checked)
        syn: dict[str, list] = {name: [] for name in checked}
        rdm = []
        for r in track(range(self.cfg.num_eval), "runs"):
            for name, picks in zip(checked, self.train_syn(sources, r), strict=True):
                syn[name].append(picks)
            rdm.append(self.train_random(counts, r))
        return self.results(counts, syn, rdm)

    def results(self, counts: dict[int, int], syn: dict[str, list], rdm: list) -> dict[str, dict]:
        """Per-set rows and summaries from the selected checkpoints of every run:
        ``syn[name][r]`` and ``rdm[r]`` map a condition to its pick."""
        cfg = self.cfg
        out = {}
        for name, per_run in syn.items():
            rows = [
                self._row(r, picks | rdm_picks)
                for r, (picks, rdm_picks) in enumerate(zip(per_run, rdm, strict=True))
            ]
            out[name] = (
                summarize(rows)
                | paired_differences(rows, cfg.labels)
                | {
                    "labels": cfg.labels,
                    "soft_label_mode": cfg.soft_label_mode if cfg.labels == "soft" else None,
                    "ipc": counts,
                    "num_eval": cfg.num_eval,
                    "selection": cfg.selection,
                    "optimistic": cfg.selection == "test",
                    "data_hash": self.data_key,
                    "recipe_hash": recipe_hash(cfg),
                    "version": __version__,
                    "runs": rows,
                }
            )
        return out

    def _row(self, r: int, picks: dict[str, dict]) -> dict:
        """Run r's row from its selected checkpoints ({condition: pick}): accuracies,
        scores, and the learning rate and epoch selected in each condition."""
        cfg = self.cfg
        acc = {k: v["acc"] for k, v in picks.items()}
        lrs = label_robust_score(
            self.acc_real_hard, acc["syn_hard"], acc["syn"], acc["rdm"], lam=cfg.lrs_lambda
        )
        ars = augmentation_robust_score(
            acc["syn"], acc["rdm"], acc["syn_noaug"], acc["rdm_noaug"], gamma=cfg.ars_lambda
        )
        return {
            "run": r,
            "seed": derive_seed(cfg.seed, r),
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
            # the paired differences syn - rdm of this run (gap_aug is IOR)
            "gap_aug": ars["gap_aug"],
            "gap_noaug": ars["gap_noaug"],
            # per condition (syn_hard, syn, syn_noaug, rdm, rdm_noaug)
            **{f"lr_{c}": pick["lr"] for c, pick in picks.items()},
            **{f"epoch_{c}": pick["epoch"] for c, pick in picks.items()},
            "selection": cfg.selection,
            "optimistic": cfg.selection == "test",
        }


def paired_differences(rows: list[dict], labels: str) -> dict:
    """The per-run differences a reviewer checks, paired over the runs' seeds, each with
    its mean, 95% Student-t interval and n: ``syn_minus_rdm`` with augmentation (IOR) and
    without, and, under soft labels, ``soft_minus_hard`` (the set's soft-label accuracy
    minus its hard-label one; None under hard labels, where the two are one condition)."""

    def column(key: str) -> list[float]:
        return [r[key] for r in rows]

    return {
        "syn_minus_rdm": {
            "aug": paired_difference(column("acc_syn_aug"), column("acc_rdm_aug")),
            "noaug": paired_difference(column("acc_syn_noaug"), column("acc_rdm_noaug")),
        },
        "soft_minus_hard": paired_difference(column("acc_syn"), column("acc_syn_hard"))
        if labels == "soft"
        else None,
    }


def summarize(rows: list[dict]) -> dict:
    """Mean and std over runs of every score and accuracy. The std is the population
    std (ddof 0), the spread of the runs shown; the intervals of ``paired_differences``
    use the sample std."""
    out = {}
    for key in ROW_KEYS:
        values = np.array([r[key] for r in rows], dtype=float)
        out[f"{key}_mean"], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def recipe_hash(cfg: EvalConfig) -> str:
    """A short hash of the recipe (the device it ran on is recorded in ``env`` instead)."""
    return digest(cfg.model_dump(mode="json", exclude={"device"}))


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
