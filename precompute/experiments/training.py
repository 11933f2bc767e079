"""Training the variants of an experiment: deterministic given the seed, resumable, measured as it goes.

The whole split lives on the device as uint8; each batch is augmented (random shifts and flips drawn
from a seeded generator), passed through the variant's input transform, normalised, and fed to the net
(channels-last; bfloat16 autocast where the device multiplies bfloat16 in hardware, see
``devices.resolve_precision``). At the initialisation, at 1/8, 1/4 and 1/2 of the first epoch and after
every epoch the run records a history point (test accuracy, training loss, the weight metrics of
history.py, the share of dead ReLU channels). After every epoch but the last it writes a resume state
(resume.py); a run killed at any moment and resumed ends bitwise identical to the same run made in one go.
At the end the weights are rounded to float16, and the final test accuracy and the experiment's
measurements are computed on exactly the weights that are saved.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import build
from ..declarations.records import RECORD_FORMAT
from ..devices import resolve_device, resolve_precision
from ..pipeline import precompute_many
from ..settings import Settings, get_settings
from ..zoo import get_spec
from .datasets import DATASETS, DatasetInfo, load_raw, normalize
from .history import first_epoch_steps, weight_metrics
from .measurements import MEASUREMENTS, dead_relu
from .nets import init_weights
from .recipes import EXPERIMENTS, INPUT_TRANSFORMS, RANDOM, TRAINABLE, Experiment, Recipe, transformed_size
from .records import fp16_state, local_variants_dir, read_record, write_run
from .resume import ResumeError, config_differences, load_state, resume_path, save_state

#: progress(fraction done in [0, 1], message)
Reporter = Callable[[float, str], None]
Progress = Union[bool, Reporter]
#: history keys that measure the machine, not the run (left out when two runs are compared)
TIMING_KEYS = ("images_per_s", "seconds")


class TrainingError(Exception):
    """A training run that cannot start or that failed; the message says why."""


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
    """The recipe's augmentation of float [0, 1] images (B, C, H, W), on the whole batch at once;
    randomness from ``gen`` (CPU) only."""
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
    """A split on the device as uint8 (N, C, H, W), with the transform and normalisation of a variant."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo, transform: Optional[str],
                 device: torch.device):
        self.x, self.y = x.to(device), y.to(device)
        self.info, self.device = info, device
        self.transform = INPUT_TRANSFORMS[transform][0] if transform else None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: torch.Tensor, recipe: Optional[Recipe] = None, gen: Optional[torch.Generator] = None):
        """(normalised float images (B, C, H, W) in channels-last memory, labels (B,))."""
        x = self.x[idx].float().div_(255.0)
        if recipe is not None:
            x = augment(x, recipe, gen)
        if self.transform is not None:
            x = self.transform(x)
        return normalize(x, self.info).contiguous(memory_format=torch.channels_last), self.y[idx]


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast for ``bf16`` (convolutions and matmuls in bf16, BatchNorm and the loss in float32;
    the weights stay float32), nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, data: _Data, batch_size: int, precision: str = "fp32") -> float:
    """Top-1 accuracy in % (eval mode, no augmentation)."""
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(data.device, precision):
        for i in range(0, len(data), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(data)), device=data.device)
            x, y = data.batch(idx)
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return 100.0 * correct / max(len(data), 1)


def _finite(v: float) -> Optional[float]:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


@dataclass(frozen=True)
class RunConfig:
    """The identity of one variant's run: a resume state continues only a run of the same config, and a
    finished record with the same config is not trained again by ``--resume``."""

    experiment: str
    variant: str
    dataset: str
    epochs: int
    seed: int
    limit: Optional[int]
    device: str  # "cpu" | "cuda": results are deterministic per device type
    precision: str  # "fp32" | "bf16" (resolved)

    def public(self) -> dict:
        return asdict(self)

    def command(self, out: Optional[Path]) -> str:
        """The canonical command that reproduces this run."""
        parts = ["convscope", "train", self.experiment, "--variant", self.variant, "--dataset", self.dataset,
                 "--epochs", str(self.epochs), "--device", self.device, "--precision", self.precision,
                 "--seed", str(self.seed)]
        if self.limit is not None:
            parts += ["--limit", str(self.limit)]
        if out is not None:
            parts += ["--out", str(out)]
        return shlex.join(parts)


def train(experiment: str, variants: Optional[Sequence[str]] = None, *, dataset: Optional[str] = None,
          epochs: Optional[int] = None, device: str = "auto", precision: Optional[str] = None, seed: int = 0,
          limit: Optional[int] = None, out: Optional[Union[str, Path]] = None, settings: Optional[Settings] = None,
          progress: Progress = True, download: bool = False, resume: bool = False,
          restart: bool = False, snapshots: bool = False) -> list[dict]:
    """Train the variants of ``experiment`` (default: all its declared variants; ``random`` saves the
    initialisation untrained) and write ``<out>/<experiment>-<variant>.safetensors`` + ``.json`` for
    each (default out: ``<data_dir>/variants``). Returns the records, with ``checkpoint_path`` and
    ``record_path`` added.

    ``resume``: continue each variant from its resume state (the last complete epoch) when it has one,
    and skip a variant whose finished record in ``out`` has the same config. Without ``resume`` an
    existing resume state is an error (hours of training are not thrown away by a forgotten flag) unless
    ``restart`` discards it. ``precision``: auto | fp32 | bf16 (default: ``settings.train_precision``).
    ``snapshots``: also keep the float16 weights after epochs 1, 2, 4, 8, ... as models of their own,
    ``<model>.e<epoch>`` (see :func:`snapshot_epochs`), which the explorer opens like any other.
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
    prec = resolve_precision(precision or settings.train_precision, dev)
    out_dir = Path(out) if out is not None else local_variants_dir(settings)
    configs = [RunConfig(exp.name, v, info.name, 0 if v == RANDOM else epochs, int(seed), limit, dev.type, prec)
               for v in names]
    states = _check_states(exp, configs, out_dir, resume, restart)

    xtr, ytr = load_raw(dataset, "train", settings, limit=limit, download=download)
    xte, yte = load_raw(dataset, "test", settings, limit=limit, download=download)

    records = []
    with _deterministic(dev):
        for k, cfg in enumerate(configs):
            def report(f, msg, k=k):
                if callable(progress):
                    progress((k + f) / len(configs), msg)

            done = _finished(out_dir, exp.model_name(cfg.variant, cfg.seed), cfg) if resume else None
            if done is not None:
                report(1.0, f"{done['model']}: already trained with this config ({done['record_path']}); skipped")
                records.append(done)
                continue
            run = _Run(exp, cfg, info, (xtr, ytr), (xte, yte), dev)
            rec = run.train(states.get(cfg.variant), resume_path(out_dir, run.name),
                            cfg.command(out if out is not None else None), bar=progress is True, report=report,
                            snapshot_dir=out_dir if snapshots else None)
            ckpt, jpath = write_run(out_dir, rec["model"], rec.pop("_state"), rec)
            resume_path(out_dir, run.name).unlink(missing_ok=True)  # finished: the state is not needed
            rec = dict(rec, checkpoint_path=str(ckpt), record_path=str(jpath))
            report(1.0, f"{rec['model']}: test accuracy {rec['final_test_accuracy']:.2f}% -> {ckpt.name}")
            records.append(rec)
    return records


@contextlib.contextmanager
def _deterministic(dev: torch.device):
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn


def _check_states(exp: Experiment, configs: Sequence[RunConfig], out_dir: Path, resume: bool,
                  restart: bool) -> dict[str, dict]:
    """Read (``resume``) or discard (``restart``) the variants' resume states before any work; a state of
    another config, or an unfinished run met without either flag, is an error that says what to do."""
    states = {}
    for cfg in configs:
        name = exp.model_name(cfg.variant, cfg.seed)
        path = resume_path(out_dir, name)
        if not path.is_file():
            continue
        if restart:
            path.unlink()
            continue
        try:
            state = load_state(path)
        except ResumeError as e:
            raise TrainingError(str(e)) from None
        if not resume:
            raise TrainingError(
                f"{name} has an unfinished run ({state.get('epoch')}/{(state.get('config') or {}).get('epochs')} "
                f"epochs done, {path.name} in {out_dir.name}/): add --resume to continue it, or --restart to "
                f"discard it and start over")
        diff = config_differences(state.get("config") or {}, cfg.public())
        if diff:
            raise TrainingError(f"{name}: the unfinished run in {path.name} was made with another config "
                                f"({'; '.join(diff)}); run it with its own options, or add --restart to discard it")
        states[cfg.variant] = state
    return states


def _finished(out_dir: Path, name: str, cfg: RunConfig) -> Optional[dict]:
    """The finished record of ``name`` in ``out_dir`` when it was made with ``cfg`` and has its checkpoint."""
    jpath, ckpt = out_dir / f"{name}.json", out_dir / f"{name}.safetensors"
    if resume_path(out_dir, name).is_file() or not (jpath.is_file() and ckpt.is_file()):
        return None
    try:
        run = read_record(jpath)
    except Exception:  # noqa: BLE001 - unreadable: train it again
        return None
    if run.config != cfg.public():
        return None
    return dict(run.public(), checkpoint_path=str(ckpt), record_path=str(jpath))


class _Run:
    """One variant's training: the model, optimizer, data and generator, and the history so far."""

    def __init__(self, exp: Experiment, cfg: RunConfig, info: DatasetInfo, train_split, test_split,
                 dev: torch.device):
        self.exp, self.cfg, self.info, self.dev = exp, cfg, info, dev
        self.v = exp.variant(cfg.variant)
        self.recipe = exp.recipe
        self.name = exp.model_name(cfg.variant, cfg.seed)
        self.input_size = transformed_size(self.v.input_transform, info.input_size)
        kw = {**exp.arch_kwargs, **self.v.arch_kwargs, "in_channels": info.input_size[0],
              "num_classes": info.num_classes}
        if exp.arch == "banding-net":
            kw["image_size"] = [self.input_size[1], self.input_size[2]]
        self.arch_kwargs = kw

        torch.manual_seed(cfg.seed)
        model = build(exp.arch, **kw)
        init_weights(model, self.recipe.bn_gamma)
        set_trainable(model, self.v.trainable)
        self.model = model.to(dev).to(memory_format=torch.channels_last)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        r = self.recipe
        self.opt = torch.optim.SGD(self.params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov,
                                   weight_decay=r.weight_decay)
        self.train_data = _Data(*train_split, info, self.v.input_transform, dev)
        self.test_data = _Data(*test_split, info, self.v.input_transform, dev)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict] = []
        self.timing = {"train_images": 0, "train_seconds": 0.0}
        self.resumed: list[dict] = []
        self.epoch = 0  # complete epochs

    # ---- evaluation -----------------------------------------------------------------------------------
    def ev(self, model: nn.Module) -> float:
        return evaluate(model, self.test_data, self.recipe.eval_batch_size, self.cfg.precision)

    def point(self, epoch: float, step: int, lr: float, loss: Optional[float], train_acc: Optional[float],
              images_per_s: Optional[float], seconds: Optional[float]) -> dict:
        """A history point on the current weights: test accuracy (with the dead-ReLU share from the same
        pass where the experiment measures it) and the weight metrics."""
        extra = {}
        if "dead_relu" in self.exp.measurements:
            d = dead_relu(self.model, self.ev)
            acc, extra["dead_relu"] = d["accuracy"], round(d["fraction"], 6)
        else:
            acc = self.ev(self.model)
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": loss, "train_accuracy": train_acc,
               "test_accuracy": acc, "images_per_s": images_per_s, "seconds": seconds, **extra,
               "metrics": weight_metrics(self.model)}
        self.history.append(row)
        return row

    def final_pass(self) -> tuple[dict, dict, float]:
        """Round the weights to float16 (what is saved); (state, measurements, test accuracy) of exactly
        those. One test pass serves the accuracy and the ReLU statistics."""
        state = fp16_state(self.model)
        self.model.load_state_dict({k: (t.float() if t.is_floating_point() else t) for k, t in state.items()})
        self.model.eval()
        measurements, acc = {}, None
        if "dead_relu" in self.exp.measurements:
            measurements["dead_relu"] = MEASUREMENTS["dead_relu"](self.model, self.ev)
            acc = measurements["dead_relu"]["accuracy"]
        acc = self.ev(self.model) if acc is None else acc
        for m in MEASUREMENTS:  # in their declared order
            if m in self.exp.measurements and m not in measurements:
                measurements[m] = MEASUREMENTS[m](self.model, self.ev, acc)
        return state, measurements, acc

    # ---- resume -----------------------------------------------------------------------------------------
    def state(self, command: str) -> dict:
        return {"config": self.cfg.public(), "command": command, "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history": self.history, "timing": self.timing, "resumed": self.resumed}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        self.timing = dict(state["timing"])
        self.epoch = int(state["epoch"])
        self.resumed = list(state.get("resumed") or []) + [
            {"from_epoch": self.epoch, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]

    # ---- the run ------------------------------------------------------------------------------------------
    def train(self, state: Optional[dict], state_path: Path, command: str, bar: bool, report: Reporter,
              snapshot_dir: Optional[Path] = None) -> dict:
        t_start = time.time()
        epochs = self.cfg.epochs
        if state is not None:
            self.restore(state)
            report(self.epoch / (epochs + 1), f"{self.name}: resumed from epoch {self.epoch}/{epochs}")
        elif epochs > 0:
            self.point(0, 0, self.recipe.lr_at(0, epochs), None, None, None, None)  # the initialisation
        final: Optional[tuple[dict, dict, float]] = None
        while self.epoch < epochs:
            row = self._epoch(bar, report, t_start)
            if self.epoch < epochs:
                # the snapshot before the state: killed in between, the epoch is redone and the same file rewritten
                if snapshot_dir is not None and self.epoch in snapshot_epochs(epochs):
                    self._snapshot(snapshot_dir, row, command, t_start)
                save_state(state_path, self.state(command))
            else:
                final = self.final_pass()
                # the last point: the saved (fp16) weights
                row["test_accuracy"] = final[2]
                if "dead_relu" in final[1]:
                    row["dead_relu"] = round(final[1]["dead_relu"]["fraction"], 6)
                row["metrics"] = weight_metrics(self.model)
        if final is None:  # epochs = 0 (random)
            final = self.final_pass()
            self.history = [{"epoch": 0, "step": 0, "lr": self.recipe.lr, "train_loss": None, "train_accuracy": None,
                             "test_accuracy": final[2], "images_per_s": None, "seconds": None,
                             **({"dead_relu": round(final[1]["dead_relu"]["fraction"], 6)}
                                if "dead_relu" in final[1] else {}),
                             "metrics": weight_metrics(self.model)}]
        return self._record(final, command, t_start)

    def _snapshot(self, out_dir: Path, row: dict, command: str, t_start: float) -> None:
        """Write the current weights (float16) as the model ``<name>.e<epoch>``, with a record whose history
        ends at this epoch; its test accuracy is the history point's (measured on the float32 weights)."""
        rec = self._record((fp16_state(self.model), {}, row["test_accuracy"]), command, t_start)
        name = f"{self.name}.e{self.epoch}"
        rec.update(model=name, snapshot={"of": self.name, "epoch": self.epoch, "epochs": self.cfg.epochs},
                   description=f"{rec['description']} (snapshot after epoch {self.epoch} of {self.cfg.epochs})")
        write_run(out_dir, name, rec.pop("_state"), rec)

    def _epoch(self, bar: bool, report: Reporter, t_start: float) -> dict:
        """Train one epoch (recording the first epoch's inner points); its end-of-epoch history row."""
        epoch, epochs = self.epoch, self.cfg.epochs
        model, dev, bs = self.model, self.dev, self.recipe.batch_size
        lr = self.recipe.lr_at(epoch, epochs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        model.train()
        n = len(self.train_data)
        steps = (n + bs - 1) // bs
        inner = first_epoch_steps(steps) if epoch == 0 else {}
        perm = torch.randperm(n, generator=self.gen).to(dev)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        seen = 0
        pbar = None
        if bar:
            from tqdm import tqdm  # noqa: PLC0415 - the bar only where a terminal shows it

            pbar = tqdm(total=steps, desc=f"{self.name} {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                        leave=True, mininterval=0.5)
        t0, paused = time.perf_counter(), 0.0
        global_step = epoch * steps
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = self.train_data.batch(idx, self.recipe, self.gen)
            with autocast(dev, self.cfg.precision):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            if pbar is not None:
                pbar.update(1)
                if i % 10 == 0 or i == steps - 1:
                    el = time.perf_counter() - t0 - paused
                    pbar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}%",
                                     img_s=f"{seen / max(el, 1e-9):.0f}", refresh=False)
            if i + 1 in inner:
                el = time.perf_counter() - t0 - paused
                t_point = time.perf_counter()
                self.point(epoch + inner[i + 1], global_step + i + 1, lr, _finite(loss_sum.item() / seen),
                           100.0 * correct.item() / seen, seen / max(el, 1e-9), el)
                model.train()
                paused += time.perf_counter() - t_point  # the points' test passes are not training time
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        el = time.perf_counter() - t0 - paused
        self.timing["train_images"] += seen
        self.timing["train_seconds"] += el
        self.epoch = epoch + 1
        loss_mean = _finite(loss_sum.item() / max(seen, 1))
        last = self.epoch == epochs
        if last:  # the test pass and the metrics come from the fp16 weights (train() fills them in)
            row = {"epoch": self.epoch, "step": global_step + steps, "lr": lr, "train_loss": loss_mean,
                   "train_accuracy": 100.0 * correct.item() / max(seen, 1), "test_accuracy": None,
                   "images_per_s": seen / max(el, 1e-9), "seconds": el}
            self.history.append(row)
        else:
            row = self.point(self.epoch, global_step + steps, lr, loss_mean, 100.0 * correct.item() / max(seen, 1),
                             seen / max(el, 1e-9), el)
        if pbar is not None:
            pbar.set_postfix(loss=f"{loss_mean:.3f}" if loss_mean is not None else "nan",
                             acc=f"{row['train_accuracy']:.1f}%", img_s=f"{row['images_per_s']:.0f}",
                             test=f"{row['test_accuracy']:.1f}%" if row["test_accuracy"] is not None else "-")
            pbar.close()
        if loss_mean is None:
            raise TrainingError(f"{self.name}: the training loss is not finite at epoch {self.epoch} (lr {lr}); "
                                "the run diverged")
        spent = time.time() - t_start
        done_here = self.epoch - (self.resumed[-1]["from_epoch"] if self.resumed else 0)
        left = spent / max(done_here, 1) * (epochs - self.epoch)
        acc = f", test accuracy {row['test_accuracy']:.2f}%" if row["test_accuracy"] is not None else ""
        since = f" (resumed from epoch {self.resumed[-1]['from_epoch']})" if self.resumed else ""
        report(self.epoch / (epochs + 1), f"{self.name}: epoch {self.epoch}/{epochs}{since}, loss "
                                         f"{loss_mean:.4f}{acc}, about {_duration(left)} left")
        return row

    def _record(self, final: tuple[dict, dict, float], command: str, t_start: float) -> dict:
        state, measurements, acc = final
        cfg, v, info = self.cfg, self.v, self.info
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.params)
        t = self.timing
        return {
            "format": RECORD_FORMAT, "model": self.name, "experiment": self.exp.name, "variant": cfg.variant,
            "description": v.description, "arch": self.exp.arch, "arch_kwargs": self.arch_kwargs,
            "dataset": info.name, "input_size": list(self.input_size), "mean": list(info.mean),
            "std": list(info.std), "num_classes": info.num_classes,
            "input_transform": ({"name": v.input_transform, "description": INPUT_TRANSFORMS[v.input_transform][1]}
                                if v.input_transform else None),
            "trainable": {"rule": v.trainable, "description": TRAINABLE[v.trainable]},
            "recipe": self.recipe.public(), "epochs": cfg.epochs, "seed": cfg.seed, "limit": cfg.limit,
            "precision": cfg.precision, "config": cfg.public(),
            "train_size": len(self.train_data), "test_size": len(self.test_data), "params": n_params,
            "trainable_params": n_train, "history": self.history, "final_test_accuracy": acc,
            "plateau": plateau(self.history), "measurements": measurements, "command": command,
            "argv": list(sys.argv), "code_version": code_version(), "torch_version": torch.__version__,
            "device": device_name(self.dev), "deterministic": True, "resumed": self.resumed,
            "images_per_s": (t["train_images"] / t["train_seconds"]) if t["train_seconds"] > 0 else None,
            "train_seconds": t["train_seconds"], "seconds": time.time() - t_start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "_state": state,
        }


#: a run is at its plateau when the test accuracy of its last PLATEAU_EPOCHS epochs spans at most this
PLATEAU_POINTS = 0.5
PLATEAU_EPOCHS = 3


def plateau(history: Sequence[dict]) -> dict:
    """Did the run reach its accuracy plateau? ``{reached, span, epochs, threshold}``: the test accuracy
    over the last 3 complete epochs spans at most 0.5 points (``reached`` is None with fewer epochs)."""
    accs = [r["test_accuracy"] for r in history
            if isinstance(r.get("epoch"), int) and r["epoch"] > 0 and r.get("test_accuracy") is not None]
    last = accs[-PLATEAU_EPOCHS:]
    if len(last) < PLATEAU_EPOCHS:
        return {"reached": None, "span": None, "epochs": PLATEAU_EPOCHS, "threshold": PLATEAU_POINTS}
    span = max(last) - min(last)
    return {"reached": span <= PLATEAU_POINTS, "span": round(span, 4), "epochs": PLATEAU_EPOCHS,
            "threshold": PLATEAU_POINTS}


def snapshot_epochs(epochs: int) -> list[int]:
    """Log-spaced epochs at which ``--snapshots`` keeps the weights: 1, 2, 4, 8, ... before the last epoch
    (the last one is the run itself)."""
    out, e = [], 1
    while e < epochs:
        out.append(e)
        e *= 2
    return out


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def precompute_runs(records: Sequence[dict], settings: Optional[Settings] = None, device: str = "auto",
                    log: Callable[[str], None] = lambda m: None) -> dict[str, str]:
    """Precompute the variants just trained, like any zoo model: ``{model: outcome}``.

    A run written with ``--out`` outside the zoo's variant folders is not in the zoo, so there is nothing
    to precompute: its outcome says where it would have to be (nothing is guessed)."""
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
