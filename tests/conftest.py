import os

# Tests never reach a hub: fail fast instead of waiting on network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist (make test runs two workers on two cores) each worker gets one
# thread: two workers with two torch threads each slow tiny models down many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits():
    from lucidml.core.zoo import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_clip():
    from lucidml.core.zoo import load_vlm

    return load_vlm("digits-clip")


@pytest.fixture(scope="session")
def smollm2():
    from lucidml.core.zoo import load_llm

    return load_llm()
