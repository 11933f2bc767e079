"""Models from files that carry their graph (ONNX) or from weights alone (``--arch none``): zoo models exported
to ONNX here give the same inventory rows and the same analyses as the PyTorch original; a real third-party
ONNX CNN (PaddleOCR's direction classifier, shipped inside the rapidocr-onnxruntime wheel) goes through
``convscope add`` to a precomputed record; hostile files are refused before anything is allocated."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from precompute.analyses import ANALYSES, ModelContext
from precompute.architectures import build
from precompute.cache import Cache
from precompute.errors import ModelError
from precompute.graphs import FORMATS, read_graph
from precompute.inventory import consumed_padding, inventory
from precompute.pipeline import layer_analyses, precompute_model
from precompute.settings import Settings
from precompute.sources import PypiWheel
from precompute.usermodels import add_user_model
from server_fixtures import make_settings, start_worker, stop_process, wait_job

#: (arch, kwargs, input size): chains, residual blocks with option-A shortcuts and stride-2 convs on even
#: sizes (uneven padding), a flatten head, grouped convs with reflection padding, an odd input size
EXPORTS = [
    ("resnet20", {}, (3, 32, 32)),
    ("cifar10-cnn", {}, (3, 32, 32)),
    ("banding-net", {"head": "flatten"}, (1, 28, 28)),
    ("cifar-resnet", {"padding_mode": "reflect", "groups": 2, "depth": 8}, (3, 32, 32)),
    ("cifar-resnet", {"depth": 8}, (3, 33, 33)),
]


def export(module: torch.nn.Module, size, path):
    """The legacy exporter keeps BatchNorm apart from the conv (PRESERVE) and folds constant shape
    arithmetic, as most published exports do."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(1, *size), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    return path


def context(name, module, rows):
    return ModelContext(name=name, module=module, inventory=rows, weights_sha256="-", device=torch.device("cpu"))


def analyse(ctx, analysis):
    a = ANALYSES.get(analysis)
    return a.run(ctx, [r for r in ctx.inventory if a.applies(r)], a.params())


@pytest.mark.parametrize("arch,kw,size", EXPORTS, ids=[f"{a}-{'-'.join(map(str, s))}{'-' + '-'.join(map(str, k.values())) if k else ''}"
                                                        for a, k, s in EXPORTS])
def test_an_onnx_export_reads_as_the_original(arch, kw, size, tmp_path):
    torch.manual_seed(1)
    original = build(arch, **kw).eval()
    graph = read_graph(export(original, size, tmp_path / "m.onnx"), "onnx", None, 2.0)
    assert graph.input_size == size  # the graph's own static input
    want = inventory(original, size)
    got = graph.inventory
    assert [r["name"] for r in got] == [r["name"] for r in want]
    for a, b in zip(want, got):
        same = {k: v for k, v in a.items() if k != "class"}
        assert {k: b.get(k) for k in same} == same, a["name"]
    mods = dict(original.named_modules())
    for r in got:
        assert torch.equal(graph.module.get_submodule(r["name"]).weight, mods[r["name"]].weight.float())

    torch_ctx, onnx_ctx = context("t", original, want), context("o", graph.module, got)
    ran = set()
    for analysis in (a.name for a in layer_analyses(None)):  # every analysis of the registry, the same results
        ref, res = analyse(torch_ctx, analysis), analyse(onnx_ctx, analysis)
        assert ref.keys() == res.keys(), analysis
        assert_close(res, ref, f"{arch}/{analysis}")
        ran |= {analysis} if ref else set()
    assert ran >= {"symmetry", "nmf", "svd", "histogram", "kernels", "batchnorm"}
    assert ("fc-spatial" in ran) == (kw.get("head") == "flatten")
    for analysis, key in (("symmetry", "score"), ("nmf", "banding_index")):  # the two, spelled out
        ref, res = analyse(torch_ctx, analysis), analyse(onnx_ctx, analysis)
        assert ref and all(res[layer][key] == pytest.approx(ref[layer][key], abs=1e-4) for layer in ref)


def assert_close(got, want, where: str) -> None:
    """Equal JSON results, numbers to 1e-4 relative (or 1e-6 absolute)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), where
    else:
        assert got == want, where


def test_uneven_padding_of_a_stride_2_conv_is_seen(tmp_path):
    """ResNet-20's first stride-2 conv (3x3, pad 1, on 32x32) uses only its top/left padding."""
    graph = read_graph(export(build("resnet20"), (3, 32, 32), tmp_path / "r.onnx"), "onnx", None, 2.0)
    row = {r["name"]: r for r in graph.inventory}["layer2.0.conv1"]
    assert row["stride"] == [2, 2] and row["pads"] == [1, 1, 1, 1] and row["uneven_padding"]
    assert row["uneven_detail"] == {"top": 1, "bottom": 0, "left": 1, "right": 0}
    assert row["feeds_from"] == "layer1.2.conv2"


def test_asymmetric_pads_and_a_pad_op_are_read_as_such(tmp_path):
    """Explicit asymmetric ``pads`` (what TF-'same' exports write) and a Pad op before the conv (its pads add
    to the conv's); both flagged by the symmetry analysis' uneven padding, with the rows actually used."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "stem.weight")
    w2 = numpy_helper.from_array(rng.normal(size=(5, 4, 3, 3)).astype(np.float32), "body.weight")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 1, 1], np.int64), "pads")
    nodes = [helper.make_node("Conv", ["x", "stem.weight"], ["a"], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Pad", ["b", "pads"], ["c"], mode="reflect"),
             helper.make_node("Conv", ["c", "body.weight"], ["y"], strides=[1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2, pads])
    path = tmp_path / "asym.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rows = {r["name"]: r for r in read_graph(path, "onnx", (3, 16, 16), 2.0).inventory}
    stem, body = rows["stem"], rows["body"]
    assert stem["pads"] == [0, 0, 1, 1] and stem["uneven_padding"] and stem["output_size"] == [8, 8]
    assert stem["uneven_detail"] == {"top": 0, "bottom": 1, "left": 0, "right": 1}
    assert consumed_padding(16, 3, 2, 1, 0, p_end=1) == (0, 1)
    assert body["pads"] == [1, 0, 1, 1] and body["padding_mode"] == "reflect" and body["input_size"] == [8, 8]
    assert body["uneven_detail"] == {"top": 1, "bottom": 1, "left": 0, "right": 1} and body["uneven_padding"]
    assert body["feeds_from"] == "stem"
    sym = analyse(context("m", read_graph(path, "onnx", (3, 16, 16), 2.0).module, list(rows.values())), "symmetry")
    assert sym["stem"]["uneven_padding"] and sym["stem"]["strided"]


def test_add_and_precompute_an_onnx_file(tmp_settings, tmp_path):
    """``convscope add model.onnx --name x`` (no --arch) registers it; precompute gives a complete record."""
    path = export(build("resnet20"), (3, 32, 32), tmp_path / "r20.onnx")
    spec = add_user_model(path, None, "r20-onnx", tmp_settings)
    assert spec.arch == "onnx" and spec.input_size == (3, 32, 32)
    entry = json.loads(tmp_settings.user_models_file.read_text())[0]
    assert entry["arch"] == "onnx" and entry["input_size"] == [3, 32, 32] and entry["path"] == "r20-onnx/r20.onnx"
    record = precompute_model("r20-onnx", tmp_settings, analyses=["symmetry", "svd", "batchnorm"], device="cpu")
    assert record["status"] == "done" and not record["errors"] and record["skipped"] == {} and record["notes"] == []
    assert len(record["analyses"]["svd"]["layers"]) == 19  # 18 convs with a feeder + the linear layer
    assert Cache(tmp_settings.cache).get_model("r20-onnx")["inventory"] == record["inventory"]


RAPIDOCR = PypiWheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c")


@pytest.fixture(scope="module")
def paddle_cls(tmp_path_factory):
    """PaddleOCR's text-direction classifier (a MobileNetV3, exported by paddle2onnx), out of the wheel."""
    store = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))
    settings = Settings(data_dir=tmp_path_factory.mktemp("rapidocr"), store_dir=store)
    try:
        return RAPIDOCR.fetch(settings)
    except ModelError as e:
        pytest.skip(f"rapidocr-onnxruntime==1.4.4 wheel missing and not downloadable here: {e}")


@pytest.mark.slow
def test_a_third_party_onnx_cnn_goes_through(paddle_cls, tmp_settings):
    spec = add_user_model(paddle_cls, "onnx", "paddle-cls", tmp_settings, input_size=(3, 48, 192))
    assert spec.input_size == (3, 48, 192)
    record = precompute_model("paddle-cls", tmp_settings, device="cpu",
                              analyses=["symmetry", "nmf", "svd", "batchnorm", "histogram", "kernels"])
    assert record["status"] == "done", record["errors"]
    rows = record["inventory"]
    convs = [r for r in rows if r["type"] == "conv"]
    assert len(convs) == 53 and sum(r["type"] == "batchnorm" for r in rows) == 35
    assert sum(r["type"] == "linear" for r in rows) == 1  # the MatMul classifier
    assert convs[0]["name"] == "conv1" and convs[0]["stride"] == [2, 2] and convs[0]["output_size"] == [24, 96]
    assert any(r["depthwise"] for r in convs)
    assert sum(bool(r["feeds_from"]) for r in convs) >= 45  # the SE blocks' 1x1 convs read pooled maps
    assert any(r["uneven_padding"] for r in convs)  # stride 2 on even sizes
    assert record["analyses"]["nmf"]["layers"] and record["scalars"]
    # browsable: the model page and its first and last conv's pages and results
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(tmp_settings)) as c:
        assert c.get("/models/paddle-cls").status_code == 200
        for layer in (convs[0]["name"], convs[-1]["name"]):
            page = c.get(f"/models/paddle-cls/layers/{layer}")
            assert page.status_code == 200 and layer in page.text, layer
            assert c.get(f"/api/models/paddle-cls/layers/{layer}").status_code == 200
        assert c.get(f"/api/models/paddle-cls/layers/{convs[0]['name']}/symmetry").status_code == 200  # 3x3


@pytest.mark.slow
def test_a_third_party_onnx_detector_with_a_transposed_conv_head(paddle_cls):
    """PaddleOCR's text detector ends in ConvTranspose layers that no conv reads: read, and left out with a note;
    the conv that reads a Concat of four maps has no single feeder."""
    det = PypiWheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                    "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9")
    store = paddle_cls.parent.parent
    path = det.fetch(Settings(data_dir=paddle_cls.parent, store_dir=store))
    graph = read_graph(path, "onnx", (3, 320, 320), 2.0)
    convs = [r for r in graph.inventory if r["type"] == "conv"]
    assert len(convs) == 62 and all(r["input_size"] for r in convs)
    assert graph.notes == ["not analysed (no conv or linear layer reads them): ConvTranspose layers"]
    fused = convs[-1]  # the head's first conv reads the four upsampled maps, concatenated
    assert fused["name"] == "conv2d_159" and fused["in_channels"] == 96 and fused["feeds_from"] is None


def test_weights_alone(tmp_settings, tmp_path):
    """``--arch none`` on a safetensors file: convs and BatchNorms in order, the weight analyses as on the
    original, the graph ones listed as needing the architecture."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    original = build("resnet20").eval()
    path = tmp_path / "r20.safetensors"
    save_file(original.state_dict(), str(path))
    spec = add_user_model(path, "none", "r20-bare", tmp_settings)
    assert spec.arch == "none"
    record = precompute_model("r20-bare", tmp_settings, device="cpu",
                              analyses=["symmetry", "nmf", "svd", "batchnorm", "histogram", "kernels"])
    assert record["status"] == "done"
    assert set(record["skipped"]) == {"svd", "padding"} and "--arch" in record["skipped"]["svd"]
    rows = {r["name"]: r for r in record["inventory"]}
    want = {r["name"]: r for r in inventory(original, (3, 32, 32))}
    assert list(rows) == list(want)  # natural order of the names = execution order here
    assert all(rows[n]["follows"] == want[n]["follows"] for n in rows if rows[n]["type"] == "batchnorm")
    assert rows["layer2.0.conv1"]["stride"] is None and rows["layer2.0.conv1"]["feeds_from"] is None
    assert record["analyses"]["svd"]["layers"] == []
    ref = analyse(context("t", original, list(want.values())), "symmetry")
    for layer, res in ref.items():
        assert record["scalars"][layer]["symmetry"] == pytest.approx(res["score"], abs=1e-6)
    assert set(record["analyses"]["batchnorm"]["layers"]) == {n for n, r in want.items() if r["type"] == "batchnorm"}
    # the pages say what needs the architecture and how to give it; the API carries it
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(tmp_settings)) as c:
        assert set(c.get("/api/models/r20-bare").json()["skipped"]) == {"svd", "padding"}
        page = c.get("/models/r20-bare").text
        assert 'id="skipped"' in page and "Needs the architecture" in page and "--arch ARCH" in page
        layer = c.get("/models/r20-bare/layers/layer2.0.conv1").text
        assert 'id="skipped"' in layer and "<code>svd</code>" in layer


def test_weights_alone_from_a_torch_file_keep_its_order(tmp_path):
    sd = build("cifar10-cnn").state_dict()
    path = tmp_path / "cnn.pt"
    torch.save(sd, path)
    rows = read_graph(path, "none", None, 2.0).inventory
    assert [r["name"] for r in rows] == [r["name"] for r in inventory(build("cifar10-cnn"), (3, 32, 32))]


# ---- hostile and unsupported files ---------------------------------------------------------------------


def _conv_model(extra_nodes=(), inits=(), first="x"):
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    nodes = list(extra_nodes) + [helper.make_node("Conv", [first, "w"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_is_refused_unopened(tmp_path):
    model = _conv_model()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 216)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="secret.bin")
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="external data.*secret.bin.*save_as_external_data=False"):
        read_graph(path, "onnx", None, 2.0)


@pytest.mark.parametrize("op,domain", [("ConvTranspose", ""), ("MyCustomOp", "com.evil"), ("Loop", "")])
def test_an_unsupported_op_before_a_conv_is_named(tmp_path, op, domain):
    node = helper.make_node(op, ["x"], ["h"], domain=domain)
    path = tmp_path / "op.onnx"
    onnx.save(_conv_model([node], first="h"), str(path))
    with pytest.raises(ModelError, match=f"unsupported ONNX op '{op}'"):
        read_graph(path, "onnx", None, 2.0)


def test_a_huge_declared_tensor_is_refused_before_allocation(tmp_path):
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[100000, 100000, 3, 3], raw_data=b"\0" * 16)
    path = tmp_path / "huge.onnx"
    onnx.save(_conv_model(inits=[huge]), str(path))
    with pytest.raises(ModelError, match="declares shape \\[100000, 100000, 3, 3\\]"):
        read_graph(path, "onnx", None, 2.0)
    # consistent but far larger than the file could hold: the expansion limit of every checkpoint
    big = helper.make_tensor("big", TensorProto.FLOAT, [600, 1000], vals=np.zeros(600000, np.float32).tobytes(), raw=True)
    path = tmp_path / "big.onnx"
    onnx.save(_conv_model(inits=[big]), str(path))
    with pytest.raises(ModelError, match="refused to load .*CONVSCOPE_MAX_CHECKPOINT_EXPANSION"):
        read_graph(path, "onnx", None, 0.0001)


def test_not_onnx_and_no_conv(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelError, match="junk.onnx"):
        read_graph(junk, "onnx", None, 2.0)


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_format_refuses_an_empty_file(fmt, tmp_path):
    path = tmp_path / f"empty{FORMATS.get(fmt).extensions[0]}"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        read_graph(path, fmt, None, 2.0)


def test_the_extension_picks_the_format(tmp_settings, tmp_path):
    pt = tmp_path / "w.pt"
    torch.save(build("resnet20").state_dict(), pt)
    with pytest.raises(ModelError, match="does not carry its graph"):
        add_user_model(pt, None, "x", tmp_settings)
    onnx_file = export(build("resnet20"), (3, 32, 32), tmp_path / "r.onnx")
    with pytest.raises(ModelError, match="carries its graph"):
        add_user_model(onnx_file, "resnet20", "x", tmp_settings)
    with pytest.raises(ModelError, match="reads .onnx files"):
        add_user_model(pt, "onnx", "x", tmp_settings)


# ---- Keras -----------------------------------------------------------------------------------------------


def write_keras_h5(path, config: dict, weights: dict):
    """A Keras 2 ``model.save('x.h5')`` file: the JSON config in ``attrs['model_config']``, each layer's
    variables under ``model_weights/<layer>/<layer>/<var>:0``, listed by the group's ``weight_names``."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"], f.attrs["backend"] = "2.9.0", "tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [n.encode() for n in weights]
        for layer, variables in weights.items():
            g = mw.create_group(layer)
            g.attrs["weight_names"] = [f"{layer}/{v}:0".encode() for v, _ in variables]
            for v, arr in variables:
                g.create_dataset(f"{layer}/{v}:0", data=arr)
    return path


def _kl(cls, name, inbound=(), **cfg):
    return {"class_name": cls, "name": name, "config": {"name": name, **cfg},
            "inbound_nodes": [[[i, 0, 0, {}] for i in inbound]] if inbound else []}


def test_a_functional_keras_h5(tmp_path):
    """ZeroPadding2D + stride-2 'valid' conv (asymmetric), 'same' convs, a residual Add, a depthwise conv, global
    pooling and a Dense: sizes, pads, feeders and kernels (HWIO -> OIHW) read from the config and h5."""
    rng = np.random.default_rng(3)
    k_stem, k_a = rng.normal(size=(3, 3, 3, 8)).astype(np.float32), rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    k_dw, k_fc = rng.normal(size=(3, 3, 8, 1)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    bn = [(v, rng.uniform(0.5, 1.5, size=8).astype(np.float32)) for v in ("gamma", "beta", "moving_mean", "moving_variance")]
    layers = [_kl("InputLayer", "input_1", batch_input_shape=[None, 16, 16, 3]),
              _kl("ZeroPadding2D", "pad", ["input_1"], padding=[[0, 1], [0, 1]]),
              _kl("Conv2D", "stem", ["pad"], filters=8, kernel_size=[3, 3], strides=[2, 2], padding="valid",
                  use_bias=False),
              _kl("BatchNormalization", "stem_bn", ["stem"], axis=[3], epsilon=1e-3),
              _kl("Activation", "act", ["stem_bn"], activation="relu"),
              _kl("Conv2D", "a", ["act"], filters=8, kernel_size=[3, 3], strides=[1, 1], padding="same", use_bias=True),
              _kl("Add", "add", ["act", "a"]),
              _kl("DepthwiseConv2D", "dw", ["add"], kernel_size=[3, 3], strides=[2, 2], padding="same", use_bias=False),
              _kl("GlobalAveragePooling2D", "gap", ["dw"]),
              _kl("Dense", "fc", ["gap"], units=4, use_bias=True)]
    config = {"class_name": "Functional", "config": {"name": "m", "layers": layers}}
    path = write_keras_h5(tmp_path / "m.h5", config, {
        "stem": [("kernel", k_stem)], "stem_bn": bn, "a": [("kernel", k_a), ("bias", np.zeros(8, np.float32))],
        "dw": [("depthwise_kernel", k_dw)], "fc": [("kernel", k_fc), ("bias", np.ones(4, np.float32))]})
    graph = read_graph(path, "keras", None, 2.0)
    assert graph.input_size == (3, 16, 16)
    rows = {r["name"]: r for r in graph.inventory}
    assert list(rows) == ["stem", "stem_bn", "a", "dw", "fc"]
    stem, a, dw, fc = rows["stem"], rows["a"], rows["dw"], rows["fc"]
    assert stem["pads"] == [0, 0, 1, 1] and stem["input_size"] == [16, 16] and stem["output_size"] == [8, 8]
    assert stem["uneven_padding"] and stem["uneven_detail"] == {"top": 0, "bottom": 1, "left": 0, "right": 1}
    assert a["padding_mode"] == "tf-same" and a["pads"] == [1, 1, 1, 1] and not a["uneven_padding"]
    assert a["feeds_from"] == "stem" and rows["stem_bn"]["follows"] == "stem"
    assert dw["depthwise"] and dw["groups"] == 8 and dw["weight_shape"] == [8, 1, 3, 3]
    assert dw["pads"] == [0, 0, 1, 1] and dw["output_size"] == [4, 4] and dw["feeds_from"] == "a"  # through the Add
    assert fc["feeds_from"] == "dw" and fc["flatten_from"] is None
    w = graph.module.get_submodule("stem").weight
    assert torch.equal(w, torch.from_numpy(k_stem).permute(3, 2, 0, 1)) and w[5, 1, 2, 0] == k_stem[2, 0, 1, 5]
    assert torch.equal(graph.module.get_submodule("dw").weight[:, 0], torch.from_numpy(k_dw[..., 0]).permute(2, 0, 1))
    assert torch.equal(graph.module.get_submodule("fc").weight, torch.from_numpy(k_fc).t())
    assert torch.equal(graph.module.get_submodule("stem_bn").running_var, torch.from_numpy(bn[3][1]))


def test_a_keras3_archive_with_a_flatten(tmp_path):
    """A ``.keras`` zip (config.json + model.weights.h5, variables by index): the Dense after Flatten gets
    flatten_from and its columns in torch's C, H, W order."""
    import io
    import zipfile

    import h5py

    rng = np.random.default_rng(4)
    kc, kd = rng.normal(size=(3, 3, 1, 4)).astype(np.float32), rng.normal(size=(400, 3)).astype(np.float32)
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input", "batch_shape": [None, 12, 12, 1]}},
        {"class_name": "Conv2D", "config": {"name": "c1", "filters": 4, "kernel_size": [3, 3], "padding": "valid",
                                            "use_bias": True}},
        {"class_name": "BatchNormalization", "config": {"name": "bn", "axis": -1, "scale": True, "center": True}},
        {"class_name": "Flatten", "config": {"name": "flat"}},
        {"class_name": "Dense", "config": {"name": "fc", "units": 3, "use_bias": True}}]}}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for layer, arrays in {"c1": [kc, np.zeros(4)], "bn": [np.full(4, 2.0), np.zeros(4), np.zeros(4), np.ones(4)],
                              "fc": [kd, np.zeros(3)]}.items():
            for i, arr in enumerate(arrays):
                f.create_dataset(f"layers/{layer}/vars/{i}", data=np.asarray(arr, np.float32))
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", buf.getvalue())
    graph = read_graph(path, "keras", None, 2.0)
    rows = {r["name"]: r for r in graph.inventory}
    assert rows["fc"]["flatten_from"] == [4, 10, 10] and rows["fc"]["feeds_from"] == "c1"
    w = graph.module.get_submodule("fc").weight  # column (c*10 + y)*10 + x  <-  Keras row (y*10 + x)*4 + c
    assert w[2, (3 * 10 + 7) * 10 + 5] == kd[(7 * 10 + 5) * 4 + 3, 2]
    assert torch.equal(graph.module.get_submodule("bn").weight, torch.full((4,), 2.0))


def test_the_zoo_keras_cifar_cnn_reads_as_the_zoo_model(tmp_settings):
    """The cifar-10-model wheel's Keras CNN: the graph read from its own config gives the rows and weights of
    the hand-written torch port (precompute/models.py)."""
    from precompute.models import MODELS, convert_keras_cifar_cnn
    from precompute.sources import read_checkpoint

    spec = next(s for s in map(MODELS.get, MODELS.names()) if s.arch == "cifar10-cnn" and isinstance(s.source, PypiWheel))
    store = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))
    try:
        path = spec.source.fetch(Settings(data_dir=tmp_settings.data_dir, store_dir=store))
    except ModelError as e:
        pytest.skip(f"cifar-10-model wheel missing and not downloadable here: {e}")
    graph = read_graph(path, "keras", None, 2.0)
    port = build("cifar10-cnn")
    port.load_state_dict(convert_keras_cifar_cnn(read_checkpoint(path), port))
    want = inventory(port.eval(), (3, 32, 32))
    mods = dict(port.named_modules())
    assert len(graph.inventory) == len(want) == 15
    rename = {w["name"]: g["name"] for w, g in zip(want, graph.inventory)}
    for w, g in zip(want, graph.inventory):
        same = {k: v for k, v in w.items() if k not in ("name", "class", "feeds_from", "follows")}
        assert {k: g.get(k) for k in same} == same, w["name"]
        assert g["feeds_from"] == rename.get(w["feeds_from"]) and g["follows"] == rename.get(w["follows"])
        assert torch.equal(graph.module.get_submodule(g["name"]).weight, mods[w["name"]].weight)


@pytest.mark.parametrize("cls", ["Lambda", "TFOpLambda", "MyCustomLayer", "Functional"])
def test_a_keras_layer_with_code_is_refused_not_run(tmp_path, cls):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')"  # what a deserialising loader could be made to run
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 8, 8, 3]}},
              {"class_name": cls, "config": {"name": "evil", "function": [code, None, None], "module": "os"}},
              {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3]}}]
    path = write_keras_h5(tmp_path / "evil.h5", {"class_name": "Sequential", "config": {"name": "s", "layers": layers}},
                          {"c": [("kernel", np.ones((3, 3, 3, 2), np.float32))]})
    with pytest.raises(ModelError, match=f"evil.*{cls}|{cls}.*evil"):
        read_graph(path, "keras", None, 2.0)
    assert not marker.exists()


def test_keras_weights_without_a_config_are_refused(tmp_path):
    import h5py

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("conv2d/conv2d/kernel:0", data=np.ones((3, 3, 3, 2), np.float32))
    with pytest.raises(ModelError, match="without a model config.*model.save"):
        read_graph(path, "keras", None, 2.0)


def test_add_a_keras_file(tmp_settings, tmp_path):
    rng = np.random.default_rng(5)
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 10, 10, 3]}},
              {"class_name": "Conv2D", "config": {"name": "c1", "filters": 6, "kernel_size": [3, 3], "use_bias": False}},
              {"class_name": "Conv2D", "config": {"name": "c2", "filters": 5, "kernel_size": [3, 3], "strides": [2, 2],
                                                  "padding": "same", "use_bias": False}}]
    path = write_keras_h5(tmp_path / "small.h5", {"class_name": "Sequential", "config": {"name": "s", "layers": layers}},
                          {"c1": [("kernel", rng.normal(size=(3, 3, 3, 6)).astype(np.float32))],
                           "c2": [("kernel", rng.normal(size=(3, 3, 6, 5)).astype(np.float32))]})
    spec = add_user_model(path, None, "small-keras", tmp_settings)
    assert spec.arch == "keras" and spec.input_size == (3, 10, 10)
    record = precompute_model("small-keras", tmp_settings, analyses=["symmetry", "svd"], device="cpu")
    assert record["status"] == "done" and record["analyses"]["svd"]["layers"] == ["c2"]
    c2 = {r["name"]: r for r in record["inventory"]}["c2"]
    assert c2["padding_mode"] == "tf-same" and c2["input_size"] == [8, 8] and c2["uneven_padding"]


# ---- the upload endpoint ------------------------------------------------------------------------------


def test_the_upload_check_picks_the_format():
    """server.jobs.check_arch: a graph file's arch may be its format or empty (the extension says it), a
    checkpoint needs an architecture, and a graph file is not a checkpoint of an architecture in code."""
    from server.errors import BadRequest
    from server.jobs import check_arch

    assert check_arch("", "m.onnx") == "onnx" and check_arch("", "m.keras") == "keras" and check_arch("", "m.h5") == "keras"
    assert check_arch("onnx") == "onnx" and check_arch("none", "w.safetensors") == "none"
    assert check_arch("resnet20", "w.pt") == "resnet20"
    for arch, filename, says in [("", "w.pt", "does not carry its graph"), ("resnet20", "m.onnx", "carries its graph"),
                                 ("onnx", "w.pt", "reads .onnx files"), ("keras", "m.onnx", "reads .h5, .keras")]:
        with pytest.raises(BadRequest, match=says):
            check_arch(arch, filename)


@pytest.mark.slow
def test_an_onnx_upload_is_registered_and_precomputed_by_the_worker(tmp_path_factory, tmp_path):
    """POST /api/uploads with a .onnx file and arch "onnx": the worker reads the graph and precomputes it."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = make_settings(tmp_path_factory.mktemp("onnx-upload"))
    onnx_file = export(build("resnet20"), (3, 32, 32), tmp_path / "r20.onnx")
    worker = start_worker(settings, Path(settings.data_dir) / "worker.log")
    try:
        with TestClient(create_app(settings)) as c:
            r = c.post("/api/uploads", files={"file": ("r20.onnx", onnx_file.read_bytes())},
                       data={"arch": "onnx", "name": "uploaded-onnx"})
            assert r.status_code == 202, r.text
            job = wait_job(lambda j: c.get(f"/api/jobs/{j}").json(), r.json()["id"], 300)
            assert job["state"] == "done", job
            m = c.get("/api/models/uploaded-onnx").json()
            assert m["summary"]["arch"] == "onnx"
            # refused by the server when the route hands check_arch the file name, else by the worker's job
            r = c.post("/api/uploads", files={"file": ("w.pt", b"x" * 100)}, data={"arch": "onnx", "name": "bad"})
            if r.status_code == 202:
                r = wait_job(lambda j: c.get(f"/api/jobs/{j}").json(), r.json()["id"], 120)
                assert r["state"] == "failed" and "reads .onnx files" in r["error"], r
            else:
                assert r.status_code == 422 and "reads .onnx files" in r.text
    finally:
        stop_process(worker)


@pytest.mark.slow
def test_the_command_line_adds_an_onnx_file_without_arch(tmp_path):
    """`convscope add model.onnx --name x` as a user types it (a subprocess); a .pt without --arch says what to give."""
    import subprocess
    import sys

    onnx_file = export(build("resnet20"), (3, 32, 32), tmp_path / "r20.onnx")
    env = {**os.environ, "CONVSCOPE_DATA_DIR": str(tmp_path / "data"), "CONVSCOPE_DEVICE": "cpu"}
    cli = [sys.executable, "-m", "precompute.cli", "add"]
    root = Path(__file__).resolve().parent.parent
    ok = subprocess.run(cli + [str(onnx_file), "--name", "cli-onnx"], env=env, cwd=root, capture_output=True, text=True)
    assert ok.returncode == 0 and "added cli-onnx (onnx)" in ok.stdout, ok.stderr
    pt = tmp_path / "w.pt"
    torch.save(build("resnet20").state_dict(), pt)
    bad = subprocess.run(cli + [str(pt), "--name", "cli-pt"], env=env, cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "does not carry its graph" in bad.stderr and "Traceback" not in bad.stderr


def test_malformed_graphs_fail_as_the_files_fault(tmp_path):
    """Attributes of the wrong type (ONNX strides of strings, a Keras kernel_size in words): ModelError naming
    the file, never a traceback from inside the reader."""
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=["a"])  # strides of strings
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelError, match="bad.onnx"):
        read_graph(path, "onnx", None, 2.0)
    keras = write_keras_h5(tmp_path / "bad.h5", {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 8, 8, 3]}},
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": "three"}}]}},
        {"c": [("kernel", np.ones((3, 3, 3, 2), np.float32))]})
    with pytest.raises(ModelError, match="bad.h5"):
        read_graph(keras, "keras", None, 2.0)


@pytest.mark.parametrize("auto_pad,pads,mode,uneven", [
    ("SAME_UPPER", [0, 0, 1, 1], "tf-same", {"top": 0, "bottom": 1, "left": 0, "right": 1}),
    ("SAME_LOWER", [1, 1, 0, 0], "zeros", {"top": 1, "bottom": 0, "left": 1, "right": 0}),
    ("VALID", [0, 0, 0, 0], "zeros", {"top": 0, "bottom": 0, "left": 0, "right": 0})])
def test_onnx_auto_pad(tmp_path, auto_pad, pads, mode, uneven):
    """auto_pad on a stride-2 3x3 conv over 16x16: 'same' needs one extra row, at the end (TF, SAME_UPPER) or
    at the start (SAME_LOWER)."""
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "c.weight")
    node = helper.make_node("Conv", ["x", "c.weight"], ["y"], strides=[2, 2], auto_pad=auto_pad)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "auto.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    (row,) = read_graph(path, "onnx", None, 2.0).inventory
    assert row["pads"] == pads and row["padding_mode"] == mode and row["uneven_detail"] == uneven
    assert row["output_size"] == ([8, 8] if auto_pad != "VALID" else [7, 7])
