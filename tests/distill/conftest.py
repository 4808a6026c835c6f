import pytest
import torch
from distill_fixtures import tiny_config


@pytest.fixture(scope="session")
def _distill_home_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lucid_home")


@pytest.fixture(scope="module", autouse=True)
def _distill_home(_distill_home_dir):
    """Teachers trained by these tests are cached in a throwaway LUCID_HOME, only while
    distill tests run (other systems keep the real cache of embedded models)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LUCID_HOME", str(_distill_home_dir))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
