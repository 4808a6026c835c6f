"""Steering: the hook's algebra on a tiny CLIP, and monotone movement toward a latent."""

import pytest
import torch
import torch.nn.functional as F

from lucidml.core.hooks import capture
from lucidml.errors import InputError
from lucidml.sae.config import SAEConfig
from lucidml.sae.model import SAE
from lucidml.sae.steer import layer_module, steer, steer_tensor
from lucidml.testing import tiny_clip


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vlm = tiny_clip()
    sae = SAE(SAEConfig(kind="topk", d_in=64, expansion=2, k=4))
    with torch.no_grad():  # a non-zero decoder bias so the pre_zero identity is not trivial
        sae.b_dec.normal_()
    images = torch.rand(5, 1, 8, 8)
    return vlm, sae, images


def _block_output(vlm, images, layer=0):
    name = vlm.vision_block_name(layer)
    with torch.no_grad(), capture(vlm, [name]) as acts:
        vlm.encode_images(images)
    return acts[name]


def test_keep_error_with_own_value_reproduces_the_forward(setup):
    vlm, sae, images = setup
    plain = vlm.encode_images(images)
    with steer(vlm, sae, 0, latent=3, alpha=None):
        same = vlm.encode_images(images)
    assert torch.allclose(plain, same, atol=1e-5)


def test_steered_minus_unsteered_is_the_latent_direction(setup):
    vlm, sae, images = setup
    h = _block_output(vlm, images)
    alpha = 7.0
    out = steer_tensor(h, sae, 5, alpha, keep_error=True)
    f = sae.encode(h)[..., 5:6]
    expected = (alpha - f) * sae.W_dec[5]
    assert torch.allclose(out - h, expected, atol=1e-5)


def test_pre_zero_without_error_is_bias_plus_alpha_direction(setup):
    vlm, sae, images = setup
    h = _block_output(vlm, images)
    out = steer_tensor(h, sae, 2, 3.0, keep_error=False, pre_zero=True)
    expected = (sae.b_dec + 3.0 * sae.W_dec[2]).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_hooked_layer_output_moves_toward_the_decoder_direction(setup):
    vlm, sae, images = setup
    name = vlm.vision_block_name(0)
    cosines = []
    for alpha in (0.0, 2.0, 5.0, 10.0, 30.0):
        with steer(vlm, sae, 0, 1, alpha), capture(vlm, [name]) as acts:
            vlm.encode_images(images)
        h = acts[name].reshape(-1, 64)
        cosines.append(F.cosine_similarity(h, sae.W_dec[1][None], dim=-1).mean().item())
    assert all(b > a for a, b in zip(cosines, cosines[1:], strict=False)), cosines
    assert cosines[-1] > 0.9


def test_steering_the_last_block_changes_the_embedding(setup):
    vlm, sae, images = setup
    plain = vlm.encode_images(images)
    with steer(vlm, sae, 1, 0, 50.0):
        moved = vlm.encode_images(images)
    assert not torch.allclose(plain, moved, atol=1e-3)
    assert layer_module(vlm, "proj") == "model.visual_projection"


def test_bad_latent_and_alpha_are_refused(setup):
    vlm, sae, _ = setup
    with pytest.raises(InputError, match="out of range"), steer(vlm, sae, 0, 999, 1.0):
        pass
    with pytest.raises(InputError, match="finite"), steer(vlm, sae, 0, 0, float("nan")):
        pass
