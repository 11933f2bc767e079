"""What every analysis declares once: name, version, parameters (pydantic, with defaults and
validation) and the layers it applies to. The CLI, the cache keys and the API read that declaration.

An analysis computes all the layers it is given in one call, so that it can batch neurons (and
layers of the same shape) into one tensor computation on the context's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from ..declarations import analyses as declared
from ..filepages import release_module
from ..registry import Registry
from .nmf_core import cpu_threads


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ModelContext:
    """One loaded model as the analyses see it.

    ``inventory`` is the list of layer rows from :mod:`precompute.inventory` (JSON-able dicts).

    Weights read from the file's memory map (precompute/filepages.py) are given back to the file as the
    analyses move on: every page when the context is made and when an analysis has run, and a layer's when
    the analyses have asked for :data:`KEEP` other layers since (an analysis reads its layers one after the
    other, a layer and its feeder together), so the process holds about the layers being worked on rather than
    the whole file.
    """

    name: str
    module: torch.nn.Module
    inventory: list[dict]
    weights_sha256: str
    device: torch.device
    _modules: dict = field(default_factory=dict, repr=False)
    #: the layers whose weights were read last, the latest last (their pages are kept)
    _recent: list = field(default_factory=list, repr=False)
    #: layers whose pages stay resident after they were read
    KEEP: ClassVar[int] = 2

    def __post_init__(self):
        self._modules = dict(self.module.named_modules())
        self._rows = {r["name"]: r for r in self.inventory}
        release_module(self.module)

    def _read(self, layer: str) -> None:
        """Note that ``layer``'s weights are being read; give back the pages of the layer read :data:`KEEP`
        layers before."""
        if layer in self._recent:
            self._recent.remove(layer)
        self._recent.append(layer)
        while len(self._recent) > self.KEEP:
            release_module(self._modules[self._recent.pop(0)], recurse=False)

    def row(self, layer: str) -> dict:
        return self._rows[layer]

    def rows(self, type_: Optional[str] = None) -> list[dict]:
        return [r for r in self.inventory if type_ is None or r["type"] == type_]

    def weight(self, layer: str) -> torch.Tensor:
        """The layer's weight as float32 on the context's device. Conv: (N, C/groups, kh, kw)."""
        self._read(layer)
        return self._modules[layer].weight.detach().to(self.device, torch.float32)

    def bias(self, layer: str) -> Optional[torch.Tensor]:
        self._read(layer)
        b = getattr(self._modules[layer], "bias", None)
        return None if b is None else b.detach().to(self.device, torch.float32)

    def module_of(self, layer: str) -> torch.nn.Module:
        return self._modules[layer]


class LazyResults(Mapping):
    """{layer: result} whose results are made when read, each time: for an analysis whose JSON results are much
    bigger than the tensors they come from. ConvNeXt-XL's NMF images are 21 MB of floats but some 400 MB as
    Python lists; the pipeline writes each layer to the cache as it reads it, so it never holds every layer's
    lists at once."""

    def __init__(self, makers: dict[str, Callable[[], dict]]):
        self._makers = makers

    def __getitem__(self, layer: str) -> dict:
        return self._makers[layer]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


class Analysis:
    """Base class. Subclasses set ``name``, ``version``, ``Params`` and implement ``applies`` and ``_run``
    (:meth:`run` calls it under the thread limit)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    #: per-model analyses run on layers; "group" analyses (clusters) run over several models
    scope: ClassVar[str] = "layer"
    #: torch threads while it runs on the CPU: the analyses are many small tensor operations, whose thread
    #: start-up and barrier costs dominate with more than one (see nmf_core.cpu_threads); 0 keeps torch's
    threads: ClassVar[int] = 1
    #: what of the model's graph the analysis needs beyond the weights (e.g. which conv feeds which), in
    #: words; "" when the weights alone do. A model read from bare weights (``--arch none``) lists the
    #: analyses with one in its record's ``skipped``, with how to give the architecture.
    needs_graph: ClassVar[str] = ""

    def params(self, **overrides) -> BaseModel:
        """Validated parameters (defaults filled in); raises pydantic.ValidationError on bad values."""
        return self.Params(**overrides)

    def applies(self, row: dict) -> bool:
        raise NotImplementedError

    def run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> Mapping[str, dict]:
        """Compute the result of every layer in ``rows``; returns {layer name: JSON-able result} (a dict, or
        a :class:`LazyResults` that makes each layer's result when it is read)."""
        with cpu_threads(self.threads if ctx.device.type == "cpu" else 0):
            try:
                return self._run(ctx, rows, params)
            finally:  # the pages of the layers it read all at once (NMF reads every layer, then fits)
                release_module(ctx.module)

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        raise NotImplementedError

    def scalars(self, result: dict) -> dict[str, float]:
        """Per-layer scalar metrics for the model's depth profiles (default: none)."""
        return {}

    def declaration(self) -> dict:
        return {"name": self.name, "version": self.version, "description": self.description,
                "scope": self.scope, "params": self.Params.model_json_schema()}


ANALYSES: Registry[Analysis] = Registry("analysis")


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Decorator: register the analysis of the declared name ``cls.name``; its version and scope are the
    declaration's (precompute/declarations/analyses.py: what the cache keys and the server read)."""
    if cls.name not in declared.ANALYSES:
        raise ValueError(f"analysis {cls.name!r} has no declaration; add declare({cls.name!r}, version) to "
                         f"precompute/declarations/analyses.py")
    if "version" in vars(cls) or "scope" in vars(cls):
        raise ValueError(f"analysis {cls.name!r} sets its own version or scope; they are declared in "
                         f"precompute/declarations/analyses.py")
    decl = declared.ANALYSES.get(cls.name)
    cls.version, cls.scope = decl.version, decl.scope
    ANALYSES.add(cls.name, cls())
    return cls


def to_list(x: Any, digits: int = 6) -> Any:
    """Tensor/ndarray -> nested lists of floats rounded to ``digits`` significant digits (small JSON)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(x == 0, 0, np.floor(np.log10(np.abs(np.where(x == 0, 1, x)))))
    scale = 10.0 ** (digits - 1 - mag)
    return (np.round(x * scale) / scale).tolist()
