import pytest
import torch


@pytest.fixture
def float64():
    """Float64 defaults for the math tests, restored afterwards (other tests expect float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
