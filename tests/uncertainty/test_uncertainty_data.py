"""Input readers and digit shifts."""

import numpy as np
import pytest
import torch

from lucidml.errors import InputError, ShapeError
from lucidml.uncertainty import data


def test_rotation_by_zero_is_identity_and_by_90_is_rot90():
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(data.rotate(x, degrees=0.0), x, rtol=0, atol=1e-6)
    rotated = data.rotate(x, seed=0, degrees=90.0)
    sign = torch.randint(0, 2, (4,), generator=torch.Generator().manual_seed(0)) * 2 - 1
    for img, out, s in zip(x, rotated, sign.tolist(), strict=True):
        expected = torch.rot90(img, k=s, dims=(1, 2))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_invert_and_noise_stay_in_range():
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(data.invert(data.invert(x)), x)
    noisy = data.add_noise(x, seed=1)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, x)


def test_pairs_folder_mismatch_and_bad_arrays(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((3, 8, 8), dtype=np.float32))
    (tmp_path / "captions.txt").write_text("a\nb\n")
    with pytest.raises(ShapeError, match="2 captions for 3 images"):
        data.read_pairs(str(tmp_path))
    np.save(tmp_path / "images.npy", np.zeros((3,), dtype=np.float32))
    with pytest.raises(ShapeError, match="expected a non-empty numeric"):
        data.read_pairs(str(tmp_path))
    (tmp_path / "images.npy").write_text("not numpy")
    with pytest.raises(InputError, match="not a readable"):
        data.read_pairs(str(tmp_path))


def test_labels_and_classes_are_checked(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((2, 1, 8, 8), dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.array([0.5, 1.0]))
    with pytest.raises(ShapeError, match="integers"):
        data.read_images(str(tmp_path))
    np.save(tmp_path / "labels.npy", np.array([0, 12]))
    x, y = data.read_images(str(tmp_path))
    with pytest.raises(InputError, match="0..9"):
        data.check_labels(y, 10, "image")
    with pytest.raises(InputError, match="unknown digits shift"):
        data.read_images("digits-blur")
    assert data.read_classes("digits")[0] == "zero"
