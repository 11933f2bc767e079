"""Any torchvision or timm model by name (issue 18): ``torchvision:NAME`` / ``timm:NAME`` through the
architecture registry, the catalogue the torch-free server searches, ``--arch auto``, and random picks
from the libraries' lists going from a random state dict through ``convscope add`` (and an upload to a
real worker) to browsable layer pages."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from safetensors.torch import save_file

from precompute import archmatch, librarymodels
from precompute.architectures import ARCHITECTURES, build, default_input_size
from precompute.cli import main as cli
from precompute.declarations import library
from precompute.pipeline import precompute_model
from precompute.registry import UnknownName
from precompute.settings import get_settings

pytest_plugins = ["server_fixtures"]

from server_fixtures import make_settings, start_worker, stop_process, wait_job  # noqa: E402

#: the picks are random from the lists, under this seed (CONVSCOPE_LIBRARY_SEED picks others); models
#: over PICK_MAX_PARAMS or with inputs over PICK_MAX_SIDE are left out of the picks only to bound the
#: test's time on a 2-core CPU: every name is buildable, the catalogue test builds a sample of all
SEED = int(os.environ.get("CONVSCOPE_LIBRARY_SEED", "18"))
PICK_MAX_PARAMS = 30_000_000
PICK_MAX_SIDE = 320


def picks(prefix: str, n: int = 10, seed: int = SEED, max_params: int = PICK_MAX_PARAMS) -> list[str]:
    pool = sorted(m.name for m in library.catalogue().values() if m.name.startswith(prefix + ":")
                  and m.params <= max_params and max(m.input_size or (3, 224, 224)) <= PICK_MAX_SIDE)
    return random.Random(f"{seed}-{prefix}").sample(pool, n)


# ---- the catalogue ----------------------------------------------------------------------------------
def test_catalogue_lists_exactly_what_the_installed_libraries_list():
    data = json.loads(library.CATALOGUE_FILE.read_text())
    listed = set(library.catalogue()) | set(data["failed"])
    assert listed == set(librarymodels.all_names())
    assert not data["failed"], data["failed"]  # every name builds (on the meta device)
    assert library.versions() == {p: lib.version for p, lib in librarymodels.LIBRARIES.items()}
    tasks = {m.task for m in library.catalogue().values() if m.name.startswith("torchvision:")}
    assert tasks == {"classification", "segmentation", "detection"}
    assert len(library.catalogue()) > 1000


@pytest.mark.parametrize("arch", sorted(random.Random(SEED).sample(sorted(library.catalogue()), 12))
                         + ["torchvision:resnet50", "timm:resnet50", "torchvision:deeplabv3_resnet50"])
def test_catalogue_entry_is_what_the_library_builds(arch):
    assert library.get(arch) == library.LibraryModel(**{**(e := librarymodels.meta_entry(arch)),
                                                        "input_size": tuple(e["input_size"]) if e["input_size"] else None})


def test_catalogue_figures_for_known_models():
    """Figures anyone can check: torchvision's ResNet-50 has 25,557,032 parameters (its weights enum's
    num_params) and takes 224x224; DeepLabV3 resizes to 520; detection takes any size."""
    assert library.get("torchvision:resnet50").params == 25_557_032
    assert library.get("timm:resnet50").params == 25_557_032
    assert library.get("torchvision:resnet50").input_size == (3, 224, 224)
    assert library.get("torchvision:deeplabv3_resnet50").input_size == (3, 520, 520)
    assert library.get("torchvision:fasterrcnn_resnet50_fpn").input_size is None
    assert library.get("timm:inception_v3").input_size == (3, 299, 299)


# ---- names ------------------------------------------------------------------------------------------
def test_library_names_build_untrained_and_carry_their_input_size():
    torch.manual_seed(0)
    m = build("torchvision:resnet18")
    assert isinstance(m, torch.nn.Module) and sum(p.numel() for p in m.parameters()) == 11_689_512
    assert default_input_size("timm:efficientnet_b0") == (3, 224, 224)
    assert "timm:resnet50" in ARCHITECTURES and "timm:resnet5" not in ARCHITECTURES
    assert "torchvision:r3d_18" not in ARCHITECTURES  # a video model (3-d convs): not offered
    assert "timm:resnet50" not in ARCHITECTURES.names()  # listing lists the registered ones only


@pytest.mark.parametrize("bad, says", [
    ("timm:resnet5", "did you mean timm:resnet50"),
    ("torchvision:resnet05", "torchvision:resnet50"),
    ("keras:resnet50", "unknown architecture 'keras:resnet50'"),
])
def test_unknown_library_names_say_what_exists(bad, says):
    with pytest.raises(UnknownName) as e:
        ARCHITECTURES.get(bad)
    assert says in str(e.value), str(e.value)


def test_search_finds_every_word_and_ranks_prefix_matches_first():
    names = [m.name for m in library.search("res 50", 200)]
    assert "timm:resnet50" in names and "torchvision:resnet50" in names
    assert all("res" in n and "50" in n for n in names)
    first = [m.name for m in library.search("vgg16", 5)]
    assert set(first[:2]) == {"torchvision:vgg16", "timm:vgg16"}, first
    assert library.search("", 10) == [] and library.search("zzqx", 10) == []
    assert len(library.search("vit", 7)) == 7


# ---- --arch auto --------------------------------------------------------------------------------------
def _shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet20", "cifar10-cnn", "torchvision:mobilenet_v3_small", "timm:efficientnet_b0",
                                  "torchvision:resnet18"])
def test_auto_finds_the_architecture_from_keys_and_shapes(arch):
    found = archmatch.match(_shapes(build(arch)))
    assert arch in found.names, found
    if arch == "torchvision:resnet18":  # timm's resnet18 has the very same state dict
        assert found.names[:2] == ("resnet18", "torchvision:resnet18") or found.name == "torchvision:resnet18"


def test_auto_without_a_match_names_the_nearest_and_what_differs():
    shapes = _shapes(build("resnet20"))
    assert shapes["linear.weight"] == (10, 64)
    shapes["linear.weight"] = (7, 64)  # a 7-class head
    shapes["linear.bias"] = (7,)
    with pytest.raises(archmatch.NoMatch) as e:
        archmatch.match(shapes)
    msg = str(e.value)
    assert "resnet20" in msg.split("nearest are:")[1].splitlines()[1], msg
    assert "2 of another shape (linear.bias [7] vs [10], linear.weight [7, 64] vs [10, 64])" in msg, msg
    assert "--arch NAME" in msg


def add(args: list[str], data_dir, monkeypatch) -> int:
    """``convscope add ...`` in this process, on ``data_dir`` (the CLI reads its Settings from the
    environment, once: the cached copy is dropped before and after)."""
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    try:
        return cli(["add", *args])
    finally:
        get_settings.cache_clear()


def test_cli_add_auto(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    save_file(build("timm:mobilenetv3_small_050").state_dict(), tmp_path / "m.safetensors")
    assert add([str(tmp_path / "m.safetensors"), "--arch", "auto", "--name", "found"], tmp_path, monkeypatch) == 0
    assert "timm:mobilenetv3_small_050" in capsys.readouterr().out
    users = json.loads((tmp_path / "user-models.json").read_text())
    assert [u["arch"] for u in users] == ["timm:mobilenetv3_small_050"]


def test_a_safetensors_file_of_a_module_that_checks_its_state_version_loads(tmp_path, monkeypatch):
    """torchvision's MNASNet refuses a state dict without torch's per-module version metadata, which a
    safetensors file never carries: the installed library's versions are assumed (the upload of one
    failed with 'version should be set to 1 or 2 instead of None')."""
    name, path = _checkpoint("torchvision:mnasnet0_5", tmp_path)
    assert add([str(path), "--arch", "torchvision:mnasnet0_5", "--name", name], tmp_path, monkeypatch) == 0


# ---- from a random state dict to layer pages ------------------------------------------------------------
@pytest.fixture(scope="module")
def lib_settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("library-models"))


def _checkpoint(arch: str, folder) -> tuple[str, object]:
    torch.manual_seed(0)
    module = build(arch)
    name = arch.replace(":", "-").replace("_", "-").lower()[:70]
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)
    return name, path


def _pages_browse(settings, name: str) -> None:
    """The model page, and the first and last conv layer's page and JSON, answer 200 and name the layer."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(settings)) as c:
        m = c.get(f"/api/models/{name}")
        assert m.status_code == 200, m.text
        convs = [r["name"] for r in m.json()["inventory"] if r["type"] == "conv"]
        assert convs, m.json()["inventory"][:3]
        assert c.get(f"/models/{name}").status_code == 200
        for layer in (convs[0], convs[-1]):
            page = c.get(f"/models/{name}/layers/{layer}")
            assert page.status_code == 200 and layer in page.text, (layer, page.status_code)
            assert c.get(f"/api/models/{name}/layers/{layer}").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("arch", picks("torchvision") + picks("timm"))
def test_a_random_library_model_goes_through_add_to_layer_pages(arch, lib_settings, tmp_path, monkeypatch):
    name, path = _checkpoint(arch, tmp_path)
    assert add([str(path), "--arch", arch, "--name", name], lib_settings.data_dir, monkeypatch) == 0
    record = precompute_model(name, lib_settings)
    assert record["spec"]["arch"] == arch and not record["errors"], record["errors"]
    _pages_browse(lib_settings, name)


@pytest.mark.slow
def test_library_models_upload_to_a_real_worker(tmp_path_factory):
    """The upload endpoint takes torchvision:NAME and timm:NAME; a real ``convscope worker`` registers
    and precomputes them; their layer pages are browsable."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    settings = make_settings(tmp_path_factory.mktemp("library-uploads"))
    folder = tmp_path_factory.mktemp("library-ckpt")
    worker = start_worker(settings, settings.data_dir / "worker.log")
    try:
        with TestClient(create_app(settings)) as c:
            jobs = []
            # under 10 M parameters: their files stay within the upload limit of the test settings (50 MB)
            for arch in (picks("torchvision", 1, SEED + 1, 10_000_000)[0], picks("timm", 1, SEED + 1, 10_000_000)[0]):
                name, path = _checkpoint(arch, folder)
                r = c.post("/api/uploads", files={"file": (path.name, path.read_bytes())},
                           data={"arch": arch, "name": name})
                assert r.status_code == 202, r.text
                jobs.append((name, r.json()["id"]))
            for name, jid in jobs:
                job = wait_job(lambda j: c.get(f"/api/jobs/{j}").json(), jid, 600)
                assert job["state"] == "done", (job.get("error"), job.get("log"))
        for name, _ in jobs:
            _pages_browse(settings, name)
    finally:
        stop_process(worker)


def test_upload_arch_check_takes_auto_and_graph_files():
    from server.errors import BadRequest
    from server.jobs import check_arch

    assert check_arch("auto", "m.pt") == "auto" and check_arch("auto", "m.onnx") == "onnx"
    assert check_arch("", "m.keras") == "keras" and check_arch("timm:resnet50", "m.safetensors") == "timm:resnet50"
    with pytest.raises(BadRequest) as e:
        check_arch("", "m.pt")
    assert "'auto'" in str(e.value) and "'none'" in str(e.value), str(e.value)


def test_upload_checks_library_names_before_queueing(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/api/architectures/search?q=resnet%2050&limit=5")
        assert r.status_code == 200
        body = r.json()
        assert len(body["matches"]) == 5 and body["more"] and body["libraries"]["timm"] == library.versions()["timm"]
        hit = {m["name"]: m for m in body["matches"]}
        assert hit["timm:resnet50"]["params"] == 25_557_032 and hit["timm:resnet50"]["input_size"] == [3, 224, 224]
        assert c.get("/api/architectures/search?q=").status_code == 422
        assert c.get("/api/architectures/search?q=" + "x" * 101).status_code == 422
        for bad in ("..", "~", "..%2fetc", "a%00b"):  # nothing to search for: refused, not searched
            assert c.get(f"/api/architectures/search?q={bad}").status_code == 422, bad
        r = c.post("/api/uploads", files={"file": ("m.safetensors", b"x" * 10)}, data={"arch": "timm:resnet5", "name": "x1"})
        assert r.status_code == 422 and "timm:resnet5" in r.json()["detail"] and "/api/architectures/search" in r.json()["detail"]
        r = c.post("/api/uploads", files={"file": ("m.safetensors", b"x" * 10)}, data={"arch": "timm:../../etc", "name": "x1"})
        assert r.status_code == 422
