import pytest
import torch
from torch.func import stack_module_state

from lucidml.distill.models import build_model, stacked_forward
from lucidml.errors import ConfigError, NotInstalledError


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_convnet3_parameter_counts():
    assert n_params(build_model("convnet", 3, 10, 32, depth=3, width=128)) == 320_010
    assert n_params(build_model("convnet", 1, 10, 8, depth=3, width=128)) == 298_506


@pytest.mark.parametrize(
    "name,kw",
    [
        ("convnet", {"depth": 2, "width": 8}),
        ("convnet", {"depth": 1, "width": 4, "norm": "none", "pooling": "max"}),
        ("mlp", {"depth": 2, "width": 16}),
    ],
)
def test_stacked_forward_equals_each_model(name, kw):
    models = [build_model(name, 3, 5, 8, **kw) for _ in range(3)]
    params, _ = stack_module_state(models)
    x = torch.rand(3, 4, 3, 8, 8)
    out = stacked_forward(models[0], params, x)
    for g, m in enumerate(models):
        assert torch.allclose(out[g], m(x[g]), atol=1e-5)
    shared = stacked_forward(models[0], params, x[0])
    assert torch.allclose(shared[2], models[2](x[0]), atol=1e-5)


def test_bad_model_settings():
    with pytest.raises(ConfigError, match="below 1px"):
        build_model("convnet", 1, 10, 8, depth=4)
    with pytest.raises((NotInstalledError, Exception), match="resnet99|not built in"):
        build_model("resnet99", 3, 10, 32)
