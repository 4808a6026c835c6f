import pytest
import torch
from peft import LoraConfig

from lucidml.core.digits_clip import CLASS_NAMES
from lucidml.core.digits_diffusion import train_digits_diffusion
from lucidml.core.metrics import accuracy
from lucidml.errors import InputError


@pytest.fixture(scope="module")
def small_pipe(digits, digits_clip):
    subset = type(digits)(
        digits.train_x[:64],
        digits.train_y[:64],
        digits.test_x[:4],
        digits.test_y[:4],
        digits.class_names,
    )
    return train_digits_diffusion(subset, digits_clip, epochs=1, batch_size=32)


def test_sampling_shapes_range_and_seeds(small_pipe):
    a = small_pipe(
        ["a handwritten one.", "the number two."],
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(1),
    )
    b = small_pipe(
        ["a handwritten one.", "the number two."],
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(1),
    )
    assert a.shape == (2, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(InputError, match="empty"):
        small_pipe([])


def test_lora_adapter_starts_as_the_identity(small_pipe):
    unet = small_pipe.unet
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    ctx = small_pipe.encode_prompts(["a handwritten one.", "the number two."])
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=ctx).sample
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    try:
        with torch.no_grad():
            after = unet(x, t, encoder_hidden_states=ctx).sample
        trainable = [n for n, p in unet.named_parameters() if "lora" in n]
        assert trainable and all(("lora_A" in n) or ("lora_B" in n) for n in trainable)
        torch.testing.assert_close(before, after)  # B is zero-initialised
    finally:
        unet.delete_adapters("default")


@pytest.mark.slow
def test_digits_diffusion_draws_the_asked_digit(digits_clip):
    from lucidml.core.zoo import load_diffusion

    pipe = load_diffusion()
    labels = torch.arange(100) % 10
    images = pipe(
        [f"a handwritten {CLASS_NAMES[i]}." for i in labels],
        num_inference_steps=20,
        generator=torch.Generator().manual_seed(0),
    )
    assert accuracy(digits_clip.zero_shot(images, CLASS_NAMES), labels) >= 0.7
