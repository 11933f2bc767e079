"""The default zoo on real weights: every model loads strictly and runs, and each real model passes
a check that it is the trained network it claims to be (not just tensors of the right shapes).

The weight wheels are fetched with pip into the persistent test store on first use (see conftest);
each model is loaded once per session.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from precompute.architectures import ARCHITECTURES, build, default_input_size, keras_flatten_to_torch
from precompute.models import DEFAULT_ZOO, URLS, WHEELS
from precompute.sources import PypiWheel, ZooDirOrUrl, default_convert, load_state_dict_strict, read_checkpoint
from precompute.zoo import MODELS, ModelSpec

torch.set_num_threads(min(torch.get_num_threads(), 4))

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 504, 968}  # espresso, coffee mug, cup
EXPECTED_ZOO = [
    "mobilenet-v2-imagenet", "mobilenet-v2-imagenet-b", "efficientnet-lite0-imagenet",
    "efficientnet-lite1-imagenet", "efficientnet-lite2-imagenet", "vgg16-hed", "vgg16-bn-craft",
    "cifar10-cnn", "resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10", "resnet56-cifar10",
    "mobilenet-v2-random", "efficientnet-lite0-random", "efficientnet-lite1-random",
    "efficientnet-lite2-random", "vgg16-random", "vgg16-bn-random", "cifar10-cnn-random",
    "resnet20-random", "resnet32-random", "resnet44-random", "resnet56-random",
]


# --------------------------------------------------------------------------- loading, once


class Zoo:
    """Loads each model once per session: build the architecture, let the source load into it."""

    def __init__(self, settings):
        self.settings = settings
        self.cache: dict[str, tuple[nn.Module, str | None]] = {}

    def spec(self, name: str) -> ModelSpec:
        return MODELS.get(name)

    def skip_if_unavailable(self, spec: ModelSpec) -> None:
        if isinstance(spec.source, ZooDirOrUrl) and spec.source.status(self.settings) != "ready":
            pytest.skip(f"{spec.name}: no local copy (zoo dir {self.settings.zoo_dir} not set or lacks it) "
                        f"and GitHub is not reachable from the test machines")

    def __call__(self, name: str) -> nn.Module:
        return self.load(name)[0]

    def load(self, name: str) -> tuple[nn.Module, str | None]:
        if name not in self.cache:
            spec = self.spec(name)
            self.skip_if_unavailable(spec)
            module = build(spec.arch, **spec.arch_kwargs)
            sha = spec.source.load_into(module, spec, self.settings)
            self.cache[name] = (module.eval(), sha)
        return self.cache[name]


@pytest.fixture(scope="session")
def zoo(settings) -> Zoo:
    return Zoo(settings)


def preprocess(img: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """uint8 HxWx3 -> (1, C, H, W): resize shorter side, center crop, normalise with the spec."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255
    size = spec.input_size[1]
    pre = spec.extra.get("preprocess", {})
    mode = InterpolationMode.BICUBIC if pre.get("interpolation") == "bicubic" else InterpolationMode.BILINEAR
    x = TF.resize(x, pre.get("resize", size), interpolation=mode, antialias=True)
    x = TF.center_crop(x, [size, size])
    return TF.normalize(x, spec.mean, spec.std)[None]


# --------------------------------------------------------------------------- registry


def test_default_zoo_names_and_metadata():
    assert DEFAULT_ZOO == EXPECTED_ZOO
    for name in DEFAULT_ZOO:
        spec = MODELS.get(name)
        json.dumps(spec.public())  # JSON-able, source included
        assert spec.input_size == tuple(spec.input_size) and len(spec.input_size) == 3
        assert spec.family == ("random" if name.endswith("-random") else "real")
        assert spec.arch in ARCHITECTURES and spec.license and spec.origin
    for name in ["resnet18-imagenet", "resnet50-imagenet", "vgg16-imagenet", "alexnet-imagenet",
                 "googlenet-imagenet", "inception-v3-imagenet"]:
        assert name in MODELS and name not in DEFAULT_ZOO
    assert MODELS.get("inception-v3-imagenet").input_size == (3, 299, 299)
    assert MODELS.get("efficientnet-lite2-imagenet").input_size == (3, 260, 260)
    assert default_input_size("efficientnet-lite1") == (3, 240, 240)
    assert "mobilenet-v2-features-random" not in MODELS


def test_wheels_lock_matches_the_sources():
    for package, version, member, sha in WHEELS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", sha)
    used = {(s.source.package, s.source.version, s.source.member, s.source.sha256)
            for s in map(MODELS.get, DEFAULT_ZOO) if isinstance(s.source, PypiWheel)}
    assert used == set(WHEELS.values())


def test_url_table_is_torchvisions():
    """The URL models' addresses, checksum prefixes and accuracies are torchvision's own."""
    import torchvision.models as tvm

    enums = {"resnet18": tvm.ResNet18_Weights, "resnet50": tvm.ResNet50_Weights, "vgg16": tvm.VGG16_Weights,
             "alexnet": tvm.AlexNet_Weights, "googlenet": tvm.GoogLeNet_Weights,
             "inception-v3": tvm.Inception_V3_Weights}
    for key, enum in enums.items():
        w = enum.IMAGENET1K_V1
        url, sha, acc = URLS[key]
        assert url == w.url
        assert re.search(rf"-{sha}\.pth$", url)
        assert acc == w.meta["_metrics"]["ImageNet-1K"]["acc@1"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18-imagenet", "resnet50-imagenet", "vgg16-imagenet", "alexnet-imagenet",
                                  "googlenet-imagenet", "inception-v3-imagenet"])
def test_url_models_accept_torchvision_checkpoints(name):
    """Offline stand-in for the download: a state dict laid out as torchvision's weight file is
    (built the way torchvision builds the model when it loads weights) loads strictly."""
    import torchvision.models as tvm

    spec = MODELS.get(name)
    builders = {"resnet18-imagenet": lambda: tvm.resnet18(), "resnet50-imagenet": lambda: tvm.resnet50(),
                "vgg16-imagenet": lambda: tvm.vgg16(init_weights=False), "alexnet-imagenet": lambda: tvm.alexnet(),
                # torchvision loads these with the auxiliary heads, then drops GoogLeNet's
                "googlenet-imagenet": lambda: tvm.googlenet(aux_logits=True, init_weights=False),
                "inception-v3-imagenet": lambda: tvm.inception_v3(aux_logits=True, init_weights=False)}
    sd = builders[name]().state_dict()
    module = build(spec.arch, **({"init_weights": False} if spec.arch == "vgg16-full" else {}))
    load_state_dict_strict(module, (spec.convert or default_convert)(sd, module), file="torchvision layout", arch=spec.arch)
    key = next(iter(module.state_dict()))
    assert torch.equal(module.state_dict()[key], sd[key])


# --------------------------------------------------------------------------- every default model


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT_ZOO)
def test_default_model_loads_and_runs(name, zoo, settings):
    spec = zoo.spec(name)
    zoo.skip_if_unavailable(spec)
    module, sha = zoo.load(name)
    assert spec.source.status(settings) == "ready"
    if spec.family == "random":
        assert sha is None
    else:
        assert sha is not None and sha.startswith(spec.source.describe()["sha256"])
    x = torch.randn(1, *spec.input_size)
    with torch.no_grad():
        y = module(x)
    if isinstance(y, tuple):  # not expected in the default zoo
        y = y[0]
    assert torch.isfinite(y).all()
    if spec.arch in ("vgg16", "vgg16-bn", "mobilenet-v2-features"):  # conv stacks: feature maps
        assert y.ndim == 4 and y.shape[0] == 1
    else:
        n = 10 if spec.dataset == "cifar10" else 1000
        assert y.shape == (1, n)


# --------------------------------------------------------------------------- ImageNet classifiers


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet-v2-imagenet", "efficientnet-lite0-imagenet",
                                  "efficientnet-lite1-imagenet", "efficientnet-lite2-imagenet"])
def test_imagenet_classifier_recognises_photos(name, zoo):
    """Proves the whole network and its preprocessing: scikit-image's coffee photo is classified as
    espresso/cup/mug and its cat photo (Chelsea) as a cat. A random or mis-mapped network would
    land on one of 1000 classes essentially at random. Observed top-1: all four models say
    espresso (967) for the coffee; Chelsea is Egyptian cat (285) for MobileNetV2, Lite1 and Lite2,
    tiger cat (282) for Lite0."""
    spec = zoo.spec(name)
    module = zoo(name)
    with torch.no_grad():
        coffee = module(preprocess(data.coffee(), spec)).softmax(-1)[0]
        cat = module(preprocess(data.chelsea(), spec)).softmax(-1)[0]
    assert int(coffee.argmax()) in IMAGENET_COFFEE, coffee.topk(3)
    assert int(cat.argmax()) in IMAGENET_CATS, cat.topk(3)
    assert float(cat[list(IMAGENET_CATS)].sum()) > 0.5  # most of the mass on cats, not a lucky argmax
    assert float(coffee[list(IMAGENET_COFFEE)].sum()) > 0.4


# --------------------------------------------------------------------------- MobileNetV2 (b)


def _skimage_photos() -> list[np.ndarray]:
    from skimage import color

    out = []
    for n in ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
              "retina", "colorwheel", "camera", "brick", "grass", "gravel", "moon", "text", "page",
              "clock", "coins", "cell"]:
        try:
            im = getattr(data, n)()
        except Exception:  # some images need the optional pooch download
            continue
        if im.ndim == 2:
            im = color.gray2rgb(im)
        if im.dtype != np.uint8:
            im = (np.clip(im, 0, 1) * 255).astype(np.uint8) if im.max() <= 1 else im.astype(np.uint8)
        out.append(im[..., :3])
    return out


def _linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))


@pytest.mark.slow
def test_mobilenet_b_is_an_independent_imagenet_mobilenet(zoo):
    """deep-sort's MobileNetV2 has no classifier, and its features cannot be put under torchvision's
    classifier (independent training: channels are not aligned; tried, it gives nonsense). What it
    can be checked against: two ImageNet-trained networks represent the same images alike, so the
    linear CKA between their pooled features over a set of photos is high (observed ~0.93), while
    a random MobileNetV2's features are not (observed ~0.25); and its features separate a flipped
    copy of the cat photo (same image) from other photos, which random features hardly do.
    Proves: trained ImageNet-like weights in the right places; it does not prove the exact dataset."""
    spec = zoo.spec("mobilenet-v2-imagenet-b")
    b = zoo("mobilenet-v2-imagenet-b")
    tv = zoo("mobilenet-v2-imagenet").features
    rand = zoo("mobilenet-v2-random").features
    x = torch.cat([preprocess(im, spec) for im in _skimage_photos()])
    assert len(x) >= 12
    with torch.no_grad():
        fb, ftv, fr = (F.adaptive_avg_pool2d(m(x), 1).flatten(1) for m in (b, tv, rand))
    assert not torch.equal(b[0][0].weight, tv[0][0].weight)  # really a second network
    assert _linear_cka(fb, ftv) > 0.8
    assert _linear_cka(fr, ftv) < 0.5

    def cos(m, p, q):
        with torch.no_grad():
            f = F.adaptive_avg_pool2d(m(torch.cat([preprocess(p, spec), preprocess(q, spec)])), 1).flatten(1)
        return float(F.cosine_similarity(f[0], f[1], 0))

    cat, flipped, coffee = data.chelsea(), data.chelsea()[:, ::-1], data.coffee()
    assert cos(b, cat, flipped) > 0.9 and cos(b, cat, coffee) < 0.6
    assert cos(rand, cat, coffee) > 0.9  # random features: everything looks alike


# --------------------------------------------------------------------------- VGG16 HED


def _hed_edges(features: nn.Sequential, h5: dict, x: torch.Tensor) -> torch.Tensor:
    """HED's fused edge probability (Xie & Tu 2015) computed from the loaded conv stack plus the
    side-output weights read straight from the h5: 1x1 convs on conv1_2, conv2_2, conv3_3, conv4_3,
    conv5_3 (after ReLU), upsampled bilinearly, fused by a 1x1 conv, sigmoid."""
    taps = {3: "dsn1", 8: "dsn2", 15: "dsn3", 22: "dsn4", 29: "dsn5"}
    size, sides = x.shape[2:], []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            w = torch.from_numpy(h5[f"{taps[i]}/vars/0"]).permute(3, 2, 0, 1)
            side = F.conv2d(x, w, torch.from_numpy(h5[f"{taps[i]}/vars/1"]))
            sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
    w = torch.from_numpy(h5["fuse/vars/0"]).permute(3, 2, 0, 1)
    return torch.sigmoid(F.conv2d(torch.cat(sides, 1), w, torch.from_numpy(h5["fuse/vars/1"])))[0, 0]


@pytest.mark.slow
def test_vgg16_hed_detects_edges(zoo, settings):
    """All 13 convs come from the h5 (kernels HWIO -> OIHW, first conv BGR -> RGB), and with HED's
    own side outputs the loaded stack is a working edge detector: on a flat image with one coloured
    rectangle, the edge probability is high on the rectangle's outline (observed ~0.75) and near zero
    away from it (~0.01 outside, ~0.0 inside). The same side outputs on the random VGG16 give
    ~0.25-0.35 everywhere. A wrong conv order within a block, a missed transpose of the channel axes
    or a wrong mean would break this; a swap of kh and kw would not (it transposes the whole
    computation, and an outline is an outline either way): that convention is checked on the Keras
    CIFAR-10 CNN below, where the numpy reference does tell."""
    spec = zoo.spec("vgg16-hed")
    module = zoo("vgg16-hed")
    h5 = read_checkpoint(spec.source.fetch(settings))
    convs = [m for m in module if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    k = h5["block3/layers/conv2d_2/vars/0"]  # conv3_3
    assert torch.equal(convs[6].weight, torch.from_numpy(k).permute(3, 2, 0, 1))
    k0 = torch.from_numpy(h5["block1/layers/conv2d/vars/0"]).permute(3, 2, 0, 1)
    assert torch.equal(convs[0].weight, k0.flip(1))  # input channels reversed: takes RGB

    H, W = 160, 240  # half the native size, to keep the test fast; HED is fully convolutional
    img = np.full((H, W, 3), 0.3, np.float32)
    img[40:120, 80:160] = [0.8, 0.6, 0.4]
    outline = np.zeros((H, W), bool)
    outline[38:43, 78:163] = outline[117:122, 78:163] = outline[38:122, 78:83] = outline[38:122, 157:162] = True
    inside = np.zeros((H, W), bool)
    inside[60:100, 100:140] = True
    outside = np.ones((H, W), bool)
    outside[25:135, 65:175] = False
    outside[:12] = outside[-12:] = outside[:, :12] = outside[:, -12:] = False  # image border
    x = TF.normalize(torch.from_numpy(img).permute(2, 0, 1), spec.mean, spec.std)[None]
    with torch.no_grad():
        e = _hed_edges(module, h5, x).numpy()
        r = _hed_edges(zoo("vgg16-random"), h5, x).numpy()
    assert e[outline].mean() > 0.5
    assert e[outside].mean() < 0.05 and e[inside].mean() < 0.05
    assert r[outline].mean() < 0.5 and r[outside].mean() > 0.1


# --------------------------------------------------------------------------- VGG16-BN CRAFT


@pytest.mark.slow
def test_vgg16_bn_craft_takes_every_backbone_tensor(zoo, settings):
    """CRAFT's checkpoint has no ImageNet head to test against offline; what is checked: all of
    basenet.slice1..4 (12 convs + 12 BatchNorms, 84 tensors) lands at the same torchvision index,
    unchanged, and nothing of the module is left at its initial value."""
    spec = zoo.spec("vgg16-bn-craft")
    module = zoo("vgg16-bn-craft")
    raw = read_checkpoint(spec.source.fetch(settings))
    backbone = {k: v for k, v in raw.items() if re.match(r"module\.basenet\.slice[1-4]\.", k)}
    sd = module.state_dict()
    assert len(backbone) == len(sd) == 84
    for k, v in backbone.items():
        assert torch.equal(sd[k.split(".", 3)[3]], v)
    assert sum(isinstance(m, nn.Conv2d) for m in module) == 12
    assert all(float(m.running_var.min()) > 0 for m in module if isinstance(m, nn.BatchNorm2d))


# --------------------------------------------------------------------------- CIFAR-10


def _readme_accuracies(zoo_dir: Path) -> dict[str, float]:
    text = (zoo_dir / "README.md").read_text()
    return {f"resnet{m.group(1)}": float(m.group(2))
            for m in re.finditer(r"\|\s*resnet(\d+)-[0-9a-f]+\.th\s*\|.*\|\s*([\d.]+)\s*\|", text)}


@pytest.mark.slow
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnet(depth, zoo, settings):
    """Strict load, the accuracy recorded in the checkpoint equals the zoo README's table and the
    spec, and Chelsea (cat photo, cropped and shrunk to 32x32) is classified as 'cat' (observed:
    all four ResNets say cat)."""
    name = f"resnet{depth}-cifar10"
    spec = zoo.spec(name)
    zoo.skip_if_unavailable(spec)
    module, sha = zoo.load(name)
    path = spec.source.local(settings) or spec.source.url.path(settings)
    best = float(read_checkpoint(path)["best_prec1"])
    assert round(best, 2) == spec.accuracy
    if settings.zoo_dir and (settings.zoo_dir / "README.md").is_file():
        assert _readme_accuracies(settings.zoo_dir)[f"resnet{depth}"] == spec.accuracy
    assert sum(isinstance(m, nn.Conv2d) for m in module.modules()) == 6 * ((depth - 2) // 6) + 1
    cat = data.chelsea()
    x = torch.from_numpy(cat).permute(2, 0, 1).float() / 255
    x = TF.resize(TF.center_crop(x, min(x.shape[1:])), 32, antialias=True)
    with torch.no_grad():
        y = module(TF.normalize(x, spec.mean, spec.std)[None])[0]
    assert CIFAR10[int(y.argmax())] == "cat"


def _keras_reference(h5: dict, x_nhwc: np.ndarray) -> np.ndarray:
    """The Keras model of cifar-10-model, evaluated layer by layer with numpy from the h5 weights,
    following the Keras semantics (NHWC, HWIO kernels, 'valid' cross-correlation, BN eps 1e-3,
    NHWC flatten); independent of the torch rebuild."""
    def w(layer, var):
        return h5[f"model_weights/{layer}/{layer}/{var}:0"].astype(np.float64)

    def conv(x, layer):
        k = w(layer, "kernel")  # (kh, kw, cin, cout)
        win = np.lib.stride_tricks.sliding_window_view(x, (k.shape[0], k.shape[1]), axis=(1, 2))
        return np.einsum("nhwcij,ijco->nhwo", win, k) + w(layer, "bias")

    def bn(x, layer):
        return (w(layer, "gamma") * (x - w(layer, "moving_mean")) / np.sqrt(w(layer, "moving_variance") + 1e-3)
                + w(layer, "beta"))

    def pool(x):
        n, h, ww, c = x.shape
        return x[:, : h // 2 * 2, : ww // 2 * 2].reshape(n, h // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = x_nhwc.astype(np.float64)
    names = ["conv2d"] + [f"conv2d_{i}" for i in range(1, 6)]
    bns = ["batch_normalization"] + [f"batch_normalization_{i}" for i in range(1, 6)]
    for i, (c, b) in enumerate(zip(names, bns)):
        x = bn(relu(conv(x, c)), b)
        if i in (1, 3):
            x = pool(x)
    x = x.reshape(len(x), -1)  # NHWC flatten (MaxPooling2D(1, 1) before it is the identity)
    for layer in ["dense", "dense_1", "dense_2"]:
        x = relu(x @ w(layer, "kernel") + w(layer, "bias"))
    return x


@pytest.mark.slow
def test_cifar10_cnn_matches_keras_computed_by_hand(zoo, settings):
    """The torch rebuild computes what the Keras model computes: outputs agree with the numpy
    reference on random pixel inputs (and on the cat photo, classified 'cat')."""
    spec = zoo.spec("cifar10-cnn")
    module = zoo("cifar10-cnn")
    h5 = read_checkpoint(spec.source.fetch(settings))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    cat = TF.resize(TF.center_crop(torch.from_numpy(data.chelsea()).permute(2, 0, 1), 300), 32, antialias=True)
    x = np.concatenate([x, cat.permute(1, 2, 0).numpy()[None].astype(np.float32)])
    ref = _keras_reference(h5, x)
    # the spec's mean 0 / std 1/255 turn [0, 1] images back into the raw pixels Keras was fed
    xt = TF.normalize(torch.from_numpy(x / 255).permute(0, 3, 1, 2), spec.mean, spec.std)
    assert torch.allclose(xt, torch.from_numpy(x).permute(0, 3, 1, 2), atol=1e-3)
    with torch.no_grad():
        out = module(xt).double().numpy()
    assert np.abs(ref).max() > 1  # not a trivially zero output
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
    assert CIFAR10[int(out[-1].argmax())] == "cat"


def test_keras_flatten_permutation():
    """At 32x32 the CNN's flatten sees 1x1x64 (order moot), so the NHWC->NCHW rule is checked on
    its own on a 3x4x5 map."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)  # N, H, W, C
    k = rng.normal(size=(3 * 4 * 5, 7)).astype(np.float32)
    keras = a.reshape(2, -1) @ k
    wt = keras_flatten_to_torch(torch.from_numpy(k), c=5, h=3, w=4)
    torch_out = torch.from_numpy(a).permute(0, 3, 1, 2).flatten(1) @ wt.T
    np.testing.assert_allclose(torch_out.numpy(), keras, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected C\\*H\\*W"):
        keras_flatten_to_torch(torch.from_numpy(k), c=5, h=3, w=5)


# --------------------------------------------------------------------------- random twins


@pytest.mark.slow
def test_random_twins_are_reproducible(zoo, settings):
    twins = [n for n in DEFAULT_ZOO if n.endswith("-random")]
    for name in twins:
        spec = zoo.spec(name)
        assert spec.family == "random" and spec.extra["twin_of"] in DEFAULT_ZOO
        real = zoo.spec(spec.extra["twin_of"])
        assert real.arch == spec.arch and real.input_size == spec.input_size
    # rebuilt from scratch, one per kind of init (torchvision, timm, VGG's, Keras', akamaster's)
    for name in ["mobilenet-v2-random", "efficientnet-lite0-random", "vgg16-bn-random", "cifar10-cnn-random",
                 "resnet20-random"]:
        spec = zoo.spec(name)
        again = build(spec.arch)
        assert spec.source.load_into(again, spec, settings) is None
        first = zoo(name).state_dict()
        assert all(torch.equal(v, first[k]) for k, v in again.state_dict().items()), name
    # a twin differs from its trained model
    trained, twin = zoo("mobilenet-v2-imagenet"), zoo("mobilenet-v2-random")
    assert not torch.equal(trained.features[0][0].weight, twin.features[0][0].weight)
