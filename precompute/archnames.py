"""The architectures a user checkpoint can be uploaded for, as a static torch-free list.

The web server shows this list on the upload form and checks the ``arch`` field against it without
importing torch; the worker that runs the ``upload`` job validates the name again against the real
registry (:data:`precompute.architectures.ARCHITECTURES`) and loads the checkpoint strictly.
``tests/test_security.py::test_static_architecture_list_matches_the_registry`` keeps the two equal.
"""

from __future__ import annotations

#: name -> native input size (C, H, W): the builders of ``precompute/architectures.py``
UPLOAD_ARCHITECTURES: dict[str, tuple[int, int, int]] = {
    "alexnet": (3, 224, 224),
    "cifar10-cnn": (3, 32, 32),
    "efficientnet-lite0": (3, 224, 224),
    "efficientnet-lite1": (3, 240, 240),
    "efficientnet-lite2": (3, 260, 260),
    "googlenet": (3, 224, 224),
    "inception-v3": (3, 299, 299),
    "mobilenet-v2": (3, 224, 224),
    "mobilenet-v2-features": (3, 224, 224),
    "resnet18": (3, 224, 224),
    "resnet20": (3, 32, 32),
    "resnet32": (3, 32, 32),
    "resnet44": (3, 32, 32),
    "resnet50": (3, 224, 224),
    "resnet56": (3, 32, 32),
    "vgg16": (3, 224, 224),
    "vgg16-bn": (3, 224, 224),
    "vgg16-full": (3, 224, 224),
}
