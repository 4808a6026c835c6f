"""Student architectures: ResNet-18/34 and ConvNet-BN, alone and stacked."""

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from lucidml.distill.models import ResNet, build_model, can_stack, stacked_forward


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet_parameter_counts_are_the_standard_ones():
    # CIFAR ResNet-18 (3x3 stem, no max-pool), 10 classes: the commonly quoted 11.17M
    assert n_params(build_model("resnet18", 3, 10, 32)) == 11_173_962
    assert n_params(build_model("resnet34", 3, 10, 32)) == 21_282_122
    # the ImageNet stem above 64 px: torchvision's resnet18 has 11,689,512 parameters
    assert n_params(build_model("resnet18", 3, 1000, 224)) == 11_689_512


def test_resnet_stem_depends_on_the_image_size():
    small, large = build_model("resnet18", 3, 10, 64), build_model("resnet18", 3, 10, 65)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("resnet18", 1, 4, 8)(torch.rand(3, 1, 8, 8)).shape == (3, 4)


def test_convnet_bn_has_no_conv_bias():
    bn = build_model("convnet", 3, 10, 32, depth=3, width=128, norm="batch")
    # 320,010 with instance norm minus the three conv biases (128 each) the BN cancels
    assert n_params(bn) == 320_010 - 3 * 128
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3


@pytest.mark.parametrize(
    "name,kw,size,tol",
    # ResNet-18's last BatchNorm normalises 6 values per channel (1x1 maps): float32
    # rounding of the grouped convolutions grows to ~1e-4 there
    [("convnet", {"depth": 2, "width": 8, "norm": "batch"}, 8, 1e-5), ("resnet18", {}, 4, 5e-4)],
)
def test_stacked_batchnorm_uses_each_members_statistics(name, kw, size, tol):
    models = [build_model(name, 3, 5, size, **kw) for _ in range(3)]
    params, buffers = stack_module_state(models)
    x = torch.rand(3, 6, 3, size, size)
    out = stacked_forward(models[0], params, x, buffers, training=True)  # updates buffers
    for g, m in enumerate(models):
        m.train()
        assert torch.allclose(out[g], m(x[g]), atol=tol)  # m(x) updates m's own buffers
        for k, v in m.named_buffers():
            assert torch.allclose(buffers[k][g], v, atol=tol), k
    assert int(buffers[next(k for k in buffers if "num_batches" in k)][0]) == 1
    shared = stacked_forward(models[0], params, x[0], buffers)  # eval: running statistics
    for g, m in enumerate(models):
        m.eval()
        assert torch.allclose(shared[g], m(x[0]), atol=tol)
    # the running statistics moved away from their initial (0, 1), so eval != train here
    assert not torch.allclose(shared[0], models[0].train()(x[0]), atol=1e-3)


def test_models_with_foreign_buffers_are_not_stacked():
    class Foreign(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4))

        def forward(self, x):
            return self.net(x)

    assert not can_stack(Foreign())
    assert can_stack(build_model("mlp", 3, 4, 2)) and can_stack(ResNet(3, 4, 8))
