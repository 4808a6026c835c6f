"""The simulated text-to-image model has a known answer: its scenes follow the gender plan,
its figures are found and labelled back, and the planted female ratio comes out again."""

import itertools
import math

import pytest
import torch

from lucidml.bias import simulate
from lucidml.bias.simulate import (
    ComponentsDetector,
    GlyphCNNLabeller,
    ShapeLabeller,
    SimulatedT2I,
    crop,
)
from lucidml.bias.types import GENDERS
from lucidml.errors import InputError


@pytest.fixture(scope="module")
def scenes():
    """200 scenes (about 300 figures) with many unclear figures, so every class is tested."""
    model = SimulatedT2I(lambda prompt: 0.5, unclear_prob=0.3)
    return [model.render("a person reading", seed) for seed in range(200)]


@pytest.fixture(scope="module")
def truth_crops(scenes):
    crops = [(crop(image, box), gender) for image, truth in scenes for box, gender in truth]
    assert {gender for _, gender in crops} == set(GENDERS)
    return crops


@pytest.fixture(scope="module")
def lucid_home(tmp_path_factory):
    """The glyph CNN is trained into a throwaway cache, once for this module."""
    home = tmp_path_factory.mktemp("lucid_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUCID_HOME", str(home))
        yield home


def _iou(a, b) -> float:
    width = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    height = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = width * height
    area = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / area


def _accuracy(labeller, truth_crops) -> float:
    labels = labeller([c for c, _ in truth_crops])
    right = sum(lab.gender == g for lab, (_, g) in zip(labels, truth_crops, strict=True))
    return right / len(truth_crops)


# --- rendering ------------------------------------------------------------------------------


def test_render_is_deterministic_in_prompt_and_seed():
    model = SimulatedT2I({"a person cooking": 0.4, "a person welding": 0.4})
    image, truth = model.render("a person cooking", 7)
    again, truth_again = model.render("a person cooking", 7)
    assert torch.equal(image, again) and truth == truth_again
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert not torch.equal(image, model.render("a person cooking", 8)[0])
    assert not torch.equal(image, model.render("a person welding", 7)[0])
    generated = model.generate(["a person cooking", "a person welding"], [7, 7])
    assert torch.equal(generated[0], image) and len(generated) == 2


@pytest.mark.parametrize(
    ("ratio", "counts", "mixed", "unclear", "expected"),
    [
        (1.0, (0, 0, 0, 1), 0.0, 0.0, ["female"] * 3),
        (0.0, (0, 0, 0, 1), 0.0, 0.0, ["male"] * 3),
        (0.5, (0, 0, 1, 0), 1.0, 0.0, ["female", "male"]),
        (0.5, (0, 1, 0, 0), 1.0, 0.0, None),  # a lone figure cannot be a mixed group
        (0.5, (0, 0, 0, 1), 0.0, 1.0, ["unclear"] * 3),
        (0.5, (1, 0, 0, 0), 0.0, 0.0, []),
    ],
)
def test_figures_follow_the_gender_plan(ratio, counts, mixed, unclear, expected):
    model = SimulatedT2I(
        lambda prompt: ratio, person_counts=counts, mixed_prob=mixed, unclear_prob=unclear
    )
    for seed in range(20):
        genders = sorted(gender for _, gender in model.render("p", seed)[1])
        if expected is None:
            assert len(genders) == 1 and genders[0] != "unclear"
        else:
            assert genders == expected


def test_person_counts_follow_their_probabilities(scenes):
    shares = [sum(len(truth) == k for _, truth in scenes) / len(scenes) for k in range(4)]
    assert all(abs(s - p) < 0.07 for s, p in zip(shares, (0.1, 0.5, 0.25, 0.15), strict=True))


def test_boxes_lie_inside_the_image_and_apart(scenes):
    for image, truth in scenes:
        size = image.shape[-1]
        for box, _ in truth:
            assert 0 < box.x0 < box.x1 < size and 0 < box.y0 < box.y1 < size
            assert 18 <= box.y1 - box.y0 <= 30
        for (a, _), (b, _) in itertools.combinations(truth, 2):
            assert a.x1 + 2 <= b.x0 or b.x1 + 2 <= a.x0 or a.y1 + 2 <= b.y0 or b.y1 + 2 <= a.y0


def test_planted_ratio_is_recovered_among_single_gender_images():
    model = SimulatedT2I({"a person gardening": 0.3})
    kept = []
    for seed in range(400):
        genders = {gender for _, gender in model.render("a person gardening", seed)[1]}
        if len(genders) == 1 and "unclear" not in genders:
            kept.append(genders.pop())
    assert len(kept) > 250
    assert abs(kept.count("female") / len(kept) - 0.3) < 0.05


@pytest.mark.parametrize(
    "ratio",
    [{"p": 1.5}, {"p": -0.1}, {"p": math.nan}, {"p": "often"}, 0.3, None],
)
def test_bad_ratios_are_input_errors(ratio):
    with pytest.raises(InputError):
        SimulatedT2I(ratio).render("p", 0)


def test_bad_prompts_and_settings_are_input_errors():
    with pytest.raises(InputError, match="no planted female ratio"):
        SimulatedT2I({"p": 0.5}).render("q", 0)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        SimulatedT2I(lambda prompt: 2.0).render("p", 0)
    with pytest.raises(InputError, match="person_counts"):
        SimulatedT2I({"p": 0.5}, person_counts=(0.5, 0.6, 0, 0))
    with pytest.raises(InputError, match="mixed_prob"):
        SimulatedT2I({"p": 0.5}, mixed_prob=1.2)
    with pytest.raises(InputError, match="2 prompts but 1 seeds"):
        SimulatedT2I({"p": 0.5}).generate(["p", "p"], [0])


# --- detection and labelling ------------------------------------------------------------------


def test_components_detector_finds_every_figure_and_ignores_clutter(scenes):
    detector = ComponentsDetector()
    assert detector.name == "components"
    found = detector([image for image, _ in scenes])
    for boxes, (_, truth) in zip(found, scenes, strict=True):
        assert len(boxes) == len(truth)
        for box, _ in truth:
            assert max(_iou(box, other) for other in boxes) > 0.9
    with_specks = ComponentsDetector(min_pixels=1)([image for image, _ in scenes])
    cluttered = sum(len(b) > len(t) for b, (_, t) in zip(with_specks, scenes, strict=True))
    assert cluttered > len(scenes) / 2  # the size filter is what keeps specks out


def test_figures_scale_with_the_image_size():
    model = SimulatedT2I(lambda prompt: 0.5, size=128, unclear_prob=0.3)
    rendered = [model.render("p", seed) for seed in range(10)]
    found = ComponentsDetector()([image for image, _ in rendered])
    for boxes, (image, truth) in zip(found, rendered, strict=True):
        assert image.shape == (3, 128, 128) and len(boxes) == len(truth)
        assert all(36 <= box.y1 - box.y0 <= 62 for box, _ in truth)
        labels = ShapeLabeller()([crop(image, box) for box, _ in truth])
        assert [lab.gender for lab in labels] == [gender for _, gender in truth]


def test_shape_labeller_reads_every_truth_crop(truth_crops):
    assert ShapeLabeller().name == "shape"
    assert _accuracy(ShapeLabeller(), truth_crops) == 1.0


def test_crop_pads_and_clips_to_the_image():
    image = torch.rand(3, 10, 12)
    box = simulate.Box(0.0, 2.0, 5.0, 10.0, 1.0)
    assert torch.equal(crop(image, box), image[:, 1:10, 0:6])
    with pytest.raises(InputError, match="outside"):
        crop(image, simulate.Box(20.0, 2.0, 25.0, 8.0, 1.0))


def test_glyph_cnn_learns_the_cue_and_is_cached(lucid_home, truth_crops, monkeypatch):
    labeller = GlyphCNNLabeller.load()
    assert labeller.name == "glyph-cnn"
    folder = lucid_home / "models" / "bias-glyph-cnn-v1"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json"}
    accuracy = _accuracy(labeller, truth_crops)  # scenes of seeds never trained on
    assert accuracy >= 0.95, accuracy

    written = (folder / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached glyph CNN was trained again")

    monkeypatch.setattr(simulate, "train_glyph_cnn", no_training)
    again = GlyphCNNLabeller.load()
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    crops = [c for c, _ in truth_crops[:20]]
    assert again(crops) == labeller(crops)
    assert again([]) == []
