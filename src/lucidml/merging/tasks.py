"""The embedded task stream (transformed digits) and the default trainer and evaluator.

TIME adapts a CLIP model to a stream of datasets and measures what it gains on them
and what it keeps on held-out ones. Offline, the stream is built from the 8x8 digits:
each adaptation task is the digits under one transformation (rotation, inversion,
noise, blur, shift, stroke thickening), and retention is measured on two other
transformations no task trains on (a 20° rotation and a 1.2x zoom). Every transformation is a pure function of an
image batch ``(N, 1, 8, 8)`` in [0, 1]; the random one takes a seeded generator.

The default trainer fine-tunes every parameter of a :class:`VisionLanguageModel` with
the zero-shot objective (cross-entropy of image embeddings against the class-prompt
text embeddings, as digits-clip was trained), for a fixed number of steps: the compute
budget that every recipe shares.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lucidml.core.metrics import accuracy
from lucidml.core.runs import derive_seed
from lucidml.core.vlm import VisionLanguageModel
from lucidml.core.zoo import ImageDataset, load_digits
from lucidml.errors import InputError

State = dict[str, torch.Tensor]

# --- transformations ------------------------------------------------------------------------


def rotate90(images: torch.Tensor, turns: int = 1) -> torch.Tensor:
    """Rotate by ``turns`` quarter turns counter-clockwise (exact: no resampling)."""
    return torch.rot90(images, turns, dims=(2, 3))


def invert(images: torch.Tensor) -> torch.Tensor:
    """Swap ink and background: ``1 - x``."""
    return 1.0 - images


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian pixel noise of standard deviation ``std`` and clip back to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + std * noise).clamp(0.0, 1.0)


def blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur with a 3x3 kernel (zero padding: ink near the border fades)."""
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=images.dtype)
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    return F.conv2d(images, kernel.view(1, 1, 3, 3), padding=1)


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by ``dx`` columns right and ``dy`` rows down; pixels moved in are zero."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    src_rows, dst_rows = _overlap(h, dy), _overlap(h, -dy)
    src_cols, dst_cols = _overlap(w, dx), _overlap(w, -dx)
    out[..., dst_rows, dst_cols] = images[..., src_rows, src_cols]
    return out


def _overlap(size: int, offset: int) -> slice:
    """Source slice of a 1-d shift by ``offset`` (its negation gives the destination)."""
    return slice(0, size - offset) if offset >= 0 else slice(-offset, size)


def thicken(images: torch.Tensor) -> torch.Tensor:
    """Thicken strokes: each pixel becomes the max of itself and its four neighbours."""
    neighbours = [shift(images, dx, dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    return torch.stack([images, *neighbours]).amax(0)


def affine(images: torch.Tensor, degrees: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Rotate counter-clockwise by ``degrees`` and scale by ``scale`` about the centre
    (bilinear, zero outside the image); ``scale < 1`` shrinks the digit."""
    a = math.radians(degrees)
    # affine_grid maps output coordinates to input coordinates: the inverse transform.
    # In (x right, y down) coordinates a counter-clockwise turn on screen is R(-a).
    inverse = torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=images.dtype
    )
    theta = (inverse / scale).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# name -> f(images, generator); only ``noise`` draws from the generator
TRANSFORMS: dict[str, Transform] = {
    "rotate90": lambda x, g: rotate90(x),
    "invert": lambda x, g: invert(x),
    "noise": lambda x, g: add_noise(x, 0.35, g),
    "blur": lambda x, g: blur(x, 1.0),
    "shift": lambda x, g: shift(x, 2, 2),
    "thicken": lambda x, g: thicken(x),
    "rotate20": lambda x, g: affine(x, degrees=20.0),
    "zoom_in": lambda x, g: affine(x, scale=1.2),
}
ADAPTATION = ("rotate90", "invert", "noise", "blur", "shift", "thicken")
HELDOUT = ("rotate20", "zoom_in")

# --- the stream -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskStream:
    """Adaptation tasks in training order, and the held-out sets that measure retention."""

    adaptation: tuple[ImageDataset, ...]
    heldout: tuple[ImageDataset, ...]


def task_seed(seed: int, task_name: str) -> int:
    """A seed per (seed, task): each task draws its own noise and batches, whichever other
    tasks or recipes run alongside it."""
    return derive_seed(seed, task_name)


def transformed(data: ImageDataset, name: str, seed: int = 0) -> ImageDataset:
    """``data`` with both splits under transformation ``name`` (seeded by ``task_seed``)."""
    if name not in TRANSFORMS:
        raise InputError(f"unknown transformation '{name}'; choose from {', '.join(TRANSFORMS)}")
    gen = torch.Generator().manual_seed(task_seed(seed, name))
    f = TRANSFORMS[name]
    train_x = f(data.train_x, gen).contiguous()
    test_x = f(data.test_x, gen).contiguous()
    return ImageDataset(train_x, data.train_y, test_x, data.test_y, data.class_names, name)


def check_stream(adaptation: Sequence[str], heldout: Sequence[str]) -> None:
    """One sentence for a stream that cannot be built: no adaptation task, an unknown
    transformation, or one both trained on and held out."""
    if not adaptation:
        raise InputError("the stream needs at least one adaptation task")
    unknown = [n for n in (*adaptation, *heldout) if n not in TRANSFORMS]
    if unknown:
        raise InputError(
            f"unknown transformation '{unknown[0]}'; choose from {', '.join(TRANSFORMS)}"
        )
    overlap = set(adaptation) & set(heldout)
    if overlap:
        raise InputError(f"transformation(s) {sorted(overlap)} are both trained on and held out")


def digits_stream(
    data: ImageDataset | None = None,
    adaptation: Sequence[str] = ADAPTATION,
    heldout: Sequence[str] = HELDOUT,
    seed: int = 0,
) -> TaskStream:
    """The embedded TIME stream: digits (``load_digits()`` unless given) under each
    adaptation transformation, in order, plus the held-out transformations."""
    check_stream(adaptation, heldout)
    data = data if data is not None else load_digits()
    return TaskStream(
        tuple(transformed(data, n, seed) for n in adaptation),
        tuple(transformed(data, n, seed) for n in heldout),
    )


# --- training and evaluation ----------------------------------------------------------------


def model_state(vlm: VisionLanguageModel) -> State:
    """The wrapped model's state dict as detached, contiguous copies (safe to merge and
    to save as safetensors; later training never changes them)."""
    return {k: v.detach().clone().contiguous() for k, v in vlm.model.state_dict().items()}


def _working_copy(vlm_or_factory) -> VisionLanguageModel:
    """A private model to load states into, so the caller's model is never changed."""
    if isinstance(vlm_or_factory, VisionLanguageModel):
        return copy.deepcopy(vlm_or_factory)
    if callable(vlm_or_factory):
        return vlm_or_factory()
    raise InputError(
        f"expected a VisionLanguageModel or a function building one, "
        f"got {type(vlm_or_factory).__name__}"
    )


def warmup_cosine(step: int, steps: int, warmup: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over the first ``warmup`` share, then cosine to 0."""
    n_warm = max(1, round(warmup * steps))
    if step < n_warm:
        return (step + 1) / n_warm
    return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))


def make_trainer(
    vlm_or_factory,
    steps: int = 50,
    lr: float = 5e-4,  # TIME: 1e-5 for ViT-B/32; digits-clip needs more to move in 50 steps
    batch_size: int = 64,
    weight_decay: float = 0.2,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    loss: str = "ce",
    finetune: str = "full",
    lora_rank: int = 8,
) -> Callable[[State, ImageDataset], State]:
    """``train_fn(init_state, task) -> expert_state``: ``steps`` AdamW steps (warm-up +
    cosine, gradient clipping at 1), seeded by ``seed`` and the task name.

    ``finetune="full"`` trains every weight; ``"lora"`` trains rank-``lora_rank`` peft
    adapters on the attention q/v projections of both towers and returns the state with
    them merged in (the expert is then a full state dict like any other, and its task
    vector has rank <= lora_rank per projection).

    ``loss="ce"`` trains zero-shot classification directly: cross-entropy of the scaled
    cosine between each image and every class prompt. ``loss="contrastive"`` is CLIP's
    (and TIME's) symmetric image-caption loss over the batch, each image captioned by a
    random template with its class name. Every recipe gets the same
    ``steps * batch_size`` samples per task, the budget TIME holds fixed.
    """
    if loss not in ("ce", "contrastive"):
        raise InputError(f"unknown loss '{loss}': use ce or contrastive")
    if finetune not in ("full", "lora") or lora_rank < 1:
        raise InputError(f"finetune must be full or lora (rank >= 1), got {finetune}, {lora_rank}")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise InputError(
            f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}"
        )
    vlm = _working_copy(vlm_or_factory)

    def train_fn(init_state: State, task: ImageDataset) -> State:
        vlm.model.load_state_dict(init_state)
        prompts = [t.format(c) for c in task.class_names for t in (templates or vlm.templates)]
        n_templates = len(prompts) // len(task.class_names)
        gen = torch.Generator().manual_seed(task_seed(seed, task.name))
        adapters = (
            _add_lora(vlm, lora_rank, task_seed(seed, task.name)) if finetune == "lora" else None
        )
        trained = [p for p in vlm.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
        vlm.model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(task.train_x), (batch_size,), generator=gen)
            labels = task.train_y[idx].to(vlm.device)
            if loss == "contrastive":
                pick = torch.randint(0, n_templates, (batch_size,), generator=gen)
                rows = labels.cpu() * n_templates + pick
                captions = [prompts[int(r)] for r in rows]
                objective = _contrastive_loss(vlm, task.train_x[idx], captions)
            else:
                objective = F.cross_entropy(
                    _class_logits(vlm, task.train_x[idx], prompts, n_templates), labels
                )
            opt.zero_grad(set_to_none=True)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP caps the temperature at 100
                vlm.model.logit_scale.clamp_(max=math.log(100))
        vlm.model.eval()
        if adapters is not None:
            adapters.merge_and_unload()  # in place: vlm.model holds plain layers again
            vlm.model.requires_grad_(True)
        return model_state(vlm)

    return train_fn


LORA_TARGETS = ("q_proj", "v_proj")  # the LoRA paper's choice, in both CLIP towers


def _add_lora(vlm: VisionLanguageModel, rank: int, seed: int):
    """Inject fresh rank-``rank`` adapters (alpha = rank) into ``vlm.model`` in place; only
    they train. Returns the peft wrapper, whose ``merge_and_unload`` folds them in."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' random init, per task
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS))
    return get_peft_model(vlm.model, config)


def _contrastive_loss(vlm: VisionLanguageModel, images: torch.Tensor, captions: list[str]):
    """CLIP's symmetric cross-entropy between a batch of images and their captions."""
    img = F.normalize(vlm.image_embeddings(images), dim=-1)
    txt = F.normalize(vlm.text_embeddings(captions), dim=-1)
    logits = vlm.logit_scale * img @ txt.T + vlm.logit_bias
    target = torch.arange(len(captions), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _class_logits(
    vlm: VisionLanguageModel, images: torch.Tensor, prompts: list[str], n_templates: int
) -> torch.Tensor:
    """Differentiable zero-shot logits (N, C): class embeddings are the mean over templates."""
    img = F.normalize(vlm.image_embeddings(images), dim=-1)
    txt = F.normalize(vlm.text_embeddings(prompts), dim=-1)
    txt = F.normalize(txt.view(-1, n_templates, txt.shape[-1]).mean(1), dim=-1)
    return vlm.logit_scale * img @ txt.T + vlm.logit_bias


def make_evaluator(
    vlm: VisionLanguageModel,
    tasks: Sequence[ImageDataset],
    heldout: Sequence[ImageDataset],
    templates: Sequence[str] | None = None,
) -> Callable[[State], dict[str, dict[str, float]]]:
    """``evaluate_fn(state)``: zero-shot top-1 accuracy with class prompts on the test split
    of every adaptation task and held-out set, as ``{"adaptation": ..., "heldout": ...}``."""
    names = [t.name for t in (*tasks, *heldout)]
    if len(set(names)) != len(names):
        raise InputError(f"task and held-out names must be unique, got {names}")
    model = _working_copy(vlm)

    def evaluate_fn(state: State) -> dict[str, dict[str, float]]:
        model.model.load_state_dict(state)
        return {
            "adaptation": zero_shot_accuracies(model, tasks, templates),
            "heldout": zero_shot_accuracies(model, heldout, templates),
        }

    return evaluate_fn


def zero_shot_accuracies(
    vlm: VisionLanguageModel,
    datasets: Sequence[ImageDataset],
    templates: Sequence[str] | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy of ``vlm`` on each dataset's test split, by dataset name."""
    class_embeddings: dict[tuple[str, ...], torch.Tensor] = {}
    out = {}
    for data in datasets:
        if data.class_names not in class_embeddings:
            class_embeddings[data.class_names] = vlm.class_embeddings(data.class_names, templates)
        txt = class_embeddings[data.class_names]
        scores = vlm.encode_images(data.test_x) @ txt.T
        out[data.name] = accuracy(scores, data.test_y)
    return out
