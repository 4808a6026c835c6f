"""Find people in generated images and label each one's perceived gender.

Detectors return person boxes; :func:`keep_box` applies the confidence and size
thresholds; labellers map each kept crop to a :class:`~lucidml.bias.types.Label`.
:func:`detect_and_label` streams (metadata, image) pairs through both and returns one
count record per image. The default labeller asks a multimodal LLM a four-option
question whose option order is a seeded permutation stored with every label, so an
audit can tell which letter meant what; anything but a lone option letter is counted
as unparsed instead of being guessed.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from lucidml.bias.types import Box, Label
from lucidml.core.runs import derive_seed
from lucidml.errors import InputError, ModelError, NotInstalledError, require_file

log = logging.getLogger(__name__)

OPTIONS = {
    "male": "only male",
    "female": "only female",
    "both": "both male and female",
    "unclear": "unclear or no person",
}
QUESTION = (
    "What is the perceived gender of the person or people in this image? "
    "Answer with one letter.\n{options}"
)
CLIP_TEXTS = {"female": "a photo of a woman", "male": "a photo of a man"}

# A lone letter, optionally in matching round or square brackets, then "." or ":".
_CHOICE = re.compile(r"(?:\((?P<round>[a-z])\)|\[(?P<square>[a-z])\]|(?P<bare>[a-z]))[.:]?", re.I)


# --- the multiple-choice question -----------------------------------------------------------


def parse_choice(answer: str | None, letters: str = "ABCD") -> str | None:
    """The option letter of ``answer`` (upper case), or None when it is not a lone letter.

    Accepted: "B", "b.", "(c)", " [D] ", "a:". Refused: sentences ("The answer is B"),
    words ("A person"), several letters ("BC"), letters outside ``letters``, "" and None.
    The reference parser upper-cased the reply and kept its first word, so it lost "b."
    (read as "B.") and "The answer is B" (read as "THE"), and raised on an empty reply;
    being strict here means an unparsed answer is counted, never silently misread.
    """
    if not isinstance(answer, str):
        return None
    match = _CHOICE.fullmatch(answer.strip())
    if match is None:
        return None
    letter = next(g for g in match.groups() if g).upper()
    return letter if letter in letters.upper() else None


def option_order(seed: int, key: str) -> list[str]:
    """The order in which the options are shown for ``key``: a permutation of OPTIONS.

    Each option is ranked by ``derive_seed(seed, key, option)``, so the order depends only
    on the seed and the key, the same on every machine and Python version, and a crop
    can be asked again with exactly the question it was first shown.
    """
    return sorted(OPTIONS, key=lambda option: derive_seed(seed, key, option))


def format_permutation(order: Sequence[str], letters: str = "ABCD") -> str:
    """The stored form of an option order, e.g. "A=female,B=unclear,C=male,D=both".

    The letters are written out so that a label can be audited without knowing which
    letters the labeller used; :func:`shown_options` reads it back.
    """
    return ",".join(f"{letter}={option}" for letter, option in zip(letters, order, strict=False))


def shown_options(permutation: str) -> dict[str, str]:
    """Letter -> option key, read back from :func:`format_permutation`'s text."""
    pairs = (item.split("=", 1) for item in permutation.split(","))
    return {letter: option for letter, option in pairs}


def format_question(order: Sequence[str], letters: str = "ABCD") -> str:
    """The question text with the options listed as "A. only female" lines in ``order``."""
    lines = "\n".join(
        f"{letter}. {OPTIONS[option]}" for letter, option in zip(letters, order, strict=False)
    )
    return QUESTION.format(options=lines)


def label_from_answer(answer: str | None, order: Sequence[str], letters: str = "ABCD") -> Label:
    """The label for a raw answer to the question shown in ``order``.

    "both" and "unclear" become gender "unclear" (the image rule drops them either way);
    an answer that does not parse is "unclear" with ``parsed=False`` so it is counted.
    """
    permutation = format_permutation(order, letters)
    letter = parse_choice(answer, letters[: len(order)])
    if letter is None:
        return Label("unclear", answer, permutation, parsed=False)
    option = order[letters.upper().index(letter)]
    gender = option if option in ("female", "male") else "unclear"
    return Label(gender, answer, permutation)


# --- labellers ------------------------------------------------------------------------------

MLLM_KIND = "image-text-to-text model"
AnswerFn = Callable[[list[torch.Tensor], list[str]], list[str]]


class ChoiceLabeller:
    """A multimodal LLM answering the four-option question about each crop.

    ``answer_fn(crops, questions)`` returns one raw answer per crop; it is injectable so
    that any backend (transformers, vLLM, a test fake) can serve the same question.
    """

    def __init__(self, answer_fn: AnswerFn, name: str = "mllm", seed: int = 0, letters="ABCD"):
        if len(set(letters.upper())) != len(OPTIONS) or not letters.isalpha():
            raise InputError(f"letters must be {len(OPTIONS)} distinct letters, got '{letters}'")
        self.answer_fn, self.name, self.seed, self.letters = answer_fn, name, seed, letters.upper()

    def __call__(
        self, crops: Sequence[torch.Tensor], keys: Sequence[str] | None = None
    ) -> list[Label]:
        """One label per crop; ``keys`` (default: the crop's position) seed each order."""
        keys = [str(i) for i in range(len(crops))] if keys is None else list(keys)
        if len(keys) != len(crops):
            raise InputError(f"got {len(keys)} keys for {len(crops)} crops")
        orders = [option_order(self.seed, key) for key in keys]
        questions = [format_question(order, self.letters) for order in orders]
        answers = list(self.answer_fn(list(crops), questions))
        if len(answers) != len(crops):
            raise ModelError(f"{self.name} returned {len(answers)} answers for {len(crops)} crops")
        return [
            label_from_answer(answer, order, self.letters)
            for answer, order in zip(answers, orders, strict=True)
        ]

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu", seed: int = 0) -> ChoiceLabeller:
        """A labeller backed by a transformers image-text-to-text model (greedy, 5 tokens)."""
        _check_source(model_id)
        import transformers

        from lucidml.core.zoo import _unknown_model

        auto_model = getattr(transformers, "AutoModelForImageTextToText", None)
        if auto_model is None:  # transformers before 4.46
            auto_model = transformers.AutoModelForVision2Seq
        try:
            processor = transformers.AutoProcessor.from_pretrained(model_id)
            model = auto_model.from_pretrained(model_id).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(_unknown_model(model_id, MLLM_KIND, exc)) from exc

        def answer_fn(crops: list[torch.Tensor], questions: list[str]) -> list[str]:
            return [
                _generate(processor, model, c, q) for c, q in zip(crops, questions, strict=True)
            ]

        return cls(answer_fn, name=f"mllm:{model_id}", seed=seed)


def _check_source(model_id: str) -> None:
    """Fail in milliseconds when the model has no config.json locally (a folder, or the
    cache while the hub is offline), before transformers' processor classes load, which
    takes seconds."""
    from huggingface_hub import try_to_load_from_cache

    from lucidml.core.zoo import _unknown_model, hub_offline

    if Path(model_id).exists():
        found = (Path(model_id) / "config.json").is_file()
    elif hub_offline(model_id):
        try:
            found = isinstance(try_to_load_from_cache(model_id, "config.json"), str)
        except ValueError:  # not a valid repo id
            found = False
    else:
        return  # online: transformers resolves the id and reports its own errors
    if not found:
        missing = FileNotFoundError("it has no config.json")
        raise ModelError(_unknown_model(model_id, MLLM_KIND, missing))


def _generate(processor, model, crop: torch.Tensor, question: str) -> str:
    """One greedy answer of at most 5 new tokens; one crop at a time, because padding a
    batch of chat prompts needs per-model care (batched serving is vLLM's job at scale)."""
    from PIL import Image

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    pixels = (crop.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    inputs = processor(images=[Image.fromarray(pixels)], text=[prompt], return_tensors="pt")
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=5)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


class ClipLabeller:
    """Zero-shot labelling with a core VisionLanguageModel: a softmax over two captions.

    A crop whose top probability is below ``min_prob`` is "unclear", so a weak or
    confused model abstains instead of guessing.
    """

    name = "clip"

    def __init__(self, vlm, texts: Mapping[str, str] = CLIP_TEXTS, min_prob: float = 0.6):
        if set(texts) != {"female", "male"}:
            raise InputError(f"texts must map 'female' and 'male' to captions, got {sorted(texts)}")
        self.vlm, self.genders, self.min_prob = vlm, list(texts), min_prob
        self.text_embeddings = vlm.encode_texts([texts[g] for g in self.genders])

    def __call__(self, crops: Sequence[torch.Tensor]) -> list[Label]:
        if len(crops) == 0:
            return []
        images = torch.stack([self._square(c) for c in crops])
        with torch.no_grad():
            logits = self.vlm.logit_scale * self.vlm.encode_images(images) @ self.text_embeddings.T
        return [self._label(p) for p in logits.softmax(-1).cpu()]

    def _square(self, crop: torch.Tensor) -> torch.Tensor:
        """The crop resized to the model's square input. Squashing (not centre-cropping)
        keeps the whole person in view, which matters more than the aspect ratio here."""
        size = (self.vlm.image_size, self.vlm.image_size)
        return F.interpolate(crop[None].float(), size=size, mode="bilinear", antialias=True)[0]

    def _label(self, probs: torch.Tensor) -> Label:
        raw = ",".join(f"{g}={p:.3f}" for g, p in zip(self.genders, probs.tolist(), strict=True))
        best = int(probs.argmax())
        gender = self.genders[best] if probs[best] >= self.min_prob else "unclear"
        return Label(gender, raw)


# --- detectors ------------------------------------------------------------------------------


class TorchvisionDetector:
    """A torchvision detection model (COCO classes) returning its person boxes.

    Weights come from a local state-dict file, because detection runs offline; random
    weights (``allow_random=True``) exist for plumbing tests only.
    """

    def __init__(
        self,
        arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn",
        weights: str | Path | None = None,
        device: str = "cpu",
        person_class: int = 1,
        allow_random: bool = False,
    ):
        try:
            from torchvision.models import detection
        except ImportError:
            raise NotInstalledError(
                "the torchvision detector needs torchvision: pip install 'lucidml[vision]'"
            ) from None
        builder = getattr(detection, arch, None)
        if not callable(builder):
            raise ModelError(f"unknown torchvision detection architecture '{arch}'")
        if weights is None and not allow_random:
            raise NotInstalledError(
                f"offline detection with {arch} needs a weights file: pass a local "
                ".safetensors or .pth state dict as weights"
            )
        self.name, self.person_class, self.device = f"torchvision:{arch}", person_class, device
        self.model = builder(weights=None, weights_backbone=None)
        if weights is not None:
            _load_state(self.model, require_file(weights, "detector weights file"), arch)
        self.model.to(device).eval()

    def __call__(self, images: Sequence[torch.Tensor]) -> list[list[Box]]:
        if len(images) == 0:
            return []
        with torch.inference_mode():
            outputs = self.model([image.to(self.device) for image in images])
        return [self._persons(out) for out in outputs]

    def _persons(self, output: dict[str, torch.Tensor]) -> list[Box]:
        mask = output["labels"] == self.person_class
        boxes, scores = output["boxes"][mask].tolist(), output["scores"][mask].tolist()
        return [Box(*xyxy, confidence=score) for xyxy, score in zip(boxes, scores, strict=True)]


def _load_state(model: torch.nn.Module, path: Path, arch: str) -> None:
    """Load a state dict, preferring safetensors; ``.pth`` files load with
    ``weights_only=True`` so a weights file cannot run code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        message = str(exc).strip() or type(exc).__name__
        raise ModelError(
            f"cannot load {arch} weights from {path}: {message.splitlines()[0]}"
        ) from exc


# --- thresholds and crops -------------------------------------------------------------------


def keep_box(
    box: Box, height: int, width: int, conf: float = 0.35, min_side_fraction: float = 30 / 512
) -> bool:
    """Whether a detection counts as a person: confidence strictly above ``conf`` and the
    shorter side strictly above ``min_side_fraction`` of the image's shorter side. The
    reference's absolute 30 px becomes 30/512, so models rendering at different
    resolutions are held to the same relative size."""
    return box.confidence > conf and box.min_side > min_side_fraction * min(height, width)


def crop(image: torch.Tensor, box: Box, pad: int = 1) -> torch.Tensor:
    """The pixels of ``box`` plus ``pad`` pixels around it, clipped to the image."""
    height, width = image.shape[-2:]
    x0, y0 = max(0, math.floor(box.x0) - pad), max(0, math.floor(box.y0) - pad)
    x1, y1 = min(width, math.ceil(box.x1) + pad), min(height, math.ceil(box.y1) + pad)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {tuple(box)[:4]} lies outside the {width}x{height} image")
    return image[:, y0:y1, x0:x1]


# --- the pipeline ---------------------------------------------------------------------------


def detect_and_label(
    images: Iterable[tuple[dict, torch.Tensor]],
    detector,
    labeller,
    *,
    conf: float = 0.35,
    min_side_fraction: float = 30 / 512,
    batch_size: int = 32,
) -> list[dict]:
    """One record per image: its metadata plus box, person and label counts.

    Images are streamed and go through the detector ``batch_size`` at a time; the kept
    crops of a batch are labelled together. Each crop's key is "<image_id>:<box index>"
    (the image's stream position when there is no "image_id"), so an MLLM's option order
    is reproducible per person.
    """
    records: list[dict] = []
    batch: list[tuple[dict, torch.Tensor, str]] = []
    for index, (meta, image) in enumerate(images):
        _check_image(meta, image, index)
        batch.append((meta, image, str(meta.get("image_id", index))))
        if len(batch) == batch_size:
            records += _process(batch, detector, labeller, conf, min_side_fraction)
            batch = []
    if batch:
        records += _process(batch, detector, labeller, conf, min_side_fraction)
    return records


def _check_image(meta: dict, image, index: int) -> None:
    shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
    ok = isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 3
    if not ok or shape[0] != 3:
        name = meta.get("image_id", f"#{index}")
        raise InputError(f"image {name} must be a (3, H, W) float tensor, got {shape}")


def _process(batch, detector, labeller, conf: float, min_side_fraction: float) -> list[dict]:
    """Detect, threshold, crop and label one batch of images."""
    all_boxes = detector([image for _, image, _ in batch])
    crops, keys, owners, counts = [], [], [], []
    for i, ((_, image, key), boxes) in enumerate(zip(batch, all_boxes, strict=True)):
        height, width = image.shape[-2:]
        kept = [b for b in boxes if keep_box(b, height, width, conf, min_side_fraction)]
        counts.append(len(boxes))
        for j, box in enumerate(kept):
            crops.append(crop(image, box))
            keys.append(f"{key}:{j}")
            owners.append(i)
    labels = label_safely(labeller, crops, keys)
    per_image: list[list[Label]] = [[] for _ in batch]
    for owner, label in zip(owners, labels, strict=True):
        per_image[owner].append(label)
    return [
        _record(meta, n_boxes, image_labels)
        for (meta, _, _), n_boxes, image_labels in zip(batch, counts, per_image, strict=True)
    ]


def label_safely(labeller, crops: list[torch.Tensor], keys: list[str]) -> list[Label]:
    """Label all crops at once; if that fails, one at a time, and a crop that still
    fails abstains ("unclear", unparsed, the error as its raw answer) instead of ending
    the run: a face that cannot be read is an outcome, not a crash."""
    if not crops:
        return []
    try:
        labels = list(_call(labeller, crops, keys))
        if len(labels) == len(crops):
            return labels
        problem = f"{len(labels)} labels"
    except Exception as exc:
        problem = str(exc)
    name = getattr(labeller, "name", "labeller")
    log.warning("%s failed on %d crops (%s); labelling them one by one", name, len(crops), problem)
    return [_label_one(labeller, c, k) for c, k in zip(crops, keys, strict=True)]


def _label_one(labeller, crop_: torch.Tensor, key: str) -> Label:
    try:
        return _call(labeller, [crop_], [key])[0]
    except Exception as exc:
        return Label("unclear", str(exc) or type(exc).__name__, None, parsed=False)


def _call(labeller, crops: list[torch.Tensor], keys: list[str]) -> list[Label]:
    """Pass the keys only to labellers that take them (the MLLM's option order)."""
    if "keys" in inspect.signature(labeller).parameters:
        return labeller(crops, keys=keys)
    return labeller(crops)


def _record(meta: dict, n_boxes: int, labels: list[Label]) -> dict:
    genders = [label.gender for label in labels]
    return dict(
        meta,
        n_boxes=n_boxes,
        n_persons=len(labels),
        labels=genders,
        n_female=genders.count("female"),
        n_male=genders.count("male"),
        n_unclear=genders.count("unclear"),
        n_unparsed=sum(not label.parsed for label in labels),
        answers=[label.raw for label in labels],
        permutations=[label.permutation for label in labels],
    )
