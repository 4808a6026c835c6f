import numpy as np
import pytest
import torch

from lucidml.distill.data import check_distilled, load_distilled, random_subset
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
    lx, ly, soft = load_distilled(tmp_path / "set.pt", digits)
    assert torch.equal(lx, x) and torch.equal(ly, y) and soft is None
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
    fx, fy, _ = load_distilled(folder, digits)
    assert fx.shape == (4, 1, 8, 8) and sorted(fy.tolist()) == [0, 0, 1, 1]
    zeros = fx[fy == 0]  # files 0.png and 2.png of the 'zero' folder, in name order
    assert torch.allclose(zeros, x[[0, 2]], atol=0.5 / 255 + 1e-6)
    (folder / "seven-ish").mkdir()
    with pytest.raises(InputError, match="class folder 'seven-ish'"):
        load_distilled(folder, digits)
