import importlib.util

import pytest
import torch

from lucidml.bias.detect import (
    OPTIONS,
    ChoiceLabeller,
    ClipLabeller,
    TorchvisionDetector,
    crop,
    detect_and_label,
    format_question,
    keep_box,
    label_from_answer,
    option_order,
    parse_choice,
    shown_options,
)
from lucidml.bias.types import GENDERS, Box, Label
from lucidml.errors import InputError, ModelError, NotInstalledError

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

# --- parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("b.", "B"),
        ("(c)", "C"),
        (" [D] ", "D"),
        ("a:", "A"),
        ("C\n", "C"),
        ("The answer is B", None),
        ("A person", None),
        ("", None),
        (None, None),
        ("BC", None),
        ("E", None),
        ("(c]", None),
        ("B.)", None),
    ],
)
def test_parse_choice(answer, letter):
    assert parse_choice(answer) == letter


def test_parse_choice_respects_letters():
    assert parse_choice("E", letters="EFGH") == "E"
    assert parse_choice("A", letters="EFGH") is None


# --- option order and labels ------------------------------------------------------------


def test_option_order_is_a_seeded_permutation():
    order = option_order(0, "img-1:0")
    assert sorted(order) == sorted(OPTIONS)
    assert option_order(0, "img-1:0") == order
    orders = {tuple(option_order(seed, "k")) for seed in range(40)}
    assert len(orders) > 5  # the order really varies with the seed


def test_question_lists_options_in_order():
    question = format_question(["unclear", "male", "female", "both"])
    assert "perceived gender" in question
    assert question.endswith(
        "A. unclear or no person\nB. only male\nC. only female\nD. both male and female"
    )


@pytest.mark.parametrize(
    ("answer", "gender", "parsed"),
    [("C", "female", True), ("b", "male", True), ("(D)", "unclear", True), ("A.", "unclear", True)],
)
def test_label_from_answer(answer, gender, parsed):
    label = label_from_answer(answer, ["unclear", "male", "female", "both"])
    assert (label.gender, label.parsed, label.raw) == (gender, parsed, answer)


@pytest.mark.parametrize("answer", ["The answer is C", "", None])
def test_unparsed_answers_are_unclear(answer):
    label = label_from_answer(answer, ["unclear", "male", "female", "both"])
    assert label == Label("unclear", answer, "A=unclear,B=male,C=female,D=both", parsed=False)


def _image_id_with_female_third(suffix=""):
    """An id whose option order (for key id + suffix) shows "only female" at letter C."""
    return next(f"k{i}" for i in range(1000) if option_order(0, f"k{i}{suffix}")[2] == "female")


def test_choice_labeller_answer_c_is_female_when_female_is_third():
    key = _image_id_with_female_third()
    seen = []

    def answer_fn(crops, questions):
        seen.extend(questions)
        return ["C"] * len(crops)

    [label] = ChoiceLabeller(answer_fn)([torch.rand(3, 8, 8)], keys=[key])
    assert label.gender == "female" and label.parsed and label.raw == "C"
    assert "C. only female" in seen[0]
    # The stored permutation says which option letter C showed.
    assert shown_options(label.permutation)["C"] == "female"
    assert [shown_options(label.permutation)[x] for x in "ABCD"] == option_order(0, key)


def test_choice_labeller_checks_its_inputs():
    with pytest.raises(InputError):
        ChoiceLabeller(lambda c, q: [], letters="AAB")
    labeller = ChoiceLabeller(lambda crops, questions: ["A"])
    with pytest.raises(InputError):
        labeller([torch.rand(3, 4, 4)], keys=["a", "b"])
    with pytest.raises(ModelError):
        labeller([torch.rand(3, 4, 4)] * 2)


def test_from_pretrained_unknown_model_is_a_model_error(tmp_path, monkeypatch):
    import huggingface_hub

    with pytest.raises(ModelError, match="cannot load"):
        ChoiceLabeller.from_pretrained(str(tmp_path))
    # an id absent from the cache while offline is named as such; no hub or cache is asked
    # and transformers is never reached, so nothing is loaded or downloaded
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("the refusal must come before transformers loads anything")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("lucidml.core.zoo.hub_offline", lambda name: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", never)
    with pytest.raises(ModelError, match="offline"):
        ChoiceLabeller.from_pretrained("org/absent-model")


# --- CLIP zero-shot (random weights: plumbing only, not accuracy) ----------------------


def test_clip_labeller_plumbing():
    from lucidml.testing import tiny_clip

    vlm = tiny_clip()
    labeller = ClipLabeller(vlm)
    crops = [torch.rand(3, 20, 12), torch.rand(3, 9, 30), torch.rand(3, 8, 8)]
    labels = labeller(crops)
    assert len(labels) == 3 and labeller.name == "clip"
    assert all(isinstance(x, Label) and x.gender in GENDERS for x in labels)
    assert all(x.raw.startswith("female=") for x in labels)
    assert [x.gender for x in ClipLabeller(vlm, min_prob=1.01)(crops)] == ["unclear"] * 3
    with pytest.raises(InputError):
        ClipLabeller(vlm, texts={"woman": "a woman", "man": "a man"})


# --- thresholds and crops ---------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "kept"), [(0.35, False), (0.36, True)])
def test_keep_box_confidence_is_strict(confidence, kept):
    assert keep_box(Box(0, 0, 100, 100, confidence), 512, 512) is kept


@pytest.mark.parametrize(
    ("side", "height", "width", "kept"),
    [(30, 512, 512, False), (31, 512, 512, True), (60, 1024, 2048, False), (61, 1024, 2048, True)],
)
def test_keep_box_min_side_is_strict_and_relative(side, height, width, kept):
    assert keep_box(Box(10, 10, 10 + side, 10 + 2 * side, 0.9), height, width) is kept


def test_crop_pads_and_clips():
    image = torch.rand(3, 20, 30)
    assert crop(image, Box(5, 4, 10, 12, 0.9)).shape == (3, 10, 7)
    assert crop(image, Box(0, 0, 30, 20, 0.9)).shape == (3, 20, 30)


# --- the pipeline with fakes ------------------------------------------------------------


class FixedDetector:
    """The same boxes for every 64x64 image: two kept, one weak, one too small."""

    name = "fixed"
    boxes = [
        Box(0, 0, 20, 40, 0.9),
        Box(30, 10, 60, 60, 0.8),
        Box(0, 0, 20, 20, 0.2),
        Box(40, 0, 43, 50, 0.99),
    ]

    def __init__(self):
        self.batches = []

    def __call__(self, images):
        self.batches.append(len(images))
        return [list(self.boxes) for _ in images]


class WideIsMale:
    """Labels by crop shape: wider than 25 px is male, else female."""

    name = "shape"

    def __call__(self, crops):
        return [Label("male" if c.shape[-1] > 25 else "female") for c in crops]


def _stream(n):
    return (
        (dict(image_id=f"img{i}", prompt="a person cooking"), torch.rand(3, 64, 64))
        for i in range(n)
    )


def test_detect_and_label_counts_and_batches():
    detector = FixedDetector()
    records = detect_and_label(_stream(5), detector, WideIsMale(), batch_size=2)
    assert detector.batches == [2, 2, 1]
    assert [r["image_id"] for r in records] == [f"img{i}" for i in range(5)]
    record = records[0]
    assert record["prompt"] == "a person cooking"
    assert (record["n_boxes"], record["n_persons"]) == (4, 2)
    assert record["labels"] == ["female", "male"]
    assert (record["n_female"], record["n_male"], record["n_unclear"], record["n_unparsed"]) == (
        1,
        1,
        0,
        0,
    )
    assert record["answers"] == [None, None] and record["permutations"] == [None, None]


def test_detect_and_label_thresholds_are_passed_on():
    records = detect_and_label(_stream(1), FixedDetector(), WideIsMale(), conf=0.85)
    assert records[0]["n_persons"] == 1


def test_detect_and_label_keys_and_abstention():
    """The MLLM gets "<image_id>:<box>" keys; a crop that makes it raise abstains."""
    image_id = _image_id_with_female_third(":0")

    def answer_fn(crops, questions):
        if any(c.shape[-1] > 25 for c in crops):
            raise RuntimeError("face could not be detected")
        return ["C"] * len(crops)

    stream = [({"image_id": image_id}, torch.rand(3, 64, 64))]
    [record] = detect_and_label(stream, FixedDetector(), ChoiceLabeller(answer_fn))
    assert record["labels"] == ["female", "unclear"]
    assert (record["n_female"], record["n_unclear"], record["n_unparsed"]) == (1, 1, 1)
    assert record["answers"] == ["C", "face could not be detected"]
    assert shown_options(record["permutations"][0]) == dict(
        zip("ABCD", option_order(0, f"{image_id}:0"), strict=True)
    )
    assert record["permutations"][1] is None


@pytest.mark.parametrize(
    "image",
    [torch.rand(1, 64, 64), torch.rand(64, 64), torch.zeros(3, 8, 8, dtype=torch.uint8), "pixels"],
)
def test_detect_and_label_rejects_bad_images(image):
    with pytest.raises(InputError, match="img7"):
        detect_and_label([({"image_id": "img7"}, image)], FixedDetector(), WideIsMale())


# --- torchvision (random weights: plumbing only) ----------------------------------------


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_torchvision_detector_plumbing(one_thread, tmp_path):
    """Random weights find nobody in noise: this checks the shapes and types only."""
    from safetensors.torch import save_file

    detector = TorchvisionDetector(allow_random=True)
    boxes = detector([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    assert detector.name == "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    assert len(boxes) == 2
    assert all(isinstance(b, Box) for per_image in boxes for b in per_image)
    state = {k: v.contiguous() for k, v in detector.model.state_dict().items()}
    save_file(state, tmp_path / "det.safetensors")
    torch.save(state, tmp_path / "det.pth")
    for name in ("det.safetensors", "det.pth"):
        loaded = TorchvisionDetector(weights=tmp_path / name).model.state_dict()
        assert torch.equal(
            loaded["roi_heads.box_predictor.cls_score.weight"],
            state["roi_heads.box_predictor.cls_score.weight"],
        )


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_torchvision_detector_weights_errors(tmp_path):
    with pytest.raises(NotInstalledError, match="weights file"):
        TorchvisionDetector()
    with pytest.raises(InputError, match="does not exist"):
        TorchvisionDetector(weights=tmp_path / "missing.safetensors")
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="cannot load"):
        TorchvisionDetector(weights=tmp_path / "other.pth")
    with pytest.raises(ModelError):
        TorchvisionDetector(arch="no_such_detector", allow_random=True)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_torchvision_detector_without_torchvision():
    with pytest.raises(NotInstalledError, match="torchvision"):
        TorchvisionDetector(allow_random=True)
