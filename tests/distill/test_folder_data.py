"""Folder datasets: streamed from disk through a DataLoader, resized, refused in one sentence."""

import numpy as np
import pytest
import torch
from PIL import Image

from lucidml.distill import data as data_module
from lucidml.distill.data import FolderImages, folder_images, load_dataset, read_folder
from lucidml.errors import InputError

# (class, file, width, height, grey level): mixed sizes in both splits
IMAGES = {
    "train": [
        ("cat", "a.png", 12, 10, 40),
        ("cat", "b.png", 12, 10, 80),
        ("dog", "c.png", 12, 10, 120),
        ("dog", "d.png", 12, 10, 160),
    ],
    "test": [("cat", "e.png", 30, 7, 200), ("dog", "f.png", 5, 5, 240)],
}


def _folder(root, images=IMAGES):
    for split, items in images.items():
        for cls, name, w, h, grey in items:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            rgb = np.full((h, w, 3), grey, dtype=np.uint8)
            rgb[0, 0] = (grey, 0, 255 - grey)  # one coloured pixel: RGB is kept
            Image.fromarray(rgb).save(root / split / cls / name)
    return root


def test_a_folder_dataset_is_resized_to_the_training_size(tmp_path):
    data = load_dataset("shapes", _folder(tmp_path / "shapes"))
    assert data.train_x.shape == (4, 3, 10, 12) and data.test_x.shape == (2, 3, 10, 12)
    assert data.class_names == ("cat", "dog") and data.train_y.tolist() == [0, 0, 1, 1]
    assert data.test_y.tolist() == [0, 1]
    # a flat grey image stays that grey whatever the resize; files in name order
    assert torch.allclose(data.train_x[1, :, 5, 5], torch.full((3,), 80 / 255))
    assert torch.allclose(data.test_x[1, :, 5, 6], torch.full((3,), 240 / 255))
    assert torch.allclose(data.train_x[0, :, 0, 0], torch.tensor([40, 0, 215]) / 255)


def test_an_image_size_resizes_mixed_training_images(tmp_path):
    mixed = {"train": IMAGES["test"] + IMAGES["train"][2:], "test": IMAGES["test"]}
    root = _folder(tmp_path / "mixed", mixed)
    with pytest.raises(InputError, match="images of different sizes .*image_size"):
        load_dataset("mixed", root)
    data = load_dataset("mixed", root, image_size=16)
    assert data.train_x.shape == (4, 3, 16, 16) and data.test_x.shape == (2, 3, 16, 16)
    assert torch.allclose(data.train_x[0, :, 8, 8], torch.full((3,), 200 / 255))


def test_folder_images_are_read_lazily_in_batches(tmp_path, monkeypatch):
    images, names = folder_images(_folder(tmp_path / "lazy") / "train", size=(4, 4))
    assert isinstance(images, FolderImages) and len(images) == 4 and names == ("cat", "dog")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a: opened.append(f) or real_open(f, *a))
    x, label = images[2]
    assert x.shape == (3, 4, 4) and label == 1 and [f.name for f in opened] == ["c.png"]
    loader = torch.utils.data.DataLoader(images, batch_size=3)
    assert [len(xb) for xb, _ in loader] == [3, 1]


@pytest.mark.parametrize("parallel_from", [10_000, 1])  # in process, and in 2 workers
def test_a_broken_image_is_one_sentence(tmp_path, monkeypatch, parallel_from):
    monkeypatch.setattr(data_module, "PARALLEL_READ_FROM", parallel_from)
    monkeypatch.setattr(data_module.os, "cpu_count", lambda: 2)
    root = _folder(tmp_path / "broken")
    png = root / "train" / "dog" / "d.png"
    png.write_bytes(png.read_bytes()[:20])
    images, _ = folder_images(root / "train", size=(4, 4))  # no header check: read fails
    with pytest.raises(InputError) as caught:
        read_folder(images)
    message = str(caught.value)
    assert message.startswith("cannot read image") and "d.png" in message
    assert "\n" not in message and "Traceback" not in message
