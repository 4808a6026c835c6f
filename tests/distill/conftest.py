import pytest
import torch

from lucidml.distill.config import EvalConfig


@pytest.fixture(scope="session", autouse=True)
def _distill_home(tmp_path_factory):
    """Teachers trained by these tests are cached in a throwaway LUCID_HOME."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LUCID_HOME", str(tmp_path_factory.mktemp("lucid_home")))
    yield
    mp.undo()


def tiny_config(**changes) -> EvalConfig:
    """A digits recipe small enough for unit tests (ConvNet-2, width 16, few epochs)."""
    base = EvalConfig.preset("digits-hard").model_copy(deep=True)
    cfg = base.updated(
        num_eval=3,
        lr_grid=[0.05],
        model=base.model.updated(width=16),
        recipe=base.recipe.updated(epochs=40, eval_every=10),
        real=base.real.updated(epochs=30, lr=0.05),
    )
    return cfg.updated(**changes)


@pytest.fixture(scope="session")
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
