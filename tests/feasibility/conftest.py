import re

import numpy as np
import pytest
import torch
from feasibility_fixtures import OBJECTS, SEEN, STATES

from lucidml.feasibility.prompts import DEFAULT_NEGATIVES, INSTRUCTION
from lucidml.testing import tiny_llama, word_tokenizer


@pytest.fixture(scope="session")
def prompt_tokenizer():
    """A word tokenizer that spells every prompt of the fixture vocabulary."""
    text = INSTRUCTION + " Q: Does a an exist in the real world? A: Yes No "
    text += " ".join(w for pair in DEFAULT_NEGATIVES for w in pair)
    words = set(re.findall(r"\w+|[^\w\s]", text.lower())) | set(STATES) | set(OBJECTS)
    return word_tokenizer(sorted(words), max_length=512)


@pytest.fixture(scope="session")
def tiny_lm(prompt_tokenizer):
    """Rotary positions (Llama), float64."""
    model, tok = tiny_llama(tokenizer=prompt_tokenizer)
    return model.double(), tok


@pytest.fixture(scope="session")
def tiny_gpt2(prompt_tokenizer):
    """Absolute position embeddings (GPT-2), float64: padding must not shift positions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = prompt_tokenizer
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg).eval().double(), tok


@pytest.fixture
def seen_mask():
    mask = np.zeros((len(STATES), len(OBJECTS)), bool)
    for s, o in SEEN:
        mask[STATES.index(s), OBJECTS.index(o)] = True
    return mask
