"""Real-data models: they give Acc(D_real, hard) and serve as the soft-label teachers.

Trained with the fixed real recipe on the training split (minus the validation split),
one per teacher seed, together in one batched group, and cached under
``lucid_home()/distill/teachers/<dataset>-<hash>/`` keyed by the data, model and recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lucidml.core.progress import get_logger
from lucidml.core.runs import derive_seed, digest, read_json, save_torch, write_json
from lucidml.core.zoo import lucid_home
from lucidml.distill.augment import DSA, Augmenter
from lucidml.distill.losses import cross_entropy
from lucidml.distill.trainer import Member, pick_engine
from lucidml.errors import InputError, ModelError


class TeacherEnsemble(nn.Module):
    """Mean logits of several teachers, always in eval mode and without gradients."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # a teacher never switches to training mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x) for t in self.teachers]).mean(0)


def cache_dir(dataset: str, key: dict) -> Path:
    """The cache folder of the real-data models trained from ``key`` (``Evaluator.real_key``).
    Its name is a ``core.runs.digest``, the scheme their seeds (``derive_seed``) come from
    too, so a change of that scheme moves the folder: teachers trained under other seeds
    are never reused."""
    return lucid_home() / "distill" / "teachers" / f"{dataset}-{digest(key)}"


def train_real(x, y, test, model_fn: Callable[[], nn.Module], cfg, seeds: list[int], device):
    """Train one real-data model per seed on ``device``; return (CPU models, final test
    accuracies)."""
    k = int(y.max()) + 1
    aug = cfg.augment
    augment = Augmenter(DSA(aug.dsa_strengths(), aug.dsa_strategy)) if aug.dsa else None
    members = [Member(x, F.one_hot(y, k).float(), cfg.real.lr, s) for s in seeds]
    engine = pick_engine(cfg.engine, model_fn)
    fitted = engine(
        members,
        model_fn,
        cfg.real,
        lambda s, t: cross_entropy(s, t, None),
        augment,
        None,
        test,
        None,
        device,
    )
    models = []
    for f in fitted:
        model = model_fn()
        model.load_state_dict(f.state)
        models.append(model.eval())
    return models, [f.history[-1]["test_acc"] for f in fitted]


def load_or_train(folder: Path, key: dict, x, y, test, model_fn, cfg, device: str):
    """Cached real models (trained on first use, on ``device``) and their test accuracies."""
    meta = folder / "meta.json"
    if meta.is_file():
        info = read_json(meta)
        models = []
        for i in range(len(info["test_acc"])):
            model = model_fn()
            model.load_state_dict(torch.load(folder / f"teacher{i}.pt", weights_only=True))
            models.append(model.eval())
        return models, info["test_acc"]
    get_logger("distill").info(
        "training %d real-data model(s) on %s (cached in %s)", cfg.num_teachers, device, folder
    )
    seeds = [derive_seed(cfg.seed, "teacher", i) for i in range(cfg.num_teachers)]
    models, accs = train_real(x, y, test, model_fn, cfg, seeds, device)
    for i, model in enumerate(models):
        save_torch(folder / f"teacher{i}.pt", model.state_dict())
    write_json(meta, {"key": key, "test_acc": accs})  # written last: marks the cache complete
    return models, accs


def load_teacher_files(paths: list[str | Path], model_fn: Callable[[], nn.Module]):
    """User teacher checkpoints (state dicts of the evaluation model)."""
    models = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"teacher checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt files fail in many ways inside torch.load
            raise InputError(
                f"cannot read teacher checkpoint {path}: {type(exc).__name__}"
            ) from None
        model = model_fn()
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError):
            raise ModelError(
                f"teacher checkpoint {path} does not fit the evaluation model "
                "(expected a state dict of the configured --model)"
            ) from None
        models.append(model.eval())
    return models
