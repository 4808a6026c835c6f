import numpy as np
import pytest
import torch

# chunks planted in the tiny LM's training stream (token ids; fillers are 3..29)
CHUNKS = ([30, 31, 32], [33, 34], [35, 36, 37, 38])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small models run far faster on one thread than on two contended ones.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_rows(n_rows: int, width: int, rng: np.random.Generator, p_chunk: float = 0.15):
    """BOS then fillers, with a planted chunk starting at each step with ``p_chunk``."""
    rows = []
    for _ in range(n_rows):
        row = [2]
        while len(row) < width:
            if rng.random() < p_chunk:
                row += CHUNKS[rng.integers(len(CHUNKS))]
            else:
                row.append(int(rng.integers(3, 30)))
        rows.append(row[:width])
    return torch.tensor(rows)


@pytest.fixture(scope="session")
def chunk_lm():
    """A 2-layer, 64-wide Llama trained for a few seconds on the planted chunks."""
    from lucidml.testing import tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = tiny_llama(words=[f"w{i}" for i in range(37)], hidden_size=64, num_layers=2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        x = planted_rows(16, 64, rng)
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
