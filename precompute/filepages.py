"""Give back the memory pages of weights that are read from their file's memory map (issue 18, big models).

A ``.safetensors`` file (and a ``torch.save`` archive loaded with ``mmap=True``) is mapped copy-on-write and the
module takes its tensors as they are (``precompute/sources.py``). A page of the file becomes part of the
process's resident memory when it is first read, and stays until the process ends: once the weights hash, the
inventory's forward pass or an analysis has read every layer, the whole file counts in the peak on top of
everything the analyses allocate. :func:`release` drops a tensor's pages from the process (``madvise
MADV_DONTNEED``); the next read maps them again from the page cache (a minor fault per page, about 1.5 ms per
MB when the page cache still holds them, else a read of the file), so a precompute holds about the layers it
is working on rather than the whole file.

Only pages that are certainly the file's own are dropped: ``/proc/self/pagemap`` tells, page by page, whether
a page is a file (or shared) page, not a private copy. A page of a private file mapping that was written to
(copy-on-write) is an anonymous page and is kept, as is every page of a tensor in ordinary (anonymous) memory:
dropping such a page would lose what was written, or zero the tensor. Pages not resident are left as they
are. So :func:`release` never changes a tensor's values, whatever memory it is in; on a tensor that is not
read from a file it does nothing. The first and last page of a tensor, shared with its neighbours, are kept.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Iterable

import numpy as np
import torch
from torch import nn

PAGE = mmap.PAGESIZE
#: below this many bytes a tensor is not worth the system calls (ConvNeXt-XL's depthwise kernels: 400 KB)
MIN_BYTES = 256 * 1024

_MADV_DONTNEED = 4
#: /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
_PRESENT, _SWAPPED, _FILE_OR_SHARED = 1 << 63, 1 << 62, 1 << 61

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux / no libc madvise: nothing is released
    _madvise = None


def _entries(first: int, count: int) -> np.ndarray | None:
    """The pagemap entries of ``count`` pages from page number ``first``; None where pagemap cannot be read."""
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(first * 8)
            data = f.read(count * 8)
    except OSError:
        return None
    if len(data) != count * 8:
        return None
    return np.frombuffer(data, dtype=np.uint64)


def release(tensor: torch.Tensor) -> int:
    """Drop the resident pages of ``tensor`` that are its file's unmodified pages (see the module docstring);
    returns the bytes of the pages given back (0 for a tensor that is not read from a file)."""
    if _madvise is None or tensor.device.type != "cpu" or tensor.is_sparse:
        return 0
    storage = tensor.untyped_storage()
    start, nbytes = storage.data_ptr(), storage.nbytes()
    if nbytes < MIN_BYTES or not start:
        return 0
    first, end = -(-start // PAGE), (start + nbytes) // PAGE  # whole pages inside the storage only
    if end <= first:
        return 0
    e = _entries(first, end - first)
    if e is None:
        return 0
    # droppable: a resident file page, or nothing there at all; kept: a private (anonymous, or written) page
    ok = ((e & np.uint64(_FILE_OR_SHARED)) != 0) | ((e & np.uint64(_PRESENT | _SWAPPED)) == 0)
    resident = (e & np.uint64(_PRESENT)) != 0
    if not bool((ok & resident).any()):
        return 0
    # runs of droppable pages: one madvise each (a tensor read from a file is one run)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], ok.view(np.uint8), [0]))))
    freed = 0
    for a, b in zip(edges[::2], edges[1::2]):
        if _madvise((first + int(a)) * PAGE, int(b - a) * PAGE, _MADV_DONTNEED) == 0:
            freed += int(resident[a:b].sum()) * PAGE
    return freed


def release_all(tensors: Iterable[torch.Tensor]) -> int:
    return sum(release(t) for t in tensors)


def release_module(module: nn.Module, recurse: bool = True) -> int:
    """:func:`release` of the module's parameters and buffers (its own only without ``recurse``)."""
    return release_all([*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)])
