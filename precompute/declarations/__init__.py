"""The ground floor: plain declarations that the web server (torch-free) and the workers (torch) both
import, so that neither side keeps a copy of the other's.

Nothing here imports torch, nor any convscope module above this floor: only the standard library, the
other floor modules (``precompute.errors``, ``names``, ``registry``, ``redact``, ``settings``) and the
modules of this package. ``tests/test_imports.py`` checks both.

- :mod:`.analyses`: the analyses' names, versions (part of every cache key), scopes and scalar keys (their
  computations, with torch, are ``precompute/analyses/``, registered under exactly these names);
- :mod:`.architectures`: the architecture names and their native input sizes (the builders, with torch,
  are in ``precompute/architectures.py`` and must cover exactly these names);
- :mod:`.library`: the torchvision and timm models by name ("timm:resnet50") and their catalogue (input
  size, parameter count, state-dict signature) that the upload form searches (builders:
  ``precompute/librarymodels.py``);
- :mod:`.experiments`: the experiments and their recipes as data (title, description, paper, variants,
  measurements, the training recipe);
- :mod:`.limits`: numbers and lists with one home (clusters' k range and pair count, upload extensions,
  job kinds, BatchNorm gamma thresholds), served to the pages' JavaScript from the server;
- :mod:`.records`: the typed records written and read back (a trained variant's run record, inventory rows,
  the cache's model records, job states), from which the API's schemas and the tests' expected keys come;
- :mod:`.specs`: :class:`ModelSpec`, what a model is (its weight source is an object of the sources).
"""
