"""Layer inventory on torchvision architectures: known strides, sizes, feeders and padding flags."""

import pytest
import torch
import torchvision
from torch import nn

from precompute.inventory import consumed_padding, inventory


@pytest.fixture(scope="module")
def resnet18_rows():
    return {r["name"]: r for r in inventory(torchvision.models.resnet18(), (3, 224, 224))}


def test_resnet18_sizes_and_strides(resnet18_rows):
    r = resnet18_rows
    assert r["conv1"]["kernel"] == [7, 7] and r["conv1"]["stride"] == [2, 2]
    assert r["conv1"]["input_size"] == [224, 224] and r["conv1"]["output_size"] == [112, 112]
    assert r["layer1.0.conv1"]["input_size"] == [56, 56]  # after the stride-2 max pool
    assert r["layer4.1.conv2"]["output_size"] == [7, 7]
    assert r["layer2.0.downsample.0"]["kernel"] == [1, 1] and r["layer2.0.downsample.0"]["stride"] == [2, 2]
    assert sum(x["type"] == "conv" for x in r.values()) == 20
    assert sum(x["type"] == "batchnorm" for x in r.values()) == 20
    assert r["fc"]["type"] == "linear" and r["fc"]["flatten_from"] is None  # global average pooling


def test_resnet18_uneven_padding(resnet18_rows):
    r = resnet18_rows
    # 7x7, stride 2, pad 3 on 224: the last window stops one row short of the bottom padding
    assert r["conv1"]["uneven_padding"] and r["conv1"]["uneven_detail"] == {"top": 3, "bottom": 2, "left": 3, "right": 2}
    # 3x3, stride 2, pad 1 on an even size uses only the top/left padding
    assert r["layer2.0.conv1"]["uneven_padding"]
    assert r["layer2.0.conv1"]["uneven_detail"] == {"top": 1, "bottom": 0, "left": 1, "right": 0}
    assert not r["layer1.0.conv1"]["uneven_padding"]  # stride 1 uses both sides


def test_resnet18_feeders_and_bn(resnet18_rows):
    r = resnet18_rows
    assert r["layer1.0.conv1"]["feeds_from"] == "conv1"
    assert r["layer1.0.conv2"]["feeds_from"] == "layer1.0.conv1"
    assert r["layer2.0.downsample.0"]["feeds_from"] == "layer1.1.conv2"
    assert r["bn1"]["follows"] == "conv1" and r["layer3.1.bn2"]["follows"] == "layer3.1.conv2"
    assert r["fc"]["feeds_from"] == "layer4.1.conv2"


def test_odd_input_size_pads_evenly():
    rows = {r["name"]: r for r in inventory(torchvision.models.resnet18(), (3, 225, 225))}
    assert not rows["layer2.0.conv1"]["uneven_padding"]


def test_vgg16_flatten_and_sizes():
    rows = {r["name"]: r for r in inventory(torchvision.models.vgg16(), (3, 224, 224))}
    assert rows["classifier.0"]["flatten_from"] == [512, 7, 7]
    assert rows["classifier.0"]["feeds_from"] == "features.28"
    assert rows["classifier.3"]["flatten_from"] is None
    assert rows["features.28"]["input_size"] == [14, 14]
    assert all(not r["uneven_padding"] for r in rows.values())  # all stride 1


def test_mobilenet_depthwise():
    rows = inventory(torchvision.models.mobilenet_v2(), (3, 224, 224))
    dw = [r for r in rows if r["type"] == "conv" and r["depthwise"]]
    assert len(dw) == 17
    assert all(r["weight_shape"][1] == 1 and r["groups"] == r["in_channels"] for r in dw)
    strided = [r["name"] for r in rows if r["type"] == "conv" and r["stride"] == [2, 2]]
    assert len(strided) == 5


def test_alexnet_flatten():
    rows = {r["name"]: r for r in inventory(torchvision.models.alexnet(), (3, 224, 224))}
    assert rows["classifier.1"]["flatten_from"] == [256, 6, 6]
    assert rows["features.0"]["output_size"] == [55, 55]


def test_tf_same_padding_is_bottom_heavy():
    # timm-style "same": 224, k3, s2 needs one extra row, placed at the bottom/right
    assert consumed_padding(224, 3, 2, 1, 0, tf_same=True) == (0, 1)
    assert consumed_padding(225, 3, 2, 1, 0, tf_same=True) == (1, 1)
    assert consumed_padding(224, 3, 2, 1, 1) == (1, 0)
    assert consumed_padding(32, 3, 1, 1, 1) == (1, 1)


def test_weight_shared_module_is_listed_once():
    conv = nn.Conv2d(4, 4, 3, padding=1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.conv = conv

        def forward(self, x):
            return self.conv(self.conv(self.stem(x)))

    rows = inventory(Twice(), (3, 8, 8))
    assert [r["name"] for r in rows] == ["stem", "conv"]
    assert torch.is_tensor(conv.weight)
