"""Student and teacher architectures: ConvNet-d, ResNet-18/34, an MLP, and torchvision/timm
by name.

ConvNet and ResNet write their forward pass once, as ``run(x, layer)``, where ``layer(module,
h)`` applies one layer. A single model passes ``_plain`` (the module itself); G stacked
copies pass a ``_Grouped`` layer, which runs all G on the grouped layout (B, G*C, H, W):
convolutions as one grouped convolution, and each norm over its own member's channels.
BatchNorm in that layout is plain BatchNorm over G*C channels, so every member gets its
own batch statistics and its own running buffers.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from lucidml.errors import ConfigError, ModelError, NotInstalledError

NORMS = ("instance", "batch", "none")
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
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
        # BatchNorm subtracts the batch mean, so a bias before it has a zero gradient up to
        # rounding, which Adam scales up into a random walk that the running mean then lags
        # behind at evaluation: left out, as in torchvision (the reference keeps it).
        bias = norm != "batch"
        for _ in range(depth):
            conv = nn.Conv2d(channels, width, 3, padding=1, bias=bias)
            layers += [conv, _norm(norm, width), nn.ReLU()]
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
        return self.run(x, _plain)

    def run(self, x: torch.Tensor, layer) -> torch.Tensor:
        for module in self.features:
            x = layer(module, x)
        return layer(self.classifier, x.flatten(1))


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the (projected) input, -> ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), _norm(norm, channels)
            )

    def run(self, x: torch.Tensor, layer) -> torch.Tensor:
        out = F.relu(layer(self.bn1, layer(self.conv1, x)))
        out = layer(self.bn2, layer(self.conv2, out))
        shortcut = x
        if self.downsample is not None:
            shortcut = layer(self.downsample[1], layer(self.downsample[0], x))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet-18/34: four stages of basic blocks (``blocks`` per stage: (2, 2, 2, 2) or
    (3, 4, 6, 3)) of widths ``width`` x 1, 2, 4, 8, with ``width`` 64 as in the paper.
    Inputs of at most 64 px get the CIFAR stem of the reference's evaluation model: one
    conv3x3 with stride 1 and no max-pool; larger inputs get the ImageNet stem (conv7x7
    with stride 2, then a 3x3 max-pool). Module names follow torchvision's."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        blocks: tuple[int, ...] = RESNET_BLOCKS["resnet18"],
        norm: str = "batch",
        width: int = 64,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm '{norm}': choose from {', '.join(NORMS)}")
        small = image_size <= 64
        self.conv1 = nn.Conv2d(
            in_channels, width, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False
        )
        self.bn1 = _norm(norm, width)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        stages, channels = [], width
        for i, count in enumerate(blocks):
            stage = []
            for b in range(count):
                stride = 2 if b == 0 and i > 0 else 1
                stage.append(BasicBlock(channels, width * 2**i, stride, norm))
                channels = width * 2**i
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.run(x, _plain)

    def run(self, x: torch.Tensor, layer) -> torch.Tensor:
        x = layer(self.maxpool, F.relu(layer(self.bn1, layer(self.conv1, x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block.run(x, layer)
        return layer(self.fc, F.adaptive_avg_pool2d(x, 1).flatten(1))


def _plain(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


class _Grouped:
    """``layer(module, h)`` for G stacked members on the grouped layout (B, G*C, H, W).

    Channels are member-major (member g owns channels g*C ... g*C + C - 1), so a
    convolution with ``groups * G`` groups, a GroupNorm with ``num_groups * G`` groups and
    a BatchNorm over G*C channels each act on one member's channels only. BatchNorm in
    training updates the stacked running buffers in place (the flattened buffers are
    views), as ``nn.BatchNorm2d`` does for one model. A Linear layer ends the network: it
    takes (B, G*F) and returns the logits (G, B, K).
    """

    def __init__(self, base: nn.Module, params: dict, buffers: dict, groups: int, training: bool):
        self.names = {id(m): name for name, m in base.named_modules()}
        self.params, self.buffers = params, buffers
        self.groups, self.training = groups, training

    def _flat(self, store: dict, name: str) -> torch.Tensor | None:
        value = store.get(name)
        return None if value is None else value.flatten()

    def __call__(self, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        name, g = self.names[id(module)], self.groups
        weight, bias = self.params.get(f"{name}.weight"), self.params.get(f"{name}.bias")
        if isinstance(module, nn.Conv2d):
            return F.conv2d(
                h,
                weight.flatten(0, 1),
                None if bias is None else bias.flatten(),
                module.stride,
                module.padding,
                module.dilation,
                module.groups * g,
            )
        if isinstance(module, nn.Linear):
            h = h.reshape(len(h), g, -1).transpose(0, 1)
            if bias is None:
                return torch.bmm(h, weight.transpose(1, 2))
            return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        weight = None if weight is None else weight.flatten()
        bias = None if bias is None else bias.flatten()
        if isinstance(module, nn.GroupNorm):
            return F.group_norm(h, module.num_groups * g, weight, bias, module.eps)
        if isinstance(module, nn.BatchNorm2d):
            return self._batch_norm(module, name, h, weight, bias)
        return module(h)  # ReLU, pooling, Identity: per channel already

    def _batch_norm(self, module, name, h, weight, bias):
        mean = self._flat(self.buffers, f"{name}.running_mean")
        var = self._flat(self.buffers, f"{name}.running_var")
        momentum = module.momentum
        if self.training and module.track_running_stats:
            tracked = self.buffers[f"{name}.num_batches_tracked"]
            tracked.add_(1)
            if momentum is None:  # cumulative average, as in nn.BatchNorm2d
                momentum = 1.0 / float(tracked[0])
        batch_stats = self.training or mean is None
        return F.batch_norm(h, mean, var, weight, bias, batch_stats, momentum or 0.0, module.eps)


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


MODELS = {"convnet": ConvNet, "mlp": MLP, **{name: ResNet for name in RESNET_BLOCKS}}
GROUPED_MODELS = (ConvNet, ResNet)  # written as run(x, layer): stackable as grouped layers


def can_stack(model: nn.Module) -> bool:
    """Whether ``stacked_forward`` can train G copies of ``model`` together: a built-in
    ConvNet or ResNet (BatchNorm included), or any model without buffers (through vmap)."""
    return isinstance(model, GROUPED_MODELS) or not any(True for _ in model.buffers())


def stacked_forward(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    buffers: dict[str, torch.Tensor] | None = None,
    training: bool = False,
) -> torch.Tensor:
    """Logits (G, B, K) of G copies of ``model`` holding stacked ``params`` and ``buffers``.

    x is (G, B, C, H, W) with one batch per member, or (B, C, H, W) shared by all members.
    ``training`` is the modules' train mode: BatchNorm then normalises with each member's
    batch statistics and updates its running buffers in place, as ``model.train()`` would;
    otherwise it uses the running buffers.

    ConvNets and ResNets run as grouped convolutions: on CPU this is several times faster
    than vmap, whose GroupNorm rule falls back to a per-member loop, and vmap has no rule
    for BatchNorm's in-place buffer updates. Other models go through vmap.
    """
    if isinstance(model, GROUPED_MODELS):
        if buffers is None and any(True for _ in model.buffers()):
            raise ConfigError("stacking a model with BatchNorm needs its stacked buffers")
        groups = len(next(iter(params.values())))
        if x.ndim == 4:
            h = x.repeat(1, groups, 1, 1)
        else:
            h = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[-2:])
        return model.run(h, _Grouped(model, params, buffers or {}, groups, training))
    if not can_stack(model):
        raise ConfigError(
            f"{type(model).__name__} keeps buffers (e.g. BatchNorm statistics), which only the "
            "built-in convnet and resnet models stack; use engine 'sequential'"
        )

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
            f"unknown model '{name}': choose {', '.join(MODELS)}, or a torchvision/timm model name"
        )
    raise NotInstalledError(
        f"model '{name}' is not built in ({', '.join(MODELS)}); torchvision/timm models need "
        "pip install 'lucidml[vision]'"
    )


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int, **kwargs
) -> nn.Module:
    """A fresh model by registry name, or any torchvision/timm name when installed."""
    if name in RESNET_BLOCKS:
        return ResNet(in_channels, num_classes, image_size, RESNET_BLOCKS[name], **kwargs)
    if name in MODELS:
        return MODELS[name](in_channels, num_classes, image_size, **kwargs)
    return _external(name, in_channels, num_classes)
