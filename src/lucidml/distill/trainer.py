"""Train many small students at once.

A *group* is a set of students that share an architecture, a recipe and a training-set
size but may differ in data, learning rate and seed (e.g. the LR grid x ``num_eval``
runs of one condition). ``train_batched`` stacks their parameters with
``torch.func.stack_module_state`` and takes every optimiser step for all of them with one
grouped (or ``vmap``-ed) forward/backward; BatchNorm members keep their own batch statistics
and running buffers (``models.stacked_forward``). ``train_sequential`` trains them one by one with
``lucidml.core.train.fit_classifier``. Each member owns its random streams (init, batch
order, augmentation), so both engines consume identical random numbers and agree up to
floating-point rounding.

A group larger than ``recipe.max_group`` (default: as many members as keep the largest
activation of a training batch under ``ACTIVATION_BUDGET``) is trained as consecutive
groups of at most that many members (``group_sizes``).

Both engines take ``device``: members' data, the test and validation splits and the
stacked parameters are moved there once; random draws stay on CPU generators, so a seed
gives the same draws on every device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import stack_module_state

from lucidml.core.progress import track
from lucidml.core.runs import derive_seed
from lucidml.core.train import TrainConfig, fit_classifier
from lucidml.distill.config import RecipeConfig
from lucidml.distill.models import can_stack, stacked_forward
from lucidml.errors import ConfigError

Split = tuple[torch.Tensor, torch.Tensor]
# The largest activation (all members, one float32 training batch) a default group may hold:
# autograd keeps every layer's activation, so a group's peak memory is several times this.
ACTIVATION_BUDGET = 2 * 2**30


@dataclass
class Member:
    """One student: its training images, (N, K) targets, learning rate and seed.

    ``labels``, the ground-truth labels as (N, K) one-hot rows, is optional: when given,
    augmentation mixes them exactly like the targets and the loss receives them as
    ``labels=`` (MSE+CE's cross-entropy term reads them; a teacher never replaces them).
    """

    x: torch.Tensor
    targets: torch.Tensor
    lr: float
    seed: int
    labels: torch.Tensor | None = None


def _packed(m: Member) -> torch.Tensor:
    """Targets and labels side by side, so one augmentation call mixes both with one λ."""
    return m.targets if m.labels is None else torch.cat([m.targets, m.labels], -1)


def _unpacked(t: torch.Tensor, width: int, with_labels: bool):
    """(targets, labels or None) from a packed batch whose targets are ``width`` wide."""
    return (t[..., :width], t[..., width:]) if with_labels else (t, None)


@dataclass
class Fitted:
    """A trained student's evaluation history: dicts of epoch, val_acc, test_acc."""

    lr: float
    seed: int
    history: list[dict] = field(default_factory=list)
    # final weights (the sequential engine with a val split keeps its best-val checkpoint)
    state: dict[str, torch.Tensor] | None = None


def init_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_fn()


def augment_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, "augment"))


def lr_factor(recipe: RecipeConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base LR at optimiser step ``step`` (0-based)."""
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "step":
        every = (recipe.step_every or max(recipe.epochs // 2, 1)) * steps_per_epoch
        return 0.1 ** (step // every)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if recipe.schedule == "cosine_ref":  # the reference's per-epoch curve, ending at lr / 2
        return 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / (2 * recipe.epochs)))
    return 1.0


def largest_activation(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """The most elements any layer of ``model`` outputs for one image of ``image_shape``."""
    probe = copy.deepcopy(model).eval()  # eval: the probe must not move BatchNorm buffers
    sizes = []
    for m in probe.modules():
        if not list(m.children()):
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
    with torch.no_grad():
        probe(torch.zeros(1, *image_shape, dtype=next(probe.parameters()).dtype))
    return max(sizes, default=1)


def default_max_group(
    model: nn.Module, image_shape: tuple[int, ...], batch_size: int, budget: int = ACTIVATION_BUDGET
) -> int:
    """Members per group such that the largest float32 activation of a training batch of
    ``batch_size`` images, over all members, stays within ``budget`` bytes."""
    per_member = largest_activation(model, image_shape) * batch_size * 4
    return max(1, budget // per_member)


def group_sizes(n: int, max_group: int) -> list[int]:
    """Sizes of the consecutive groups ``n`` members are trained in: at most ``max_group``."""
    return [min(max_group, n - start) for start in range(0, n, max_group)]


def _evaluate_stacked(base, params, buffers, x, y, chunk=512) -> torch.Tensor:
    """Accuracy of every stacked member on (x, y), which live on the members' device."""
    correct = torch.zeros(len(next(iter(params.values()))), device=x.device)
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            pred = stacked_forward(base, params, x[i : i + chunk], buffers).argmax(-1)
            correct += (pred == y[i : i + chunk]).sum(1)
    return (correct / max(len(x), 1)).cpu()


@torch.no_grad()
def _checkpoint(base, params, buffers, test: Split, val: Split | None, best_val: torch.Tensor):
    """Each member's accuracies at an evaluation epoch.

    With a validation split, ``select`` can only choose a member's checkpoint whose
    validation accuracy beats all of that member's earlier ones, so the test accuracy is
    computed only there (for those members, as one smaller group): the test set is most
    of the evaluation cost. ``best_val`` is updated in place.
    """
    if val is None:
        return [{"test_acc": float(a)} for a in _evaluate_stacked(base, params, buffers, *test)]
    val_acc = _evaluate_stacked(base, params, buffers, *val)
    improved = torch.nonzero(val_acc > best_val).flatten()
    best_val.copy_(torch.maximum(best_val, val_acc))
    records = [{"val_acc": float(a)} for a in val_acc]
    if len(improved):
        index = improved.to(test[0].device)
        subset = {k: v[index] for k, v in params.items()}
        subset_buffers = {k: v[index] for k, v in buffers.items()}
        accs = _evaluate_stacked(base, subset, subset_buffers, *test)
        for g, acc in zip(improved.tolist(), accs, strict=True):
            records[g]["test_acc"] = float(acc)
    return records


def _on(device: str, split: Split | None) -> Split | None:
    return None if split is None else (split[0].to(device), split[1].to(device))


class _Optimizer:
    """SGD (momentum, weight decay), Adam and AdamW over stacked parameters with one LR each.

    Written out because torch.optim has one LR per parameter group, and each stacked
    tensor holds every member; the update rules are torch.optim's.
    """

    def __init__(self, params: dict, lrs: torch.Tensor, recipe: RecipeConfig):
        self.recipe, self.lrs, self.t = recipe, lrs, 0
        self.state = {k: [torch.zeros_like(p), torch.zeros_like(p)] for k, p in params.items()}

    def step(self, params: dict, grads: dict, factor: float) -> None:
        r = self.recipe
        self.t += 1
        for k, p in params.items():
            lr = (self.lrs * factor).view(-1, *([1] * (p.ndim - 1))).to(p)
            g = grads[k]
            m, v = self.state[k]
            if r.optimizer == "sgd":
                g = g + r.weight_decay * p
                m.mul_(r.momentum).add_(g)
                p.sub_(lr * m)
                continue
            if r.optimizer == "adamw":
                p.mul_(1 - lr * r.weight_decay)
            else:
                g = g + r.weight_decay * p
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            denom = (v.sqrt() / math.sqrt(1 - 0.999**self.t)).add_(1e-8)
            p.sub_(lr / (1 - 0.9**self.t) * m / denom)


def _check_group(members: list[Member]) -> int:
    sizes = {len(m.x) for m in members}
    if len(sizes) != 1:
        raise ConfigError(f"a training group needs equal training-set sizes, got {sorted(sizes)}")
    if len({m.labels is None for m in members}) != 1:
        raise ConfigError("a training group needs labels on every member or on none")
    return sizes.pop()


def _loss_value(loss: Callable, logits, targets, labels) -> torch.Tensor:
    return loss(logits, targets) if labels is None else loss(logits, targets, labels=labels)


def _is_eval_epoch(recipe: RecipeConfig, epoch: int) -> bool:
    return epoch == recipe.epochs or epoch % recipe.eval_every == 0


def train_batched(
    members: list[Member],
    model_fn: Callable[[], nn.Module],
    recipe: RecipeConfig,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    augment: Callable | None,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    test: Split,
    val: Split | None = None,
    device: str = "cpu",
) -> list[Fitted]:
    """Train every member together; see the module docstring. With ``val``, histories
    hold the test accuracy only at checkpoints ``select(..., "val")`` can pick."""
    n = _check_group(members)
    first = init_model(model_fn, members[0].seed)
    if not can_stack(first):
        raise ConfigError(
            f"the batched engine cannot stack {type(first).__name__}, which keeps buffers "
            "(e.g. BatchNorm statistics); use engine 'sequential' or a built-in convnet/resnet"
        )
    cap = recipe.max_group or default_max_group(
        first, tuple(members[0].x.shape[1:]), min(n, recipe.batch_size)
    )
    if len(members) > cap:
        args = (model_fn, recipe, loss, augment, teacher, test, val, device)
        starts = range(0, len(members), cap)
        return [f for s in starts for f in train_batched(members[s : s + cap], *args)]
    models = [first] + [init_model(model_fn, m.seed) for m in members[1:]]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    buffers = {k: v.detach().to(device) for k, v in buffers.items()}
    base = copy.deepcopy(models[0]).to(device)
    # in the parameters' dtype: float64 students get their LR exactly, as from torch.optim
    dtype = next(iter(params.values())).dtype
    lrs = torch.tensor([m.lr for m in members], dtype=dtype, device=device)
    opt = _Optimizer(params, lrs, recipe)
    data = [(m.x.to(device), _packed(m).to(device)) for m in members]
    width, with_labels = members[0].targets.shape[-1], members[0].labels is not None
    test, val = _on(device, test), _on(device, val)
    order_gens = [torch.Generator().manual_seed(m.seed) for m in members]
    aug_gens = [augment_generator(m.seed) for m in members]
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    fitted = [Fitted(m.lr, m.seed) for m in members]
    best_val = torch.full((len(members),), -1.0)  # each member's best validation accuracy
    step = 0
    for epoch in track(range(1, recipe.epochs + 1), f"{len(members)} students, epochs"):
        perms = [torch.randperm(n, generator=g).to(device) for g in order_gens]
        for start in range(0, n, recipe.batch_size):
            xs, ts = [], []
            for (x, targets), perm, gen in zip(data, perms, aug_gens, strict=True):
                idx = perm[start : start + recipe.batch_size]
                xb, tb = x[idx], targets[idx]
                if augment is not None:
                    xb, tb = augment(xb, tb, gen)
                xs.append(xb)
                ts.append(tb)
            xb = torch.stack(xs)
            tb, yb = _unpacked(torch.stack(ts), width, with_labels)
            if teacher is not None:
                with torch.no_grad():
                    tb = teacher(xb.flatten(0, 1)).view(*xb.shape[:2], -1)
            logits = stacked_forward(base, params, xb, buffers, training=True)
            # Every loss is a batch mean, so G x the mean over all G*B rows is the sum of
            # the members' losses, whose gradient is each member's own gradient.
            flat_labels = None if yb is None else yb.flatten(0, 1)
            total = _loss_value(loss, logits.flatten(0, 1), tb.flatten(0, 1), flat_labels) * len(
                members
            )
            grads = dict(
                zip(params, torch.autograd.grad(total, list(params.values())), strict=True)
            )
            with torch.no_grad():
                opt.step(params, grads, lr_factor(recipe, step, steps_per_epoch))
            step += 1
        if _is_eval_epoch(recipe, epoch):
            for f, record in zip(
                fitted, _checkpoint(base, params, buffers, test, val, best_val), strict=True
            ):
                f.history.append({"epoch": epoch, **record})
    for g, f in enumerate(fitted):
        state = params | buffers
        f.state = {k: state[k][g].detach().to("cpu", copy=True) for k in base.state_dict()}
    return fitted


def train_sequential(
    members: list[Member],
    model_fn: Callable[[], nn.Module],
    recipe: RecipeConfig,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    augment: Callable | None,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    test: Split,
    val: Split | None = None,
    device: str = "cpu",
) -> list[Fitted]:
    """Train members one after another with ``core.train.fit_classifier``."""
    _check_group(members)
    if recipe.schedule == "cosine_ref":
        raise ConfigError("schedule 'cosine_ref' needs engine 'batched'")
    fitted = []
    for m in track(members, "students"):
        cfg = TrainConfig(
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=m.lr,
            optimizer=recipe.optimizer,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            schedule=recipe.schedule,
            step_every=recipe.step_every,
            step_gamma=0.1,
            eval_every=recipe.eval_every,
            seed=m.seed,
            device=device,
        )
        gen = augment_generator(m.seed)
        aug = None if augment is None else (lambda x, t, gen=gen: augment(x, t, gen))
        targets, train_loss = (teacher if teacher is not None else m.targets), loss
        if m.labels is not None:
            targets = _packed(m)
            aug, train_loss = _packed_hooks(aug, teacher, loss, m.targets.shape[-1])
        result = fit_classifier(
            init_model(model_fn, m.seed),
            (m.x, m.targets.argmax(1)),
            test,
            cfg,
            targets=targets,
            loss=lambda s, t, _cfg, train_loss=train_loss: train_loss(s, t),
            augment=aug,
            val=val,
        )
        history = [
            {k: h[k] for k in ("epoch", "test_acc", "val_acc") if k in h}
            for h in result.history
            if "test_acc" in h
        ]
        state = {k: v.cpu() for k, v in result.model.state_dict().items()}
        fitted.append(Fitted(m.lr, m.seed, history, state))
    return fitted


def _packed_hooks(augment: Callable | None, teacher: Callable | None, loss: Callable, width: int):
    """``fit_classifier`` carries one target tensor, so a member with labels trains on the
    packed [targets | labels]: augmentation mixes both, the teacher relabels only the
    target half, and the loss gets the halves apart."""

    def packed_augment(x, t):
        if augment is not None:
            x, t = augment(x, t)
        if teacher is not None:
            with torch.no_grad():
                t = torch.cat([teacher(x), t[:, width:]], -1)
        return x, t

    def packed_loss(s, t):
        targets, labels = _unpacked(t, width, True)
        return loss(s, targets, labels=labels)

    return packed_augment, packed_loss


ENGINES = {"batched": train_batched, "sequential": train_sequential}


def pick_engine(name: str, model_fn: Callable[[], nn.Module]) -> Callable:
    """``auto`` batches every model the batched engine can stack (``models.can_stack``):
    built-in ConvNets and ResNets with any norm, and models without buffers."""
    if name == "auto":
        name = "batched" if can_stack(model_fn()) else "sequential"
    return ENGINES[name]


def select(fitted: list[Fitted], mode: str) -> dict:
    """Pick (LR, checkpoint) by validation accuracy, or by test accuracy (optimistic).

    Ties go to the earlier LR in the grid and the earlier checkpoint.
    """
    key = "val_acc" if mode == "val" else "test_acc"
    best, chosen = -1.0, None
    for f in fitted:
        for h in f.history:
            if h[key] > best:
                best, chosen = h[key], (f, h)
    f, h = chosen
    return {
        "acc": h["test_acc"],
        "lr": f.lr,
        "epoch": h["epoch"],
        "val_acc": h.get("val_acc"),
        "optimistic": mode == "test",
    }
