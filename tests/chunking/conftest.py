import numpy as np
import pytest
import torch
from chunking_helpers import planted_rows


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small models run far faster on one thread than on two contended ones.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
