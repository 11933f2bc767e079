"""The networks of the experiments, registered as the architectures ``banding-net`` and ``cifar-resnet`` by
``precompute/architectures.py`` (the one registry of builders; build them with ``architectures.build``).

Both are configured through keyword arguments only (``ModelSpec.arch_kwargs``), so a trained
variant is rebuilt from its record. Initialisation (:func:`init_weights`; the builders apply it
with gamma = 1, the trainer applies it again under the run's seed with the recipe's gamma rule):

- convolutions and linear layers: He-normal, ``kaiming_normal_(mode="fan_in", nonlinearity="relu")``
  (std = sqrt(2 / fan_in), fan_in = C/groups * kh * kw), as akamaster's CIFAR ResNets and Frankle et al.;
- BatchNorm beta = 0 and gamma = 1, or gamma ~ U[0, 1] (``bn_gamma="uniform"``, Frankle et al.'s
  BatchNorm-only recipe).

Module names are stable (they are the layer names of the cache):

- ``banding-net``: ``features.conv1..6`` / ``features.bn1..6`` / ``features.relu1..6`` with
  ``features.pool<g>`` (L2 pooling) after the groups in ``pool_after``, then ``pool`` (global average,
  x-only average, or identity), ``flatten``, ``fc``;
- ``cifar-resnet``: akamaster's layout ``conv1``, ``bn1``, ``relu``, ``layer1..3.<i>.conv1/bn1/relu1/
  conv2/bn2/relu2`` (+ parameterless ``shortcut``), ``pool``, ``flatten``, ``linear``; with ``depth=20,
  width=16, in_channels=3`` its state dict has exactly the keys of akamaster's ResNet-20 checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------- pooling modules
class L2Pool(nn.Module):
    """L2 pooling: sqrt(avg_pool(x^2) + eps), kernel 2, stride 2."""

    def __init__(self, kernel_size: int = 2, stride: int = 2, eps: float = 1e-6):
        super().__init__()
        self.kernel_size, self.stride, self.eps = kernel_size, stride, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(F.avg_pool2d(x * x, self.kernel_size, self.stride) + self.eps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) -> (B, C, 1, 1): mean over H and W (a plain mean: deterministic backward on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class XPool(nn.Module):
    """(B, C, H, W) -> (B, C, H, 1): average along x only (over W), keeping the y position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=3, keepdim=True)


HEADS = ("gap", "flatten", "xpool")


# ---------------------------------------------------------------------------- banding net
class BandingNet(nn.Module):
    """The simplified network of "Weight Banding" (Petrov et al. 2021), scaled down.

    6 groups of (3x3 conv, BatchNorm, ReLU) with widths ``channels`` (default from ``width``:
    w/2, w/2, w, w, 2w, 2w), L2 pooling after the groups listed in ``pool_after`` (default after groups
    2 and 4: a 28x28 input is seen at 28, 14 and 7, so groups 5 and 6 work at 7x7 like the article's
    5a/5b), then the head:

    - ``gap``: global average pooling, linear (the baseline);
    - ``flatten``: flatten (C*H*W), linear (no global average pooling);
    - ``xpool``: average along x only, flatten (C*H), linear.

    ``image_size`` (H, W) is needed to size the linear layer of the ``flatten`` and ``xpool`` heads.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 channels: Sequence[int] | None = None, pool_after: Sequence[int] = (2, 4),
                 head: str = "gap", image_size: Sequence[int] = (28, 28)):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
        channels = list(channels) if channels else [width // 2, width // 2, width, width, 2 * width, 2 * width]
        if len(channels) != 6 or min(channels) < 1:
            raise ValueError(f"channels must be 6 positive widths; got {channels}")
        h, w = (int(image_size), int(image_size)) if isinstance(image_size, int) else map(int, image_size)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = in_channels
        for g, c in enumerate(channels, start=1):
            layers[f"conv{g}"] = nn.Conv2d(c_in, c, 3, padding=1, bias=False)
            layers[f"bn{g}"] = nn.BatchNorm2d(c)
            layers[f"relu{g}"] = nn.ReLU()
            if g in pool_after and g < len(channels):
                layers[f"pool{g}"] = L2Pool()
                h, w = h // 2, w // 2
            c_in = c
        self.features = nn.Sequential(layers)
        self.head = head
        if head == "gap":
            self.pool, n_in = GlobalAvgPool(), c_in
        elif head == "xpool":
            self.pool, n_in = XPool(), c_in * h
        else:
            self.pool, n_in = nn.Identity(), c_in * h * w
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(n_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def banding_net(**kw) -> nn.Module:
    """The simplified net of the weight-banding article (see :class:`BandingNet`)."""
    return BandingNet(**kw)


# ---------------------------------------------------------------------------- CIFAR ResNet
class GroupedOptionA(nn.Module):
    """Option A shortcut (subsample by 2, zero-pad the new channels; no parameters).

    With ``groups`` > 1 the padding is done inside each group, so branch g of the input lands in
    branch g of the output; with ``groups=1`` it is exactly akamaster's (planes // 4 zeros each side).
    """

    def __init__(self, in_planes: int, planes: int, groups: int = 1):
        super().__init__()
        self.in_planes, self.planes, self.groups = in_planes, planes, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        g = self.groups
        extra = (self.planes - self.in_planes) // g
        b, c, h, w = x.shape
        x = x.reshape(b, g, c // g, h, w)
        x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x.reshape(b, self.planes, h, w)

    def extra_repr(self) -> str:
        return f"{self.in_planes} -> {self.planes}, groups={self.groups}"


class Block(nn.Module):
    """Basic block: conv-bn-relu, conv-bn, + shortcut, relu (ReLUs are modules so they can be hooked)."""

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int, padding_mode: str):
        super().__init__()
        conv = dict(kernel_size=3, padding=1, bias=False, groups=groups, padding_mode=padding_mode)
        self.conv1 = nn.Conv2d(in_planes, planes, stride=stride, **conv)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, stride=1, **conv)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = GroupedOptionA(in_planes, planes, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ConfigurableCifarResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) (He et al. 2016, option A shortcuts), configurable.

    ``depth`` 6n+2; stage widths ``width``, 2*width, 4*width; ``groups`` > 1 splits the convolutions of the
    first ``grouped_stages`` stages into that many branches (grouped convolutions; the 3x3 stem stays
    whole, the later stages merge the branches); ``padding_mode`` of every 3x3 conv ("zeros", "reflect",
    "replicate", "circular").
    """

    def __init__(self, depth: int = 20, width: int = 16, in_channels: int = 3, num_classes: int = 10,
                 groups: int = 1, grouped_stages: int = 2, padding_mode: str = "zeros"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...); got {depth}")
        if groups < 1 or width % groups:
            raise ValueError(f"groups must divide width; got groups={groups}, width={width}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be zeros, reflect, replicate or circular; got {padding_mode!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes_in = width
        for s, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2)], start=1):
            g = groups if s <= grouped_stages else 1
            blocks = []
            for i in range(n):
                blocks.append(Block(planes_in, width * mult, stride if i == 0 else 1, g, padding_mode))
                planes_in = width * mult
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.pool = GlobalAvgPool()
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(planes_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


def cifar_resnet(**kw) -> nn.Module:
    """Configurable CIFAR-style ResNet (see :class:`ConfigurableCifarResNet`)."""
    return ConfigurableCifarResNet(**kw)


# ---------------------------------------------------------------------------- initialisation
def init_weights(module: nn.Module, bn_gamma: str = "ones") -> None:
    """He-normal (fan_in) convs and linears, zero biases; BatchNorm beta 0, gamma 1 or U[0, 1].

    Draws from torch's global RNG, in module order: seed it first.
    """
    if bn_gamma not in ("ones", "uniform"):
        raise ValueError(f"bn_gamma must be 'ones' or 'uniform'; got {bn_gamma!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            if bn_gamma == "uniform":
                nn.init.uniform_(m.weight, 0.0, 1.0)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
