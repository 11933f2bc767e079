"""Experiment variants: models trained by the project with one architectural change each.

- :data:`EXPERIMENTS` (recipes.py): ``banding``, ``bnonly``, ``symmetry``, ``branches``, each with its
  variants and one shared recipe; every experiment also has the implicit variant ``random`` (the
  untrained initialisation).
- :data:`DATASETS` (datasets.py): ``fashion-mnist``, ``mnist``, ``cifar10``.
- architectures (nets.py): ``banding-net`` and ``cifar-resnet``, also registered in
  ``precompute.architectures``.
- :func:`train` (training.py): ``convscope train``; writes fp16 safetensors + a JSON record.
- :func:`variant_specs` (records.py): the trained variants as zoo ModelSpecs (family "variant").
"""

from .datasets import DATASETS, DatasetError, load_dataset, load_raw
from .nets import EXPERIMENT_ARCHS, build_net
from .recipes import EXPERIMENTS, RANDOM, Experiment, Recipe, Variant, experiment
from .records import MAX_CHECKPOINT_BYTES, RECORD_KEYS, RecordError, VariantSource, variant_specs
from .training import TrainingError, precompute_runs, train

__all__ = [
    "DATASETS", "DatasetError", "load_dataset", "load_raw", "EXPERIMENT_ARCHS", "build_net", "EXPERIMENTS",
    "RANDOM", "Experiment", "Recipe", "Variant", "experiment", "MAX_CHECKPOINT_BYTES", "RECORD_KEYS",
    "RecordError", "VariantSource", "variant_specs", "TrainingError", "precompute_runs", "train",
]
