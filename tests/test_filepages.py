"""Issue 18 (big models): weights read from a memory-mapped file give their pages back, and nothing else does."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from precompute import filepages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or filepages._madvise is None,
                                reason="/proc/self/pagemap and madvise are Linux's")


def resident(t: torch.Tensor) -> int:
    """Resident pages of the tensor's storage (whole pages inside it)."""
    st = t.untyped_storage()
    first, end = -(-st.data_ptr() // filepages.PAGE), (st.data_ptr() + st.nbytes()) // filepages.PAGE
    e = filepages._entries(first, end - first)
    return int(((e >> 63) & 1).sum())


@pytest.fixture
def mapped(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {"big": torch.randn(512, 1024, generator=g), "small": torch.randn(100, generator=g)}
    save_file(sd, tmp_path / "w.safetensors")
    return sd, load_file(str(tmp_path / "w.safetensors"))


def test_a_mapped_tensor_gives_its_pages_back_and_keeps_its_values(mapped):
    saved, loaded = mapped
    big = loaded["big"]
    assert torch.equal(big, saved["big"])  # every page read
    pages = resident(big)
    assert pages > 100
    freed = filepages.release(big)
    assert freed >= (pages - 2) * filepages.PAGE and resident(big) == 0
    assert torch.equal(big, saved["big"])  # read again from the file, the same values
    assert filepages.release(loaded["small"]) == 0  # below MIN_BYTES: left alone


def test_a_written_page_is_kept(mapped):
    _, loaded = mapped
    big = loaded["big"]
    row = big.shape[1] * 4 // filepages.PAGE + 1  # a row wholly inside the tensor's pages
    big[row].fill_(7.0)  # copy-on-write: these pages are the process's own now
    filepages.release(big)
    assert bool((big[row] == 7.0).all())
    assert resident(big) >= 1


def test_ordinary_memory_is_never_touched():
    t = torch.randn(1 << 20)
    before = t.clone()
    assert filepages.release(t) == 0
    assert torch.equal(t, before) and resident(t) > 0
    m = torch.nn.Linear(1024, 1024)
    w = m.weight.detach().clone()
    assert filepages.release_module(m) == 0 and torch.equal(m.weight, w)
