"""Tiny randomly initialised models and offline tokenizers, for tests (ours and users').

Nothing here touches the network: every model is built from a config, every
tokenizer in memory. Each builder is seeded, so two calls give identical weights.
"""

from __future__ import annotations

import torch

from lucidml.core.tokenizers import char_tokenizer, word_tokenizer

__all__ = [
    "DEFAULT_WORDS",
    "char_tokenizer",
    "tiny_clip",
    "tiny_llama",
    "tiny_sd_pipeline",
    "word_tokenizer",
]

DEFAULT_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "on",
    "and",
    "is",
    "was",
    "it",
    "that",
    "this",
    "with",
    "for",
    "as",
    "at",
    "by",
    "from",
    "not",
    "but",
    "or",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "car",
    "sun",
    "moon",
    "sky",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "old",
    "new",
    "cheese",
    "cake",
    "cheesecake",
    "pan",
    "pancake",
    "apple",
    "pie",
    "bread",
    "milk",
    "tea",
    "coffee",
    "water",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
    "my",
    "your",
    "his",
    "her",
    "our",
    "their",
    "one",
    "two",
    "three",
    "four",
    "five",
    "eats",
    "likes",
    "sees",
    "has",
    "runs",
    "sits",
    "loves",
    "makes",
    "takes",
    "gives",
    ".",
    ",",
    "?",
    "!",
    ":",
    "q",
    "capital",
    "paris",
    "france",
]


def tiny_llama(
    words=DEFAULT_WORDS,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    seed: int = 0,
    tokenizer=None,
):
    """(LlamaForCausalLM, tokenizer): a 4-layer, 32-wide Llama over a word vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or word_tokenizer(words, max_length=128)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def tiny_clip(image_size: int = 8, channels: int = 1, seed: int = 0):
    """A randomly initialised digits-clip-shaped VisionLanguageModel (untrained)."""
    from transformers import CLIPModel

    from lucidml.core import digits_clip
    from lucidml.core.vlm import VisionLanguageModel

    tok = digits_clip.build_tokenizer()
    cfg = digits_clip.build_config(len(tok), tok.eos_token_id)
    cfg.vision_config.image_size, cfg.vision_config.num_channels = image_size, channels
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    return VisionLanguageModel(
        model,
        tok,
        kind="clip",
        name="tiny-clip",
        image_size=image_size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        templates=digits_clip.TEMPLATES[:1],
        resize=False,
    )


def tiny_sd_pipeline(seed: int = 0, sample_size: int = 32):
    """A tiny Stable Diffusion pipeline: UNet (32, 64), VAE [32, 64], CLIP text encoder (32)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = char_tokenizer(max_length=32)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size // 4,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        norm_num_groups=8,
        sample_size=sample_size,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
