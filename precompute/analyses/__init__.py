"""The analyses registry. Importing this package registers every analysis module listed here."""

from .base import ANALYSES, Analysis, ModelContext, register_analysis  # noqa: F401
from . import symmetry, nmf, kernels, svd, histogram, batchnorm, fc_spatial, clusters  # noqa: F401,E402
