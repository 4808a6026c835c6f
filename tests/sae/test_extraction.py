import copy

import numpy as np
import pytest
import torch
from PIL import Image

from lucidml.core.images import load_image_folder
from lucidml.errors import InputError, ModelError, ShapeError
from lucidml.sae.extraction import extract, resolve_layer
from lucidml.sae.store import ActivationStore
from lucidml.testing import tiny_clip

N_IMAGES, TOKENS, HIDDEN = 7, 17, 64


@pytest.fixture(scope="module")
def vlm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: more threads only contend
    yield tiny_clip()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    return torch.rand(N_IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hidden_states(vlm, images):
    with torch.no_grad():
        out = vlm.model.vision_model(pixel_values=vlm.preprocess(images), output_hidden_states=True)
    return out.hidden_states


@pytest.mark.parametrize("layer", [0, 1, "block.1"])
def test_block_rows_are_the_hidden_states(vlm, images, hidden_states, layer):
    _, block = resolve_layer(vlm, layer)
    expected = hidden_states[block + 1]
    cls = extract(vlm, images, layer, "cls", batch_size=3)
    torch.testing.assert_close(cls.to_tensor(), expected[:, 0], atol=1e-6, rtol=0)
    assert (cls.token == 0).all() and cls.meta["layer"] == f"block.{block}"
    mean = extract(vlm, images, layer, "mean")
    torch.testing.assert_close(mean.to_tensor(), expected.mean(1), atol=1e-6, rtol=0)
    assert (mean.token == -1).all()
    every = extract(vlm, images, layer, "all", batch_size=4)
    assert len(every) == N_IMAGES * TOKENS and every.d == HIDDEN
    torch.testing.assert_close(every.to_tensor(), expected.reshape(-1, HIDDEN), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(every.image_index, np.repeat(np.arange(N_IMAGES), TOKENS))
    np.testing.assert_array_equal(every.token, np.tile(np.arange(TOKENS), N_IMAGES))


def test_the_forward_stops_after_the_hooked_block(vlm, images):
    calls = []
    handle = vlm.vision_blocks[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        extract(vlm, images, 0)
    finally:
        handle.remove()
    assert calls == []


def test_random_k_tokens_are_distinct_patches_whatever_the_batch(vlm, images, hidden_states):
    one = extract(vlm, images, 1, "random_k", k=5, batch_size=1)
    seven = extract(vlm, images, 1, "random_k", k=5, batch_size=7)
    tokens = one.token.reshape(N_IMAGES, 5)
    assert all(len(set(row)) == 5 for row in tokens) and (tokens > 0).all()
    np.testing.assert_array_equal(one.token, seven.token)
    assert torch.equal(one.to_tensor(), seven.to_tensor())
    expected = hidden_states[2][one.image_index, one.token]
    torch.testing.assert_close(one.to_tensor(), expected, atol=1e-6, rtol=0)
    other_seed = extract(vlm, images, 1, "random_k", k=5, seed=1)
    assert not np.array_equal(other_seed.token, one.token)


def test_proj_rows_are_the_image_embeddings(vlm, images):
    for layer in (-1, "proj"):
        store = extract(vlm, images, layer)
        with torch.no_grad():
            torch.testing.assert_close(store.to_tensor(), vlm.image_embeddings(images))
        assert (store.token == -1).all() and store.meta["layer"] == "proj"
    with pytest.raises(InputError, match="one row per image"):
        extract(vlm, images, "proj", "all")


def test_bad_requests_are_refused(vlm, images):
    with pytest.raises(ModelError, match=r"layer 5 is out of range: tiny-clip has 2 vision blocks"):
        extract(vlm, images, 5)
    with pytest.raises(ModelError, match="not a layer"):
        resolve_layer(vlm, "block.x")
    with pytest.raises(InputError, match="k must lie in 1..16"):
        extract(vlm, images, 0, "random_k", k=17)
    with pytest.raises(InputError, match="tokens must be one of"):
        extract(vlm, images, 0, "patches")
    siglip_like = copy.copy(vlm)
    siglip_like.kind = "siglip"
    with pytest.raises(InputError, match="no CLS token"):
        extract(siglip_like, images, 0, "cls")
    with pytest.raises(ShapeError):
        extract(vlm, images[0], 0)
    with pytest.raises(InputError, match="NaN"):
        extract(vlm, torch.full((1, 1, 8, 8), float("nan")), 0)
    with pytest.raises(InputError, match="unique"):
        extract(vlm, images, 0, image_ids=["a"] * N_IMAGES)


def test_a_folder_store_round_trips_and_is_not_overwritten(vlm, images, tmp_path):
    store = extract(
        vlm, images, 0, "all", out=tmp_path / "acts", shard_rows=50, meta={"images": "digits"}
    )
    assert len(list((tmp_path / "acts").glob("shard-*.safetensors"))) == 3
    reopened = ActivationStore.open(tmp_path / "acts")
    assert torch.equal(reopened.to_tensor(), extract(vlm, images, 0, "all").to_tensor())
    assert reopened.meta["n_images"] == N_IMAGES and reopened.fingerprint() == store.fingerprint()
    assert reopened.meta["images"] == "digits" and reopened.meta["tokens"] == "all"
    with pytest.raises(InputError, match="already holds"):
        extract(vlm, images, 0, out=tmp_path / "acts")


def test_image_folders_give_ids_and_pixels(vlm, tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png", "sub/c.jpg"):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / name
        )
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    pixels, ids = load_image_folder(tmp_path / "imgs", channels=1, size=8)
    assert ids == ["a.png", "b.png", "sub/c.jpg"]
    assert pixels.shape == (3, 1, 8, 8) and pixels.min() >= 0 and pixels.max() <= 1
    assert load_image_folder(tmp_path / "imgs", channels=3, size=5)[0].shape == (3, 3, 5, 5)
    store = extract(vlm, tmp_path / "imgs", 1, "cls", batch_size=2)
    assert store.image_ids == ids
    torch.testing.assert_close(store.to_tensor(), extract(vlm, pixels, 1).to_tensor())

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        load_image_folder(tmp_path / "empty", 1, 8)
    with pytest.raises(InputError, match="does not exist"):
        extract(vlm, tmp_path / "missing", 0)
