"""Models that come as files carrying their own graph (ONNX, Keras) or as weights alone, analysed
without an architecture in code. Each format registers a reader (:data:`FORMATS`, filled by
:func:`~precompute.graphs.base.register_format`): ``onnxfiles``, ``kerasfiles``, ``weightsonly``.

A user model of such a format has the format's name as its ``arch`` (``onnx``, ``keras``, ``none``);
``zoo.load_model`` reads it with :func:`load_graph` (the weight container and the inventory rows from
the file) instead of building a module, and the pipeline takes those rows instead of a forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..declarations.limits import file_format
from ..declarations.specs import ModelSpec
from ..errors import ModelError
from ..settings import Settings
from ..sources import LocalFile, _check_sha
from . import kerasfiles, onnxfiles, weightsonly  # noqa: F401  (they register their formats)
from .base import FORMATS, GraphLayer, GraphModel, build_model, register_format  # noqa: F401


def format_for(path: Path, arch: Optional[str]) -> Optional[str]:
    """The graph format of a file added with ``--arch arch``: the format named (``onnx``, ``keras``,
    ``none``), else the one its extension says when no arch is given (``.onnx``, ``.h5``, ``.keras``);
    None for an architecture in code. ModelError when the two disagree."""
    try:
        fmt = file_format(arch or "", Path(path).name)
    except ValueError as e:
        raise ModelError(f"{e}. Formats read without an architecture: "
                         + "; ".join(f"--arch {f.name}: {f.description} ({', '.join(f.extensions)})"
                                     for f in (FORMATS.get(n) for n in FORMATS.names()))) from None
    if fmt is not None and fmt not in FORMATS:  # declared, but its reader is not in this version
        raise ModelError(f"{Path(path).name}: the {fmt} format is declared but has no reader")
    return fmt


def read_graph(path: Path, fmt: str, input_size: Optional[tuple[int, int, int]], max_expansion: float) -> GraphModel:
    """Read ``path`` as format ``fmt``; ModelError for anything it cannot read."""
    return FORMATS.get(fmt).read(Path(path), input_size, max_expansion)


def load_graph(spec: ModelSpec, settings: Settings) -> tuple[GraphModel, Optional[str]]:
    """The graph model of a user spec whose ``arch`` is a format name, and its file's sha256."""
    src = spec.source
    if not isinstance(src, LocalFile):
        raise ModelError(f"model {spec.name!r}: a {spec.arch} model reads a local file; got a {src.kind} source")
    if not src.path.is_file():
        raise ModelError(f"missing file {src.path} for model {spec.name!r}: put the file back there or re-add "
                         f"the model (convscope add)")
    sha = _check_sha(src.path, src.sha256, "replace it with the file that was added, or re-add the model")
    return read_graph(src.path, spec.arch, spec.input_size, settings.max_checkpoint_expansion), sha


def is_graph_spec(spec: ModelSpec) -> bool:
    return spec.arch in FORMATS
