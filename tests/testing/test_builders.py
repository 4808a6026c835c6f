import torch

from lucidml.testing import char_tokenizer, tiny_clip, tiny_llama, tiny_sd_pipeline, word_tokenizer


def test_builders_are_seeded_and_offline():
    a, tok = tiny_llama()
    b, _ = tiny_llama()
    enc = tok(["the cat eats cake"], return_tensors="pt")
    torch.testing.assert_close(a(**enc).logits, b(**enc).logits)
    assert a.config.num_hidden_layers == 4
    assert tiny_clip().encode_texts(["one"]).shape == (1, 32)


def test_word_tokenizer_ids_and_eos_is_not_2():
    tok = word_tokenizer(["cheese", "cake"], add_eos=True)
    ids = tok("cheese cake")["input_ids"]
    assert ids[0] == tok.bos_token_id == 2
    assert ids[-1] == tok.eos_token_id == len(tok) - 1
    assert tok("pancake")["input_ids"][1] == tok.unk_token_id
    assert (
        char_tokenizer().decode(char_tokenizer()("a cat")["input_ids"], skip_special_tokens=True)
        == "a cat"
    )


def test_tiny_sd_pipeline_generates_images():
    pipe = tiny_sd_pipeline()
    out = pipe(
        ["a red cat"],
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (1, 32, 32, 3)
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0
