import pytest
import torch
from chunking_helpers import train_planted_lm


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
    return train_planted_lm()
