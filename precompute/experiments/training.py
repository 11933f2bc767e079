"""Training the variants of an experiment: deterministic given the seed, CPU or CUDA.

The whole split lives on the device as uint8; each batch is augmented (random shifts and flips drawn
from a seeded generator), passed through the variant's input transform, normalised, and fed to the
net. The weights are then rounded to float16, and the final test accuracy and the experiment's
measurements are computed on exactly the weights that are saved.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import Settings, get_settings
from .datasets import DATASETS, DatasetInfo, load_raw, normalize
from .measurements import MEASUREMENTS
from .nets import build_net, init_weights
from .recipes import EXPERIMENTS, INPUT_TRANSFORMS, RANDOM, TRAINABLE, Experiment, Recipe, transformed_size
from .records import RECORD_FORMAT, fp16_state, local_variants_dir, write_run

Progress = Union[bool, Callable[[float, str], None]]


class TrainingError(Exception):
    """A training run that cannot start or that failed; the message says why."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked, but torch sees no CUDA device here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    return torch.device(device)


def code_version() -> str:
    """``git describe --always --dirty`` of the checkout when there is one, else the package version."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                                  capture_output=True, text=True, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                return f"git {done.stdout.strip()}"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return f"convscope {importlib.metadata.version('convscope')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def set_trainable(model: nn.Module, rule: str) -> None:
    """``all`` | ``bn`` | ``bn+output`` (see recipes.TRAINABLE); the output layer is the last Linear."""
    if rule not in TRAINABLE:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}; got {rule!r}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    output = linears[-1] if linears else None
    for m in model.modules():
        for p in m.parameters(recurse=False):
            if rule == "all":
                p.requires_grad_(True)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                p.requires_grad_(True)
            else:
                p.requires_grad_(rule == "bn+output" and m is output)


def translate(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image of (B, C, H, W) by shifts[b] = (dy, dx) pixels, zero fill; |dy|, |dx| <= pad."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (pad - shifts[:, 0])[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = (pad - shifts[:, 1])[:, None] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """The recipe's augmentation of float [0, 1] images; randomness from ``gen`` (CPU) only."""
    b = x.shape[0]
    if "translate" in recipe.augmentation and recipe.translate > 0:
        p = recipe.translate
        shifts = torch.randint(-p, p + 1, (b, 2), generator=gen).to(x.device)
        x = translate(x, shifts, p)
    if "hflip" in recipe.augmentation:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class _Data:
    """A split on the device as uint8, with the transform and normalisation of a variant."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo, transform: Optional[str],
                 device: torch.device):
        self.x, self.y = x.to(device), y.to(device)
        self.info, self.device = info, device
        self.transform = INPUT_TRANSFORMS[transform][0] if transform else None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, recipe: Optional[Recipe] = None, gen: Optional[torch.Generator] = None):
        x = self.x[idx].float().div_(255.0)
        if recipe is not None:
            x = augment(x, recipe, gen)
        if self.transform is not None:
            x = self.transform(x)
        return normalize(x, self.info), self.y[idx]


def evaluate(model: nn.Module, data: _Data, batch_size: int) -> float:
    """Top-1 accuracy in % (eval mode, no augmentation)."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(data)), device=data.device)
            x, y = data.batch(idx)
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return 100.0 * correct / max(len(data), 1)


def _finite(v: float) -> Optional[float]:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _command(exp: str, variant: str, dataset: str, epochs: int, device: str, seed: int, limit: Optional[int],
             out: Optional[Path]) -> str:
    parts = ["convscope", "train", exp, "--variant", variant, "--dataset", dataset, "--epochs", str(epochs),
             "--device", device, "--seed", str(seed)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


def train(experiment: str, variants: Optional[Sequence[str]] = None, *, dataset: Optional[str] = None,
          epochs: Optional[int] = None, device: str = "auto", seed: int = 0, limit: Optional[int] = None,
          out: Optional[Union[str, Path]] = None, settings: Optional[Settings] = None, progress: Progress = True,
          download: bool = False) -> list[dict]:
    """Train the variants of ``experiment`` (default: all its declared variants; ``random`` saves the
    initialisation untrained) and write ``<out>/<experiment>-<variant>.safetensors`` + ``.json`` for
    each (default out: ``<data_dir>/variants``). Returns the records, with ``checkpoint_path`` and
    ``record_path`` added.

    ``progress``: True for a tqdm bar per epoch (loss, accuracy, images/s) on stderr, False for none, or
    a callable ``(fraction done, message)`` (the job queue's reporter).
    """
    settings = settings or get_settings()
    exp = EXPERIMENTS.get(experiment)
    names = list(dict.fromkeys(variants)) if variants else exp.variant_names()
    for v in names:
        exp.variant(v)  # unknown variants fail before any work
    dataset = dataset or exp.recipe.dataset
    info = DATASETS.get(dataset)
    epochs = exp.recipe.epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0; got {epochs}")
    if limit is not None and limit < 2:
        raise ValueError(f"limit must be >= 2 images; got {limit}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    dev = resolve_device(device)
    out_dir = Path(out) if out is not None else local_variants_dir(settings)

    xtr, ytr = load_raw(dataset, "train", settings, limit=limit, download=download)
    xte, yte = load_raw(dataset, "test", settings, limit=limit, download=download)

    records = []
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        for k, vname in enumerate(names):
            def report(f, msg, k=k):
                if callable(progress):
                    progress((k + f) / len(names), msg)

            rec = _run_variant(exp, vname, info, (xtr, ytr), (xte, yte), dev, device, int(seed), limit,
                               0 if vname == RANDOM else epochs, out if out is not None else None,
                               bar=progress is True, report=report)
            ckpt, jpath = write_run(out_dir, rec["model"], rec.pop("_state"), rec)
            rec = dict(rec, checkpoint_path=str(ckpt), record_path=str(jpath))
            report(1.0, f"{rec['model']}: test accuracy {rec['final_test_accuracy']:.2f}% -> {ckpt}")
            records.append(rec)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
    return records


def _run_variant(exp: Experiment, vname: str, info: DatasetInfo, train_split, test_split, dev: torch.device,
                 device_arg: str, seed: int, limit: Optional[int], epochs: int, out, bar: bool,
                 report: Callable[[float, str], None]) -> dict:
    t_start = time.time()
    v = exp.variant(vname)
    recipe = exp.recipe
    name = exp.model_name(vname)
    input_size = transformed_size(v.input_transform, info.input_size)
    kw = {**exp.arch_kwargs, **v.arch_kwargs, "in_channels": info.input_size[0], "num_classes": info.num_classes}
    if exp.arch == "banding-net":
        kw["image_size"] = [input_size[1], input_size[2]]

    torch.manual_seed(seed)
    model = build_net(exp.arch, **kw)
    init_weights(model, recipe.bn_gamma)
    set_trainable(model, v.trainable)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          weight_decay=recipe.weight_decay)
    train_data = _Data(*train_split, info, v.input_transform, dev)
    test_data = _Data(*test_split, info, v.input_transform, dev)
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(train_data), recipe.batch_size
    steps = (n + bs - 1) // bs

    def ev(m: nn.Module) -> float:
        return evaluate(m, test_data, recipe.eval_batch_size)

    final_state: dict = {}

    def final_pass() -> float:
        """Round the weights to float16 (what is saved); test accuracy and measurements of exactly those.
        One test pass serves the accuracy and the ReLU statistics."""
        state = fp16_state(model)
        model.load_state_dict({k: (t.float() if t.is_floating_point() else t) for k, t in state.items()})
        model.eval()
        measurements, acc = {}, None
        if "dead_relu" in exp.measurements:
            measurements["dead_relu"] = MEASUREMENTS["dead_relu"](model, ev)
            acc = measurements["dead_relu"]["accuracy"]
        acc = ev(model) if acc is None else acc
        for m in MEASUREMENTS:  # in their declared order
            if m in exp.measurements and m not in measurements:
                measurements[m] = MEASUREMENTS[m](model, ev, acc)
        final_state.update(state=state, measurements=measurements, accuracy=acc)
        return acc

    history = []
    train_images, train_seconds = 0, 0.0
    for epoch in range(epochs):
        lr = recipe.lr_at(epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        seen = 0
        pbar = None
        if bar:
            from tqdm import tqdm

            pbar = tqdm(total=steps, desc=f"{name} {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                        leave=True, mininterval=0.5)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = train_data.batch(idx, recipe, gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            if pbar is not None:
                pbar.update(1)
                if i % 10 == 0 or i == steps - 1:
                    el = time.perf_counter() - t0
                    pbar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}%",
                                     img_s=f"{seen / max(el, 1e-9):.0f}", refresh=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        el = time.perf_counter() - t0
        train_images += seen
        train_seconds += el
        last = epoch == epochs - 1 and math.isfinite(loss_sum.item())
        test_acc = final_pass() if last else ev(model)  # the last point: the saved (fp16) weights
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": _finite(loss_sum.item() / max(seen, 1)),
               "train_accuracy": 100.0 * correct.item() / max(seen, 1), "test_accuracy": test_acc,
               "images_per_s": seen / max(el, 1e-9), "seconds": el}
        history.append(row)
        if pbar is not None:
            pbar.set_postfix(loss=f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "nan",
                             acc=f"{row['train_accuracy']:.1f}%", img_s=f"{row['images_per_s']:.0f}",
                             test=f"{test_acc:.1f}%")
            pbar.close()
        report((epoch + 1) / (epochs + 1), f"{name}: epoch {epoch + 1}/{epochs}, loss {row['train_loss']}, "
                                           f"test accuracy {test_acc:.2f}%")
        if row["train_loss"] is None:
            raise TrainingError(f"{name}: the training loss is not finite at epoch {epoch + 1} (lr {lr}); "
                                "the run diverged")

    if not final_state:  # epochs = 0 (random)
        final_pass()
    state, measurements, final = final_state["state"], final_state["measurements"], final_state["accuracy"]
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    return {
        "format": RECORD_FORMAT, "model": name, "experiment": exp.name, "variant": vname,
        "description": v.description, "arch": exp.arch, "arch_kwargs": kw, "dataset": info.name,
        "input_size": list(input_size), "mean": list(info.mean), "std": list(info.std),
        "num_classes": info.num_classes,
        "input_transform": ({"name": v.input_transform, "description": INPUT_TRANSFORMS[v.input_transform][1]}
                            if v.input_transform else None),
        "trainable": {"rule": v.trainable, "description": TRAINABLE[v.trainable]},
        "recipe": recipe.public(), "epochs": epochs, "seed": seed, "limit": limit,
        "train_size": len(train_data), "test_size": len(test_data), "params": n_params,
        "trainable_params": n_train, "history": history, "final_test_accuracy": final,
        "measurements": measurements,
        "command": _command(exp.name, vname, info.name, epochs, device_arg, seed, limit, out),
        "argv": list(sys.argv), "code_version": code_version(), "torch_version": torch.__version__,
        "device": device_name(dev), "deterministic": True,
        "images_per_s": (train_images / train_seconds) if train_seconds > 0 else None,
        "train_seconds": train_seconds, "seconds": time.time() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "_state": state,
    }


def precompute_runs(records: Sequence[dict], settings: Optional[Settings] = None, device: str = "auto",
                    log: Callable[[str], None] = lambda m: None) -> dict[str, str]:
    """Precompute the variants just trained, like any zoo model: ``{model: outcome}``.

    A run written with ``--out`` outside the zoo's variant folders is not in the zoo, so there is nothing
    to precompute: its outcome says where it would have to be (nothing is guessed)."""
    from ..pipeline import precompute_many
    from ..zoo import get_spec

    settings = settings or get_settings()
    outcome: dict[str, str] = {}
    todo = []
    for r in records:
        try:
            spec = get_spec(r["model"], settings)
        except Exception:  # noqa: BLE001 - not registered: reported, not fatal
            spec = None
        path = getattr(spec.source, "path", None) if spec is not None else None
        if path is None or Path(path).resolve() != Path(r["checkpoint_path"]).resolve():
            outcome[r["model"]] = (f"not precomputed: {r['checkpoint_path']} is not in the zoo's variant folders "
                                   f"({local_variants_dir(settings)} or the reference dir {settings.reference_dir})")
            log(f"{r['model']}: {outcome[r['model']]}")
        else:
            todo.append(r["model"])
    outcome.update(precompute_many(todo, settings, log=log, device=device))
    return outcome
