"""Planted-chunk token streams for the tiny-LM tests (not a conftest: importable by name)."""

import numpy as np
import torch

# chunks planted in the tiny LM's training stream (token ids; fillers are 3..29)
CHUNKS = ([30, 31, 32], [33, 34], [35, 36, 37, 38])


def planted_rows(
    n_rows: int,
    width: int,
    rng: np.random.Generator,
    p_chunk: float = 0.15,
    stray: int | None = None,
    p_stray: float = 0.0,
):
    """BOS then fillers, with a planted chunk starting at each step with ``p_chunk``;
    ``stray`` (a chunk token) replaces a filler with ``p_stray``, outside any chunk."""
    rows = []
    for _ in range(n_rows):
        row = [2]
        while len(row) < width:
            if rng.random() < p_chunk:
                row += CHUNKS[rng.integers(len(CHUNKS))]
            elif stray is not None and rng.random() < p_stray:
                row.append(stray)
            else:
                row.append(int(rng.integers(3, 30)))
        rows.append(row[:width])
    return torch.tensor(rows)


def train_planted_lm(**rows):
    """A 2-layer, 64-wide Llama trained on one thread for 150 AdamW steps on planted rows
    (``rows``: ``planted_rows``' options, e.g. a stray token); (model in eval mode, tokenizer)."""
    from lucidml.testing import tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = tiny_llama(words=[f"w{i}" for i in range(37)], hidden_size=64, num_layers=2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        x = planted_rows(16, 64, rng, **rows)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval(), tok


def lm_states(model, n_rows: int, seed: int):
    """(token ids, hidden_states per index, sentence ids) of fresh planted rows, flattened."""
    x = planted_rows(n_rows, 64, np.random.default_rng(seed))
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
    d = out.hidden_states[0].shape[-1]
    return (
        x.flatten().numpy(),
        [h.reshape(-1, d) for h in out.hidden_states],
        np.repeat(np.arange(n_rows), x.shape[1]),
    )


def byte_bpe_tokenizer(words):
    """An in-memory byte-level BPE tokenizer (GPT-2 style, like SmolLM2's) whose merges
    build each of ``words`` and its space-prefixed form, and nothing longer: "hotdog"
    is "hot" + "dog", " Grain" is "ĠG" + "rain", " coffeehouse" is "Ġcoffee" + "house"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "<pad>": 1, **{c: i + 2 for i, c in enumerate(alphabet)}}
    merges = []

    def merge(a, b):
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))

    for w in words:  # left to right, so the word is one piece ...
        for i in range(1, len(w)):
            merge(w[:i], w[i])
    for w in words:  # ... and then its space-prefixed form
        merge("\u0120", w)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", pad_token="<pad>")
