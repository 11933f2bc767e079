"""Resume states of unfinished training runs: ``<out>/<model>.resume.pt``, beside the run's files.

The trainer writes one at the end of every epoch, atomically (written to a temporary file, then renamed,
as the cache does), so a run killed at any moment, SIGKILL included, loses at most the epoch in progress.
It holds everything the rest of the run depends on:

- ``config``: the run's identity (experiment, variant, dataset, epochs, seed, limit, device type,
  precision, recipe, architecture); a state continues only the same config;
- ``epoch``: the number of complete epochs; the next epoch starts from its beginning;
- ``model``, ``optimizer``: the state dicts (float32 weights, BatchNorm statistics, momentum buffers);
  the learning rate is a function of the epoch (``Recipe.lr_at``), so it needs no state of its own;
- ``generator``, ``torch_rng``: the RNG states; the seeded generator draws the data order and the
  augmentation, so its state at the epoch's end is the position in the data order;
- ``history``, ``timing``, ``resumed``: the record so far.

A finished run deletes its state. Loading uses ``torch.load(weights_only=True)``: a resume state is
data (tensors, numbers, strings), never code, even though convscope wrote it itself.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..cache import atomic_write

RESUME_FORMAT = "convscope-resume/1"
SUFFIX = ".resume.pt"


class ResumeError(Exception):
    """A resume state that is unreadable or belongs to another run; the message says what to do."""


def resume_path(out_dir: Path, model: str) -> Path:
    """Where the resume state of ``model`` trained into ``out_dir`` lives (``model`` is a checked name)."""
    return Path(out_dir) / f"{model}{SUFFIX}"


def save_state(path: Path, state: dict) -> None:
    """Write ``state`` (plus format and time) atomically."""
    buf = io.BytesIO()
    torch.save(dict(state, format=RESUME_FORMAT, updated=time.time()), buf)
    atomic_write(path, buf.getvalue())


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which, never crash on it
        raise ResumeError(f"{path.name}: not a readable resume state ({type(e).__name__}: {e}); discard it with "
                          f"`convscope train --discard {path.name[:-len(SUFFIX)]}`") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ResumeError(f"{path.name}: not a convscope resume state (format "
                          f"{state.get('format') if isinstance(state, dict) else None!r})")
    return state


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """``["epochs: 20 (saved) != 30 (asked)", ...]`` for every key whose value differs."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: {saved.get(k)!r} (saved) != {wanted.get(k)!r} (asked)" for k in keys if saved.get(k) != wanted.get(k)]


def summary(path: Path) -> dict:
    """One unfinished run, for ``convscope train --list-runs`` and the jobs API: what it is, how far it
    got, and the commands that resume or discard it. A state that cannot be read is listed with its error."""
    model = path.name[:-len(SUFFIX)]
    try:
        st = load_state(path)
    except ResumeError as e:
        return {"model": model, "file": path.name, "error": str(e), "discard": f"convscope train --discard {model}"}
    cfg = st.get("config") or {}
    hist = [r for r in st.get("history") or [] if isinstance(r.get("epoch"), int) and r["epoch"] > 0]
    return {
        "model": model, "file": path.name, "experiment": cfg.get("experiment"), "variant": cfg.get("variant"),
        "epoch": int(st.get("epoch", 0)), "epochs": cfg.get("epochs"),
        "test_accuracy": hist[-1].get("test_accuracy") if hist else None,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(st.get("updated", 0)))),
        "resume": st.get("command", "") + " --resume",
        "discard": f"convscope train --discard {model}",
    }


def find_states(folders: Iterable[Path]) -> list[Path]:
    """Every resume state in ``folders`` (missing folders are skipped), sorted by name."""
    found: dict[str, Path] = {}
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for p in sorted(folder.glob(f"*{SUFFIX}")):
                if not p.name.startswith("."):
                    found.setdefault(str(p.resolve()), p)
    return sorted(found.values(), key=lambda p: p.name)


def discard(folders: Iterable[Path], model: str) -> Optional[Path]:
    """Delete the resume state of ``model`` in the first folder that has one; its path, or None."""
    for folder in folders:
        p = resume_path(Path(folder), model)
        if p.is_file():
            p.unlink()
            return p
    return None
