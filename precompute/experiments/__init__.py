"""Experiment variants: models trained by the project with one architectural change each.

The package imports nothing on its own (the zoo imports ``records`` beneath the trainer, which imports
the zoo: an ``__init__`` that gathered them would close that loop). Import the module that holds what
you need:

- the experiments and their recipes, as data: ``precompute.declarations.experiments`` (``EXPERIMENTS``:
  ``banding``, ``bnonly``, ``symmetry``, ``branches``; every experiment also has the implicit variant
  ``random``, the untrained initialisation); their input transforms as torch functions: ``recipes``;
- ``datasets``: ``fashion-mnist``, ``mnist``, ``cifar10``;
- ``nets``: the networks ``banding-net`` and ``cifar-resnet`` (registered in ``precompute.architectures``);
- ``records``: the trained variants on disk as zoo ModelSpecs (family "variant");
- ``training``: ``convscope train`` (fp16 safetensors + a JSON record), and precomputing what it trained.
"""
