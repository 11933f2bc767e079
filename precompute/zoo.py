"""The model catalogue: every model by name, and loading one. It sits on top of what it gathers:

- the models in code, registered with :func:`register_model` in ``precompute/models.py`` (the default zoo);
- the trained experiment variants on disk (``precompute/experiments/records.py``);
- the user models of ``user-models.json`` (``convscope add``, uploads: ``precompute/usermodels.py``).

:func:`load_model` turns a spec (``precompute/declarations/specs.py``) into an ``nn.Module`` in eval mode
with its weights, strictly checked; a graph file's spec (arch ``onnx``, ``keras``, ``none``:
``precompute/graphs/``) into the weight container read from the file, with its inventory rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .architectures import build
from .declarations.specs import IMAGENET_MEAN, IMAGENET_STD, ModelSpec  # noqa: F401  (their home is the floor)
from .errors import ModelError  # noqa: F401  (its home is the torch-free floor; imported from here too)
from .experiments.records import variant_specs
from .filepages import release
from .graphs import GraphModel, is_graph_spec, load_graph
from .models import DEFAULT_ZOO, MODELS, register_model  # noqa: F401  (the registry and the default zoo)
from .registry import UnknownName, unknown_message
from .settings import Settings, get_settings
from .usermodels import user_specs


@dataclass
class LoadedModel:
    spec: ModelSpec
    module: nn.Module
    weights_sha256: str  # of the state dict actually analysed (see state_dict_sha256)
    file_sha256: Optional[str]  # of the checkpoint file, where there is one
    #: a graph file's (ONNX, Keras, bare weights: precompute/graphs/): its inventory rows, read from the file,
    #: and whether it has a graph at all; None for a module in code (the pipeline takes the rows from a forward pass)
    graph: Optional[GraphModel] = None


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor in the state dict (sorted by name).

    Identifies the weights that are analysed whatever the source: the cache key.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        # the tensor's own bytes through the buffer protocol: no copy of a 400 MB layer (VGG16's fc6)
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
        # the pages the hash read, when they are the file's (memory-mapped weights): given back, else the whole
        # file stays resident from here on (ConvNeXt-XL: 1.4 GB); the analyses read them again layer by layer
        release(t)
    return h.hexdigest()


def _dynamic_specs(settings: Settings) -> list[ModelSpec]:
    """Models that live in files, not in code: trained experiment variants, then user models."""
    return variant_specs(settings) + user_specs(settings)


def get_spec(name: str, settings: Optional[Settings] = None) -> ModelSpec:
    if name in MODELS:
        return MODELS.get(name)
    dynamic = {s.name: s for s in _dynamic_specs(settings or get_settings())}
    if name in dynamic:
        return dynamic[name]
    raise UnknownName(unknown_message("model", name, list(MODELS.names()) + list(dynamic)))


def all_specs(settings: Optional[Settings] = None) -> list[ModelSpec]:
    return [MODELS.get(n) for n in MODELS] + _dynamic_specs(settings or get_settings())


def default_specs(settings: Optional[Settings] = None) -> list[ModelSpec]:
    """The default zoo: real and random models and the committed reference runs of the experiments
    (no URL-only extras, no user models, no locally trained variants)."""
    settings = settings or get_settings()
    return [get_spec(n, settings) for n in DEFAULT_ZOO] + [
        s for s in variant_specs(settings) if s.extra.get("reference") or s.extra.get("replaces_reference")]


def load_model(spec_or_name, settings: Optional[Settings] = None) -> LoadedModel:
    settings = settings or get_settings()
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else get_spec(spec_or_name, settings)
    if is_graph_spec(spec):  # its weights and rows come from the file; nothing is built or run
        graph, file_sha = load_graph(spec, settings)
        return LoadedModel(spec, graph.module, state_dict_sha256(graph.module), file_sha, graph)
    module = build(spec.arch, **spec.arch_kwargs)
    file_sha = spec.source.load_into(module, spec, settings)
    module.eval()
    return LoadedModel(spec=spec, module=module, weights_sha256=state_dict_sha256(module), file_sha256=file_sha)


def spec_json(spec: ModelSpec) -> str:
    return json.dumps(spec.public(), indent=2)
