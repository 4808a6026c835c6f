import numpy as np
import pytest
import torch

from lucidml.distill.data import check_distilled, load_distilled, random_subset, to_unit_pixels
from lucidml.errors import InputError, ShapeError


def test_random_subset_exact_ipc_right_class_repeatable(digits):
    y = digits.train_y
    idx = random_subset(y, {c: 7 for c in range(10)}, seed=3)
    assert len(idx) == 70 and len(set(idx.tolist())) == 70
    assert torch.equal(torch.bincount(y[idx]), torch.full((10,), 7))
    assert torch.equal(idx, random_subset(y, {c: 7 for c in range(10)}, seed=3))
    assert not torch.equal(idx, random_subset(y, {c: 7 for c in range(10)}, seed=4))


def test_random_subset_ipc_too_large(digits):
    with pytest.raises(InputError, match="IPC 500 for class 0 is larger"):
        random_subset(digits.train_y, {0: 500}, 0)


def test_check_distilled_errors(digits):
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    check_distilled(x, y, digits)
    with pytest.raises(ShapeError, match="channel count"):
        check_distilled(torch.rand(20, 3, 8, 8), y, digits)
    with pytest.raises(ShapeError, match="image size"):
        check_distilled(torch.rand(20, 1, 16, 16), y, digits)
    with pytest.raises(ShapeError, match="expected \\(N, 1, 8, 8\\)"):
        check_distilled(torch.rand(20, 64), y, digits)
    with pytest.raises(ShapeError, match="one per image"):
        check_distilled(x, y[:5], digits)
    with pytest.raises(ShapeError, match=r"class indices in \[0, 9\]"):
        check_distilled(x, y + 5, digits)
    with pytest.raises(ShapeError, match="soft labels"):
        check_distilled(x, y, digits, torch.rand(20, 3))


def test_load_tensor_files_and_folders(digits, tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    x, y = digits.train_x[:20], digits.train_y[:20]
    torch.save({"images": x, "labels": y}, tmp_path / "set.pt")
    lx, ly, soft, scaling = load_distilled(tmp_path / "set.pt", digits)
    assert torch.equal(lx, x) and torch.equal(ly, y) and soft is None and scaling == "none"
    save_file({"x": x.contiguous(), "y": y.contiguous()}, str(tmp_path / "set.safetensors"))
    assert torch.equal(load_distilled(tmp_path / "set.safetensors", digits)[1], y)
    torch.save(x, tmp_path / "images.pt")
    torch.save(y, tmp_path / "labels.pt")
    assert torch.equal(load_distilled(tmp_path / "images.pt", digits, tmp_path / "labels.pt")[1], y)
    with pytest.raises(InputError, match="has no labels"):
        load_distilled(tmp_path / "images.pt", digits)
    with pytest.raises(InputError, match="do not exist"):
        load_distilled(tmp_path / "missing.pt", digits)
    folder = tmp_path / "imgs"
    for i in range(4):
        sub = folder / digits.class_names[i % 2]
        sub.mkdir(parents=True, exist_ok=True)
        arr = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(sub / f"{i}.png")
    fx, fy, _, _ = load_distilled(folder, digits)
    assert fx.shape == (4, 1, 8, 8) and sorted(fy.tolist()) == [0, 0, 1, 1]
    zeros = fx[fy == 0]  # files 0.png and 2.png of the 'zero' folder, in name order
    assert torch.allclose(zeros, x[[0, 2]], atol=0.5 / 255 + 1e-6)
    (folder / "seven-ish").mkdir()
    with pytest.raises(InputError, match="class folder 'seven-ish'"):
        load_distilled(folder, digits)


def test_uint8_images_are_divided_by_255(digits, tmp_path):
    x, y = (digits.train_x[:10] * 255).round().to(torch.uint8), digits.train_y[:10]
    torch.save({"images": x, "labels": y}, tmp_path / "u8.pt")
    loaded = load_distilled(tmp_path / "u8.pt", digits)
    assert loaded.input_scaling == "uint8/255"
    assert torch.allclose(loaded.x, digits.train_x[:10], atol=0.5 / 255 + 1e-6)


def test_input_norm_undoes_a_per_channel_normalisation(tmp_path):
    x = torch.rand(4, 3, 5, 5)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    back, scaling = to_unit_pixels(normalised, tmp_path / "f.pt", mean + std)
    assert scaling == "x*std+mean" and torch.allclose(back, x, atol=1e-6)
    with pytest.raises(InputError, match="one mean and one std, or 3 of each"):
        to_unit_pixels(normalised, tmp_path / "f.pt", [0.5, 0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.linspace(-2, 2.5, 64).view(1, 1, 8, 8), r"values in \[-2, 2.5\] as stored"),
        (torch.full((1, 1, 8, 8), float("nan")), "NaN or infinite"),
        (torch.full((1, 1, 8, 8), float("inf")), "NaN or infinite"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.int64), "dtype torch.int64"),
    ],
)
def test_pixels_outside_the_unit_range_are_refused(x, message, tmp_path):
    with pytest.raises(InputError, match=message):
        to_unit_pixels(x, tmp_path / "f.pt")


def test_a_slight_overshoot_is_kept_as_it_is(tmp_path):
    x = torch.linspace(-0.04, 1.04, 64).view(1, 1, 8, 8)
    kept, scaling = to_unit_pixels(x, tmp_path / "f.pt")
    assert scaling == "none" and torch.equal(kept, x)
