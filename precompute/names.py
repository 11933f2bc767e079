"""Validation of every name that can end up in a file path (models, layers, analyses).

Torch-free. A name is checked against a strict pattern before it is joined to any path, so
``..``, slashes, NUL bytes and absolute paths never reach the file system.
"""

from __future__ import annotations

import re

#: a model name without its anchors (job ids embed it: ``<kind>-<model>-<hex>``)
MODEL_NAME = r"[a-z0-9][a-z0-9._-]{0,79}"
_MODEL = re.compile(f"^{MODEL_NAME}$")
# layer names are module paths such as "features.0" or "layer1.0.conv1"
_LAYER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_ANALYSIS = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


#: the same rules as JSON-schema patterns (ECMA regex), for the API's OpenAPI schema
MODEL_PATTERN = r"^(?!.*\.\.)" + _MODEL.pattern[1:]
LAYER_PATTERN = r"^(?!.*\.\.)" + _LAYER.pattern[1:]
ANALYSIS_PATTERN = _ANALYSIS.pattern


class InvalidName(ValueError):
    pass


def _check(kind: str, value: str, pattern: re.Pattern, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:  # fullmatch: no "x\n"
        raise InvalidName(f"invalid {kind} name {value!r}: {rule}")
    return value


def check_model_name(value: str) -> str:
    return _check("model", value, _MODEL,
                  "use 1-80 characters of lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")


def is_model_name(value: object) -> bool:
    """Would :func:`check_model_name` accept ``value``? (For names read back from files: skip, not fail.)"""
    try:
        check_model_name(value)  # type: ignore[arg-type]
    except InvalidName:
        return False
    return True


def check_layer_name(value: str) -> str:
    return _check("layer", value, _LAYER, "a module path such as 'features.0' (letters, digits, '_', '.', '-')")


def check_analysis_name(value: str) -> str:
    return _check("analysis", value, _ANALYSIS, "lower-case letters, digits and '-'")
