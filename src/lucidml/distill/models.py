"""Student and teacher architectures: ConvNet-d, an MLP, and torchvision/timm by name."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from lucidml.errors import ConfigError, ModelError, NotInstalledError

NORMS = ("instance", "batch", "none")
POOLINGS = ("avg", "max", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":  # the reference's "instancenorm" is GroupNorm with one channel per group
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.Identity()


class ConvNet(nn.Module):
    """[conv3x3(width) -> norm -> ReLU -> pool2] x depth -> linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "instance",
        pooling: str = "avg",
    ):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm '{norm}': choose from {', '.join(NORMS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling '{pooling}': choose from {', '.join(POOLINGS)}")
        layers, channels, size = [], in_channels, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), _norm(norm, width), nn.ReLU()]
            if pooling != "none":
                if size < 2:
                    raise ConfigError(
                        f"ConvNet depth {depth} pools {image_size}px images below 1px; "
                        "use a smaller depth"
                    )
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (G, B, K) of G stacked ConvNets on x (G, B, C, H, W) or shared x (B, C, H, W).

        The G networks run as one grouped convolution: on CPU this is several times faster
        than vmap, whose GroupNorm rule falls back to a per-member loop.
        """
        groups = len(params["classifier.weight"])
        if x.ndim == 4:
            h = x.repeat(1, groups, 1, 1)
        else:
            h = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[-2:])
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                weight, bias = params[f"features.{i}.weight"], params[f"features.{i}.bias"]
                h = F.conv2d(h, weight.flatten(0, 1), bias.flatten(), padding=1, groups=groups)
            elif isinstance(layer, nn.GroupNorm):  # one channel per group: per-member safe
                h = F.group_norm(
                    h,
                    h.shape[1],
                    params[f"features.{i}.weight"].flatten(),
                    params[f"features.{i}.bias"].flatten(),
                    layer.eps,
                )
            elif isinstance(layer, nn.BatchNorm2d):
                raise ConfigError("stacked ConvNets cannot use BatchNorm; use norm 'instance'")
            else:
                h = layer(h)
        h = h.reshape(len(h), groups, -1).transpose(0, 1)
        return torch.baddbmm(
            params["classifier.bias"].unsqueeze(1), h, params["classifier.weight"].transpose(1, 2)
        )


class MLP(nn.Module):
    """Flatten -> [linear(width) -> ReLU] x depth -> linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        depth: int = 2,
        width: int = 128,
        **_unused,
    ):
        super().__init__()
        layers, features = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


MODELS = {"convnet": ConvNet, "mlp": MLP}


def stacked_forward(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Logits (G, B, K) of G copies of ``model`` holding stacked ``params``.

    x is (G, B, ...) with one batch per member, or (B, ...) shared by all members.
    """
    if isinstance(model, ConvNet):
        return model.stacked_forward(params, x)

    def logits_of(p, xb):
        return functional_call(model, p, (xb,))

    return vmap(logits_of, in_dims=(0, 0 if x.ndim == 5 else None))(params, x)


def _external(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if importlib.util.find_spec("timm") is not None:
        import timm

        if name in timm.list_models():
            return timm.create_model(name, num_classes=num_classes, in_chans=in_channels)
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        if name in torchvision.models.list_models():
            model = torchvision.models.get_model(name, num_classes=num_classes)
            if in_channels != 3:
                raise ModelError(f"torchvision model '{name}' expects 3-channel images")
            return model
        raise ModelError(
            f"unknown model '{name}': choose convnet, mlp, or a torchvision/timm model name"
        )
    raise NotInstalledError(
        f"model '{name}' is not built in (convnet, mlp); torchvision/timm models need "
        "pip install 'lucidml[vision]'"
    )


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int, **kwargs
) -> nn.Module:
    """A fresh model by registry name, or any torchvision/timm name when installed."""
    if name in MODELS:
        return MODELS[name](in_channels, num_classes, image_size, **kwargs)
    return _external(name, in_channels, num_classes)
