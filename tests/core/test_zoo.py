import pytest
import torch

from lucidml.core import zoo
from lucidml.core.metrics import accuracy
from lucidml.errors import ModelError


def test_load_digits_split_sizes_range_and_balance(digits):
    assert digits.train_x.shape == (1347, 1, 8, 8)
    assert digits.test_x.shape == (450, 1, 8, 8)
    assert digits.train_x.dtype == torch.float32
    assert digits.train_x.min() >= 0.0 and digits.train_x.max() <= 1.0
    test_counts = torch.bincount(digits.test_y, minlength=10).float()
    totals = test_counts + torch.bincount(digits.train_y, minlength=10)
    # stratified: each class keeps its share of the 450 test images, up to rounding
    assert (test_counts - totals * 450 / 1797).abs().max() <= 1.0
    assert len(digits.class_names) == 10
    again = zoo.load_digits()
    assert torch.equal(again.train_y, digits.train_y)


def test_available_lists_the_embedded_defaults():
    found = zoo.available()
    assert {
        "smollm2-135m-instruct",
        "minilm-l6",
        "digits",
        "digits-clip",
        "digits-diffusion",
    } <= set(found)
    assert all({"installed", "where", "how"} <= set(v) for v in found.values())


def test_unknown_model_is_a_user_error(monkeypatch):
    # the tests run offline: a hub id that is not cached says so
    with pytest.raises(ModelError, match="'no-such/model-xyz' is not an embedded default or a"):
        zoo.load_llm("no-such/model-xyz")
    monkeypatch.setattr(zoo, "hub_offline", lambda name: False)  # as if the hub had answered
    with pytest.raises(ModelError, match="unknown model 'no-such/clip-xyz'"):
        zoo.load_vlm("no-such/clip-xyz")


def test_local_clip_folder_loads_through_the_generic_path(tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from lucidml.core import digits_clip

    tok = digits_clip.build_tokenizer()
    cfg = digits_clip.build_config(len(tok), tok.eos_token_id)
    cfg.vision_config.num_channels, cfg.vision_config.image_size = 3, 16
    CLIPModel(cfg).save_pretrained(tmp_path)
    ip = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(tmp_path)
    vlm = zoo.load_vlm(str(tmp_path))
    logits = vlm.zero_shot(torch.rand(5, 3, 32, 32), ["zero", "one", "two"])
    assert logits.shape == (5, 3)
    assert vlm.encode_images(torch.rand(2, 1, 16, 16)).norm(dim=-1).allclose(torch.ones(2))


@pytest.mark.slow
def test_digits_clip_zero_shot_accuracy(digits, digits_clip):
    logits = digits_clip.zero_shot(digits.test_x, digits.class_names)
    assert accuracy(logits, digits.test_y) >= 0.85


def test_digits_clip_training_is_deterministic(digits):
    from lucidml.core.digits_clip import train_digits_clip

    small = type(digits)(
        digits.train_x[:128],
        digits.train_y[:128],
        digits.test_x[:8],
        digits.test_y[:8],
        digits.class_names,
    )
    a = train_digits_clip(small, epochs=2).encode_images(small.test_x)
    b = train_digits_clip(small, epochs=2).encode_images(small.test_x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    model, tok = smollm2
    enc = tok("Q: What is the capital of France?\nA:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])


@pytest.mark.slow
def test_minilm_embeds_paraphrases_closer_than_unrelated():
    enc = zoo.load_sentence_encoder()
    e = enc.encode(
        ["A cat sits on a mat.", "A kitten rests on a rug.", "Bond yields rose."],
        normalize_embeddings=True,
    )
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
