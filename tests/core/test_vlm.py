import pytest
import torch

from lucidml.errors import InputError, ShapeError
from lucidml.testing import tiny_clip


@pytest.fixture(scope="module")
def vlm():
    return tiny_clip()


def test_embeddings_are_normalised_and_split_into_parts(vlm):
    x = torch.rand(4, 1, 8, 8)
    img = vlm.encode_images(x)
    assert img.shape == (4, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    with torch.no_grad():
        manual = vlm.image_projection(vlm.image_features(x))
    torch.testing.assert_close(torch.nn.functional.normalize(manual, dim=-1), img)
    txt = vlm.encode_texts(["the number one", "a handwritten two"])
    assert txt.shape == (2, 32)
    with torch.no_grad():
        manual_t = vlm.text_projection(vlm.text_features(["the number one"]))
    torch.testing.assert_close(torch.nn.functional.normalize(manual_t, dim=-1), txt[:1])


def test_zero_shot_is_scaled_cosine_with_template_mean(vlm):
    x = torch.rand(3, 1, 8, 8)
    templates = ["the number {}.", "a handwritten {}."]
    logits = vlm.zero_shot(x, ["zero", "one"], templates)
    t = vlm.encode_texts([t.format(c) for c in ["zero", "one"] for t in templates])
    cls = torch.nn.functional.normalize(t.view(2, 2, -1).mean(1), dim=-1)
    torch.testing.assert_close(logits, vlm.logit_scale * vlm.encode_images(x) @ cls.T)


def test_bad_inputs_are_user_errors(vlm):
    with pytest.raises(ShapeError, match="8x8"):
        vlm.encode_images(torch.rand(2, 1, 16, 16))
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        vlm.encode_images(torch.rand(8, 8))
    with pytest.raises(InputError, match="empty"):
        vlm.zero_shot(torch.rand(2, 1, 8, 8), [])
    assert len(vlm.vision_blocks) == 2
    assert vlm.vision_block_name(-1).endswith("layers.1")
