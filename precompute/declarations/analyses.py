"""The analyses as the cache, the server and the job keys know them: name, version, scope and the scalar
keys their results add to a model's depth profiles (the model record's ``scalars``). The computations
(torch) are ``precompute/analyses/``: each registers under a declared name and takes its version and scope
from here (a class for an undeclared name, or a declared name without a class, fails at import there).

A version is part of every cache key: bump it when an analysis' results change, and the cached ones
are recomputed. Torch-free (the ground floor, see ``precompute/declarations/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry
from .limits import GAMMA_THRESHOLDS


@dataclass(frozen=True)
class AnalysisDeclaration:
    name: str
    version: int
    #: "layer": computed per model by the pipeline; "group": over several models, on request (clusters)
    scope: str = "layer"
    #: the scalar keys its results may add to the model record's ``scalars`` (per layer)
    scalars: tuple[str, ...] = ()


ANALYSES: Registry[AnalysisDeclaration] = Registry("analysis")


def declare(name: str, version: int, scope: str = "layer", scalars: tuple[str, ...] = ()) -> AnalysisDeclaration:
    if scope not in ("layer", "group"):
        raise ValueError(f"analysis {name!r}: scope must be 'layer' or 'group'; got {scope!r}")
    return ANALYSES.add(name, AnalysisDeclaration(name, int(version), scope, tuple(scalars)))


def layer_analyses() -> list[str]:
    """The per-model analyses, in the order the pipeline runs them."""
    return [n for n, a in ANALYSES.items() if a.scope == "layer"]


declare("symmetry", 1, scalars=("symmetry",))
# 2: accelerated HALS, tol 5e-5; 3: banding index over the RGB channels, not their sum
declare("nmf", 3, scalars=("banding_index", "nmf_error"))
declare("kernels", 1)
# 2: feeder_properties (every colouring that applies) beside feeder_property; 3: frequency and orientation of
# image filters, branch_tests (does the branch explain the singular vectors and the colourings?)
declare("svd", 3, scalars=("branch_separation", "branch_separation_p", "branch_frequency", "branch_frequency_p"))
declare("histogram", 1, scalars=("sparsity", "kurtosis"))
declare("batchnorm", 1, scalars=tuple(f"gamma_below_{t}" for t in GAMMA_THRESHOLDS))
declare("fc-spatial", 1)
declare("clusters", 1, scope="group")
