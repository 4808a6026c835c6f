"""A text-to-image stand-in with a known answer, and the detector and labellers that read it.

``SimulatedT2I`` draws scenes of 0-3 stick figures whose torso shape is the "gender cue"
(a dress-like triangle for female, a rectangle for male, a bare line for unclear), with a
female probability planted per prompt. Because the truth of every figure is known, the
whole audit (detect, label, filter, aggregate) can be checked end to end on a CPU in
seconds: the planted ratio must come back out.

``ComponentsDetector`` finds figures as connected components, ``ShapeLabeller`` reads the
torso with a fixed rule (an oracle-like labeller) and ``GlyphCNNLabeller`` is a tiny CNN
trained once on rendered crops, standing in for a learned classifier with its own errors.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lucidml.bias.detect import crop
from lucidml.bias.types import GENDERS, Box, Label
from lucidml.core.runs import derive_seed, publish_folder
from lucidml.core.zoo import _lock, lucid_home
from lucidml.errors import InputError

FEMALE, MALE, UNCLEAR = GENDERS
INK_THRESHOLD = 0.25  # figures differ from the background by >= 0.4 per channel, noise by < 0.1
GAP = 2  # background pixels kept between any two drawn things
MARGIN = 1  # background pixels kept to the image's edge, so a padded crop has a background ring
GLYPH_CNN_VERSION = 1  # bump when the recipe changes, so stale caches are rebuilt
GLYPH_CNN_NAME = f"bias-glyph-cnn-v{GLYPH_CNN_VERSION}"

# Torso rows read by ShapeLabeller, as fractions of the figure's height: inside the torso
# for every figure height drawn (the head ends near 0.24, the torso near 0.65).
TORSO_BAND = (0.32, 0.58)


# --- the image model ----------------------------------------------------------------------


class SimulatedT2I:
    """An ImageModel whose images carry a planted female probability per prompt.

    ``ratio`` maps a prompt's text to its planted R_f (a mapping or a callable). Each
    image gets one scene gender g ~ Bernoulli(R_f); with probability ``mixed_prob`` a scene
    of two or more figures becomes a mixed group instead, and each figure independently
    turns "unclear" with probability ``unclear_prob``; otherwise every figure is g. Mixing
    and unclear figures are drawn independently of g, so among the images the audit keeps
    (figures all of one clear gender) the female share is exactly R_f in expectation. Had
    each figure's gender been drawn independently, a kept group of k figures would be
    all-female with probability R_f^k against (1 - R_f)^k all-male, and kept images would
    over-represent the majority gender.

    The person count is drawn from ``person_counts`` (probabilities of 0, 1, 2 and 3
    figures); up to ``clutter`` specks of a few pixels are scattered as well, so a
    detector's size filter has something to reject. Images are deterministic in
    (prompt, seed).
    """

    def __init__(
        self,
        ratio: Mapping[str, float] | Callable[[str], float],
        name: str = "simulated",
        size: int = 64,
        person_counts: Sequence[float] = (0.1, 0.5, 0.25, 0.15),
        mixed_prob: float = 0.1,
        unclear_prob: float = 0.05,
        clutter: int = 3,
    ):
        if size < 32:
            raise InputError(f"size must be at least 32 pixels to fit three figures, got {size}")
        self.name = name
        self.size = size
        self.person_counts = _check_counts(person_counts)
        self.mixed_prob = _check_probability(mixed_prob, "mixed_prob")
        self.unclear_prob = _check_probability(unclear_prob, "unclear_prob")
        self.clutter = clutter
        self._ratio = _ratio_lookup(ratio)

    def render(self, prompt: str, seed: int) -> tuple[torch.Tensor, list[tuple[Box, str]]]:
        """The image (3, size, size) in [0, 1] and the truth: each figure's box and gender."""
        rng = np.random.default_rng(derive_seed(prompt, seed))
        genders = self._plan(rng, self._ratio(prompt))
        image, boxes = _draw_scene(rng, genders, self.size, self.clutter)
        return image, list(zip(boxes, genders, strict=True))

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[torch.Tensor]:
        if len(prompts) != len(seeds):
            raise InputError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        return [self.render(prompt, seed)[0] for prompt, seed in zip(prompts, seeds, strict=True)]

    def _plan(self, rng: np.random.Generator, female_prob: float) -> list[str]:
        """The figures' genders: one scene gender, then mixing and unclear figures."""
        n = int(rng.choice(len(self.person_counts), p=self.person_counts))
        scene = FEMALE if rng.random() < female_prob else MALE
        genders = [scene] * n
        if n >= 2 and rng.random() < self.mixed_prob:
            other = MALE if scene == FEMALE else FEMALE
            for i in rng.choice(n, size=int(rng.integers(1, n)), replace=False):
                genders[i] = other
        unclear = rng.random(n) < self.unclear_prob
        return [UNCLEAR if u else g for g, u in zip(genders, unclear, strict=True)]


def _ratio_lookup(ratio) -> Callable[[str], float]:
    """prompt -> checked R_f; a mapping is checked whole at once, so a bad value fails early."""
    if isinstance(ratio, Mapping):
        table = {prompt: _check_ratio(value, prompt) for prompt, value in ratio.items()}

        def lookup(prompt: str) -> float:
            if prompt not in table:
                raise InputError(f"no planted female ratio for prompt '{prompt}'")
            return table[prompt]

        return lookup
    if callable(ratio):
        return lambda prompt: _check_ratio(ratio(prompt), prompt)
    raise InputError(
        f"ratio must map prompt text to a female probability, got {type(ratio).__name__}"
    )


def _check_ratio(value, prompt: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"planted female ratio for '{prompt}' is not a number: {value!r}"
        ) from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise InputError(f"planted female ratio for '{prompt}' must lie in [0, 1], got {value}")
    return value


def _check_probability(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{what} must lie in [0, 1], got {value}")
    return float(value)


def _check_counts(person_counts: Sequence[float]) -> tuple[float, ...]:
    counts = tuple(float(p) for p in person_counts)
    if len(counts) != 4 or min(counts) < 0 or not math.isclose(sum(counts), 1.0, abs_tol=1e-6):
        raise InputError(
            f"person_counts must be 4 probabilities (0-3 figures) summing to 1, got {counts}"
        )
    return counts


# --- drawing ------------------------------------------------------------------------------


def _draw_scene(
    rng: np.random.Generator, genders: Sequence[str], size: int, clutter: int
) -> tuple[torch.Tensor, list[Box]]:
    """A pale noisy background with one dark figure per gender, placed apart, plus specks."""
    scale = size / 64
    figures = [_figure_mask(rng, gender, scale) for gender in genders]
    spots = _layout(rng, [f.shape for f in figures], size)
    taken = [(y, x, *mask.shape) for mask, (y, x) in zip(figures, spots, strict=True)]
    specks = _specks(rng, clutter, taken, size)
    image = np.empty((size, size, 3), np.float32)
    image[:] = rng.uniform(0.78, 0.95, 3)
    for mask, (y, x) in [*zip(figures, spots, strict=True), *specks]:
        h, w = mask.shape
        image[y : y + h, x : x + w][mask] = rng.uniform(0.0, 0.35, 3)
    image += rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    tensor = torch.from_numpy(image.clip(0.0, 1.0)).permute(2, 0, 1).contiguous()
    boxes = [
        Box(float(x), float(y), float(x + f.shape[1]), float(y + f.shape[0]), 1.0)
        for f, (y, x) in zip(figures, spots, strict=True)
    ]
    return tensor, boxes


def _figure_mask(rng: np.random.Generator, gender: str, scale: float) -> np.ndarray:
    """A stick figure's pixels, trimmed to its box: a head disc resting on the torso, the
    torso carrying the gender cue, and two legs starting inside the torso's bottom row, so
    the figure is one 8-connected component."""
    height = int(rng.integers(round(18 * scale), round(30 * scale) + 1))
    thick = max(1, round(scale))
    radius = max(2, round(0.12 * height))
    top = 2 * radius  # the disc's lowest row: the torso starts on it
    widths = _torso_widths(rng, gender, round(0.42 * height), height, thick)
    bottom = top + len(widths) - 1
    canvas = np.zeros((height + thick, height + thick), bool)
    cx = canvas.shape[1] // 2
    yy, xx = np.ogrid[: canvas.shape[0], : canvas.shape[1]]
    canvas |= (yy - radius) ** 2 + (xx - cx) ** 2 <= radius**2
    for row, width in enumerate(widths, start=top):
        left = cx - (width - 1) // 2
        canvas[row, left : left + width] = True
    hip = 0 if gender == UNCLEAR else widths[-1] // 4
    foot = max(hip + 1, round(0.18 * height * rng.uniform(0.8, 1.2)))
    for side in (-1, 1):
        _line(canvas, (bottom, cx + side * hip), (height - 1, cx + side * foot), thick)
    return _trim(canvas)


def _torso_widths(
    rng: np.random.Generator, gender: str, rows: int, height: int, thick: int
) -> list[int]:
    """Pixel width of each torso row: widening downward (female), constant (male), or a
    line as thin as the limbs (unclear: no torso cue)."""
    if gender == UNCLEAR:
        return [thick] * rows
    spread = rng.uniform(0.85, 1.15)
    if gender == MALE:
        return [2 * round(0.16 * height * spread) + 1] * rows
    narrow = thick * (1 + 2 * int(rng.integers(0, 2)))
    wide = 2 * round(0.25 * height * spread) + 1
    return [int(w) for w in np.rint(np.linspace(narrow, wide, rows))]


def _line(canvas: np.ndarray, start: tuple[int, int], end: tuple[int, int], thick: int) -> None:
    """An 8-connected line of ``thick``-pixel squares from ``start`` to ``end`` (row, col)."""
    steps = max(abs(end[0] - start[0]), abs(end[1] - start[1])) + 1
    rows = np.rint(np.linspace(start[0], end[0], steps)).astype(int)
    cols = np.rint(np.linspace(start[1], end[1], steps)).astype(int)
    for row, col in zip(rows, cols, strict=True):
        left = col - (thick - 1) // 2
        canvas[row : row + thick, left : left + thick] = True


def _trim(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _layout(rng: np.random.Generator, shapes, size: int) -> list[tuple[int, int]]:
    """Top-left corners for all shapes, apart from each other. A figure that finds no room
    restarts the whole layout: early figures can leave only gaps too small for a later one."""
    for _ in range(100):
        spots: list[tuple[int, int]] = []
        taken: list[tuple[int, int, int, int]] = []
        for h, w in shapes:
            spot = _free_spot(rng, h, w, taken, size)
            if spot is None:
                break
            spots.append(spot)
            taken.append((spot[0], spot[1], h, w))
        else:
            return spots
    raise RuntimeError(f"no layout found for figures {shapes} in a {size} px image")


def _free_spot(rng, h: int, w: int, taken, size: int, tries: int = 50) -> tuple[int, int] | None:
    """A random corner for an h x w shape inside the margin and GAP away from ``taken``."""
    for _ in range(tries):
        y = int(rng.integers(MARGIN, size - MARGIN - h + 1))
        x = int(rng.integers(MARGIN, size - MARGIN - w + 1))
        if all(_apart((y, x, h, w), other) for other in taken):
            return y, x
    return None


def _apart(a, b) -> bool:
    """Whether boxes (y, x, h, w) have at least GAP background pixels between them."""
    (ay, ax, ah, aw), (by, bx, bh, bw) = a, b
    return ax + aw + GAP <= bx or bx + bw + GAP <= ax or ay + ah + GAP <= by or by + bh + GAP <= ay


def _specks(rng, clutter: int, taken, size: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Up to ``clutter`` specks of 1-4 pixels, placed apart from the figures' boxes ``taken``
    (so never inside a figure's crop) and each other; a speck that finds no room is left
    out, as it carries no truth."""
    taken = list(taken)
    specks = []
    for _ in range(int(rng.integers(0, clutter + 1))):
        mask = rng.random((2, 2)) < 0.5
        mask[0, 0] = True
        spot = _free_spot(rng, 2, 2, taken, size)
        if spot is not None:
            specks.append((mask, spot))
            taken.append((*spot, 2, 2))
    return specks


# --- crops and ink ------------------------------------------------------------------------


def _ink(pixels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(H, W): each pixel's largest per-channel distance from the background colour, so
    figures of any dark colour on any pale background look alike."""
    return (pixels.float() - background[:, None, None]).abs().amax(0)


def _crop_ink(crop: torch.Tensor) -> torch.Tensor:
    """A crop's ink against its border's median colour (the padded ring is background)."""
    border = torch.cat([crop[:, 0], crop[:, -1], crop[:, :, 0], crop[:, :, -1]], dim=1)
    return _ink(crop, border.float().median(dim=1).values)


# --- detector -----------------------------------------------------------------------------


class ComponentsDetector:
    """Person boxes as the 8-connected components of pixels far from the background.

    The background is the image's per-channel median (figures cover well under half of
    it). Components of fewer than ``min_pixels`` pixels are clutter. Every box has
    confidence 1.0: a component has no natural score, and a fill ratio would fall under
    the audit's confidence threshold for thin stick figures.
    """

    name = "components"

    def __init__(self, min_pixels: int = 12, threshold: float = INK_THRESHOLD):
        self.min_pixels = min_pixels
        self.threshold = threshold

    def __call__(self, images: Sequence[torch.Tensor]) -> list[list[Box]]:
        return [self._boxes(image) for image in images]

    def _boxes(self, image: torch.Tensor) -> list[Box]:
        from scipy import ndimage

        image = image.detach().cpu()
        background = image.flatten(1).float().median(dim=1).values
        foreground = (_ink(image, background) > self.threshold).numpy()
        labels, _ = ndimage.label(foreground, structure=np.ones((3, 3), int))
        sizes = np.bincount(labels.ravel())
        return [
            Box(float(cols.start), float(rows.start), float(cols.stop), float(rows.stop), 1.0)
            for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1)
            if sizes[index] >= self.min_pixels
        ]


# --- labellers ----------------------------------------------------------------------------


class ShapeLabeller:
    """The rule the simulator draws by, read back from a crop: no torso wider than a limb
    is "unclear", a torso whose lower rows are clearly wider than its upper rows is a dress
    ("female"), any other torso is "male". It is the oracle-like labeller: errors it makes
    come from detection or cropping, not from judging appearance."""

    name = "shape"

    def __init__(self, threshold: float = INK_THRESHOLD):
        self.threshold = threshold

    def __call__(self, crops: Sequence[torch.Tensor]) -> list[Label]:
        return [Label(self._gender(crop.detach().cpu())) for crop in crops]

    def _gender(self, crop: torch.Tensor) -> str:
        figure = (_crop_ink(crop) > self.threshold).numpy()
        rows = np.flatnonzero(figure.any(1))
        if rows.size == 0:
            return UNCLEAR
        height = rows[-1] - rows[0] + 1
        start, stop = (rows[0] + round(f * height) for f in TORSO_BAND)
        widths = figure[start:stop].sum(1)
        if widths.size < 3 or widths.mean() < 0.12 * height:
            return UNCLEAR
        third = widths.size // 3
        return FEMALE if widths[-third:].mean() > 1.3 * widths[:third].mean() else MALE


class _GlyphNet(nn.Module):
    """Two conv layers and a linear read-out over (1, size, size) ink maps."""

    def __init__(self, input_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * (input_size // 4) ** 2, len(GENDERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _glyph(crop: torch.Tensor, input_size: int) -> torch.Tensor:
    """(1, s, s): the crop's ink scaled to peak 1 and resized, so colour and figure size
    do not matter, only shape."""
    ink = _crop_ink(crop.detach().cpu())
    ink = ink / ink.max().clamp_min(1e-6)
    return F.interpolate(
        ink[None, None], size=(input_size, input_size), mode="bilinear", antialias=True
    )[0]


def _training_set(n_crops: int, seed: int, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced truth crops of single-figure 64 px scenes, drawn by the simulator itself."""
    glyphs, targets = [], []
    for i in range(n_crops):
        target = i % len(GENDERS)
        rng = np.random.default_rng(derive_seed("glyph-cnn-train", seed, i))
        image, (box,) = _draw_scene(rng, [GENDERS[target]], 64, clutter=0)
        glyphs.append(_glyph(crop(image, box), input_size))
        targets.append(target)
    return torch.stack(glyphs), torch.tensor(targets)


def train_glyph_cnn(
    n_crops: int = 600, epochs: int = 3, seed: int = 0, input_size: int = 24
) -> _GlyphNet:
    """A _GlyphNet fitted to rendered crops (about a second on 2 cores). It trains on one
    thread: a net this small gains nothing from more, and on a busy machine competing
    threads made it ten times slower. The global torch random state and thread count are
    left as they were."""
    x, y = _training_set(n_crops, seed, input_size)
    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _GlyphNet(input_size)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(32):
                opt.zero_grad()
                F.cross_entropy(net(x[batch]), y[batch]).backward()
                opt.step()
    return net.eval()


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread inside, restoring the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def glyph_cnn_dir() -> Path:
    return lucid_home() / "models" / GLYPH_CNN_NAME


class GlyphCNNLabeller:
    """A tiny CNN over crops' ink maps: a learned labeller, with errors of its own, that
    needs no download. It is trained once on first use and cached in
    ``$LUCID_HOME/models/bias-glyph-cnn-v1`` (model.safetensors and config.json)."""

    name = "glyph-cnn"

    def __init__(self, net: _GlyphNet, input_size: int = 24, device: str = "cpu"):
        self.net = net.to(device).eval()
        self.input_size = input_size
        self.device = device

    @classmethod
    def load(cls, device: str = "cpu") -> GlyphCNNLabeller:
        from safetensors.torch import load_file

        path = glyph_cnn_dir()
        with _lock(GLYPH_CNN_NAME):
            if not (path / "config.json").is_file():
                _train_and_publish(path)
        config = json.loads((path / "config.json").read_text())
        net = _GlyphNet(config["input_size"])
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        return cls(net, config["input_size"], device)

    @torch.no_grad()
    def __call__(self, crops: Sequence[torch.Tensor]) -> list[Label]:
        if not crops:
            return []
        x = torch.stack([_glyph(crop, self.input_size) for crop in crops]).to(self.device)
        return [Label(GENDERS[k]) for k in self.net(x).argmax(1).tolist()]


def _train_and_publish(path: Path) -> None:
    """Train the glyph CNN into a temporary sibling folder, then publish it whole, so a
    reader never sees half a cache."""
    from safetensors.torch import save_file

    config = {"version": GLYPH_CNN_VERSION, "input_size": 24, "classes": list(GENDERS)}
    net = train_glyph_cnn(input_size=config["input_size"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".train-"))
    save_file(net.state_dict(), str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config))
    publish_folder(tmp, path)
