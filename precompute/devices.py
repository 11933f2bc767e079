"""The one device resolver of the analyses and the trainer, and what the device computes fast."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


class DeviceError(ValueError):
    """A device or precision that cannot be used here; the message says which to use instead."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise DeviceError(f"device must be auto, cpu or cuda; got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """Does ``device`` multiply bfloat16 in hardware? CUDA: ``torch.cuda.is_bf16_supported()``; CPU: the
    AMX or AVX-512 BF16 instructions (oneDNN uses them for bf16 convolutions; without them bf16 is emulated
    and slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device has fast bfloat16, else ``fp32``; ``bf16`` is allowed anywhere
    (slow where emulated), ``fp32`` always."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be auto, fp32 or bf16; got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision
