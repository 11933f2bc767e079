"""The model zoo: a registry of ModelSpec (name -> architecture + weight source + metadata).

Entries are registered with :func:`register_model` in ``precompute/models.py`` (the default zoo) and
from ``user-models.json`` (``convscope add``, uploads). :func:`load_model` turns a spec into an
``nn.Module`` in eval mode with its weights, strictly checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

from .errors import ModelError  # noqa: F401  (its home is the torch-free floor; imported from here too)
from .redact import redact_all
from .registry import Registry, UnknownName, unknown_message
from .settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover
    from .sources import WeightSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    name: str
    arch: str  # key in architectures.ARCHITECTURES
    source: "WeightSource"
    dataset: str  # e.g. "imagenet", "cifar10"
    input_size: tuple[int, int, int]  # native (C, H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    license: str = ""
    origin: str = ""  # where the weights came from, in words
    description: str = ""
    accuracy: Optional[float] = None  # top-1 on `dataset` where known, in %
    family: str = "real"  # real | random | user | variant
    #: raw checkpoint object -> state dict for the architecture (default: unwrap + strip "module.")
    convert: Optional[Callable[[Any, nn.Module], dict]] = None
    arch_kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free metadata (experiment records, ...)

    def public(self) -> dict:
        """JSON-able metadata (what the cache record and the API show): no server paths (a checkpoint's
        path shows as its file name; the full path stays in the spec and ``user-models.json``)."""
        return redact_all({
            "name": self.name, "arch": self.arch, "dataset": self.dataset,
            "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
            "license": self.license, "origin": self.origin, "description": self.description,
            "accuracy": self.accuracy, "family": self.family, "source": self.source.describe(),
            "extra": self.extra,
        })


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


@dataclass
class LoadedModel:
    spec: ModelSpec
    module: nn.Module
    weights_sha256: str  # of the state dict actually analysed (see state_dict_sha256)
    file_sha256: Optional[str]  # of the checkpoint file, where there is one


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor in the state dict (sorted by name).

    Identifies the weights that are analysed whatever the source: the cache key.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _ensure_registered() -> None:
    from . import models  # noqa: F401  (fills MODELS with the default zoo)
    from . import experiments  # noqa: F401  (registers the experiment architectures)


def _dynamic_specs(settings: Settings) -> list[ModelSpec]:
    """Models that live in files, not in code: trained experiment variants, then user models."""
    from .experiments import variant_specs
    from .sources import user_specs

    return variant_specs(settings) + user_specs(settings)


def get_spec(name: str, settings: Optional[Settings] = None) -> ModelSpec:
    _ensure_registered()
    if name in MODELS:
        return MODELS.get(name)
    dynamic = {s.name: s for s in _dynamic_specs(settings or get_settings())}
    if name in dynamic:
        return dynamic[name]
    raise UnknownName(unknown_message("model", name, list(MODELS.names()) + list(dynamic)))


def all_specs(settings: Optional[Settings] = None) -> list[ModelSpec]:
    _ensure_registered()
    return [MODELS.get(n) for n in MODELS] + _dynamic_specs(settings or get_settings())


def default_specs(settings: Optional[Settings] = None) -> list[ModelSpec]:
    """The default zoo: real and random models and the committed reference runs of the experiments
    (no URL-only extras, no user models, no locally trained variants)."""
    from .experiments import variant_specs
    from .models import DEFAULT_ZOO

    settings = settings or get_settings()
    return [get_spec(n, settings) for n in DEFAULT_ZOO] + [
        s for s in variant_specs(settings) if s.extra.get("reference") or s.extra.get("replaces_reference")]


def load_model(spec_or_name, settings: Optional[Settings] = None) -> LoadedModel:
    settings = settings or get_settings()
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else get_spec(spec_or_name, settings)
    from .architectures import build

    module = build(spec.arch, **spec.arch_kwargs)
    file_sha = spec.source.load_into(module, spec, settings)
    module.eval()
    return LoadedModel(spec=spec, module=module, weights_sha256=state_dict_sha256(module), file_sha256=file_sha)


def spec_json(spec: ModelSpec) -> str:
    return json.dumps(spec.public(), indent=2)
