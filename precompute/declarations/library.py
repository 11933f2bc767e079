"""The torchvision and timm architectures by name (``torchvision:NAME``, ``timm:NAME``): the prefixes and
the catalogue the web server searches as a user types (name, task, native input size, parameter count,
state-dict signature), read from ``library_models.json`` beside this file.

The catalogue is built, with torch, by ``python -m precompute.librarymodels --write`` from the pinned
torchvision and timm (pyproject.toml); ``tests/test_librarymodels.py`` checks that it lists exactly what
the installed libraries list and that its figures are what a built model has. The builders are in
``precompute/libraries/`` (one module per library), looked up through ``precompute/librarymodels.py``.

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..registry import UnknownName, unknown_message

#: the libraries whose models are named "<prefix>:<name>"
PREFIXES = ("torchvision", "timm")
CATALOGUE_FILE = Path(__file__).with_name("library_models.json")
CATALOGUE_FORMAT = 1
#: most matches one search returns (the upload form shows them as the user types)
SEARCH_MAX = 50
#: what a search may hold: the characters of architecture names and spaces, with a letter or digit
#: (".." or "~" search nothing; a path never reaches a lookup)
SEARCH_PATTERN = r"^[A-Za-z0-9 _.:+-]*[A-Za-z0-9][A-Za-z0-9 _.:+-]*$"


@dataclass(frozen=True)
class LibraryModel:
    name: str  # "timm:resnet50"
    task: str  # classification, segmentation or detection
    input_size: Optional[tuple[int, int, int]]  # native (C, H, W); None: any size (give --input-size)
    params: int
    tensors: int  # state-dict tensors, num_batches_tracked left out
    signature: str  # precompute.librarymodels.signature of the state dict's (key, shape) list

    def public(self) -> dict:
        return {"name": self.name, "task": self.task, "params": self.params,
                "input_size": list(self.input_size) if self.input_size else None}


def is_library_name(arch: str) -> bool:
    return isinstance(arch, str) and arch.split(":", 1)[0] in PREFIXES and ":" in arch


def split_name(arch: str) -> tuple[str, str]:
    """"timm:resnet50" -> ("timm", "resnet50"); UnknownName when the prefix is not a library's."""
    prefix, sep, name = arch.partition(":")
    if not sep or prefix not in PREFIXES or not name:
        raise UnknownName(f"unknown model library in {arch!r}: write torchvision:NAME or timm:NAME "
                          f"(the libraries are {', '.join(PREFIXES)})")
    return prefix, name


@functools.lru_cache(maxsize=1)
def _file() -> dict:
    """The catalogue file, read and checked once (a search asks for its models and its versions)."""
    data = json.loads(CATALOGUE_FILE.read_text())
    if data.get("format") != CATALOGUE_FORMAT:
        raise ValueError(f"{CATALOGUE_FILE.name} has format {data.get('format')!r}, this code reads "
                         f"{CATALOGUE_FORMAT}: rebuild it with python -m precompute.librarymodels --write")
    return data


@functools.lru_cache(maxsize=1)
def catalogue() -> dict[str, LibraryModel]:
    """name -> LibraryModel, in the catalogue's order."""
    return {e["name"]: LibraryModel(e["name"], e["task"], tuple(e["input_size"]) if e["input_size"] else None,
                                    int(e["params"]), int(e["tensors"]), e["signature"])
            for e in _file()["models"]}


def versions() -> dict[str, str]:
    """The library versions the catalogue was built from."""
    return dict(_file()["versions"])


def query_words(query: str) -> list[str]:
    """The lower-case words of a search ("timm:ResNet 50" -> ["timm", "resnet", "50"]): a name matches
    when it contains every one."""
    return [w for w in query.lower().replace(":", " ").split() if w]


def unknown(arch: str) -> None:
    """Raise UnknownName for ``arch``, with the catalogue's close names."""
    raise UnknownName(unknown_message("architecture", arch, catalogue()))


def get(arch: str) -> LibraryModel:
    """The catalogue entry of "torchvision:NAME" / "timm:NAME"; UnknownName with the close names."""
    split_name(arch)
    entry = catalogue().get(arch)
    if entry is None:
        unknown(arch)
    return entry


def search(query: str, limit: int = SEARCH_MAX) -> list[LibraryModel]:
    """The catalogue's names that contain every word of ``query`` (case-insensitive; "res 50" finds
    timm:resnet50 and torchvision:resnet50). Ranked: the name equal to the query's (prefix-less) words,
    then names that start with the first of them, then the shorter names."""
    words = query_words(query)
    if not words:
        return []
    hits = [m for n, m in catalogue().items() if all(w in n.lower() for w in words)]
    bare_words = [w for w in words if w not in PREFIXES] or words
    whole, first = "".join(bare_words), bare_words[0]

    def rank(m: LibraryModel) -> tuple:
        bare = m.name.split(":", 1)[1].lower()
        return bare != whole, not bare.startswith(first), len(bare), m.name

    return sorted(hits, key=rank)[:max(0, limit)]
