"""The analyses registry. Importing this package registers every analysis module listed here."""

from ..declarations import analyses as _declared
from .base import ANALYSES, Analysis, ModelContext, register_analysis  # noqa: F401
from . import symmetry, nmf, kernels, svd, histogram, batchnorm, fc_spatial, clusters  # noqa: F401,E402

# a declared analysis without its computation would be keyed, listed and queued, and fail only in a worker
_missing = [n for n in _declared.ANALYSES if n not in ANALYSES]
if _missing:
    raise ImportError(f"analyses declared without a class: {', '.join(_missing)}; register one with "
                      f"@register_analysis or remove the declaration from precompute/declarations/analyses.py")
