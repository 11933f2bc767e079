"""The import structure: no cycle among the project's modules, and no import inside a function except the
few listed below, each for a reason other than a cycle (a lazy import that breaks a cycle hides it from
this test and from the reader; the fix is to move the shared thing down, e.g. onto the ground floor,
``precompute/declarations/``).

Imports are read from the source (ast), not executed: ``if TYPE_CHECKING:`` blocks are left out (they run
only under a type checker). Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so an import
from outside a package counts as an import of the package too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("precompute", "server")

#: (module, imported module) -> why it is imported inside a function. Every entry must still exist.
LAZY = {
    # `convscope serve` must stay torch-free (tests/test_jobs.py reads the process's memory map): the CLI
    # imports the commands that compute only when they run
    **{("precompute.cli", m): "torch side of a computing command" for m in (
        "precompute.cache", "precompute.zoo", "precompute.architectures", "precompute.pipeline",
        "precompute.analyses", "precompute.devices", "precompute.usermodels", "precompute.experiments.datasets",
        "precompute.experiments.records", "precompute.experiments.resume", "precompute.experiments.training",
        "precompute.experiments.estimate", "torch")},
    # the job queue is imported by the torch-free web server; the job bodies run the torch side in workers
    ("precompute.jobs", "precompute.pipeline"): "torch side, run by workers only",
    ("precompute.jobs", "precompute.experiments.training"): "torch side, run by workers only",
    ("precompute.jobs", "precompute.usermodels"): "torch side, run by workers only",
    ("precompute.jobs", "huey"): "the queue backend is chosen by the settings (SQLite or Redis)",
    # a terminal progress bar, only when the output is a terminal
    ("precompute.pipeline", "tqdm"): "a progress bar only on a terminal",
    ("precompute.experiments.training", "tqdm"): "a progress bar only on a terminal",
    # heavy libraries that only some architectures, formats or analyses need (seconds of import time for
    # every worker and CLI command otherwise)
    ("precompute.architectures", "torchvision"): "only the torchvision architectures need it",
    ("precompute.architectures", "torchvision.models.vgg"): "only the VGG architectures need it",
    ("precompute.architectures", "timm"): "only the EfficientNet-Lite architectures need it (slow import)",
    # a library's module registers it when imported (precompute/libraries/): only for a name of that library
    ("precompute.librarymodels", "precompute.libraries.torchvision_models"):
        "torchvision and the torch._dynamo it imports: 170 MB of memory, only for torchvision:NAME",
    ("precompute.librarymodels", "precompute.libraries.timm_models"): "timm: 32 MB of memory, only for timm:NAME",
    ("precompute.experiments.datasets", "torchvision.datasets"): "only CIFAR-10 needs it",
    ("precompute.sources", "h5py"): "only Keras .h5 checkpoints need it",
    ("precompute.sources", "safetensors"): "only safetensors checkpoints need it",
    ("precompute.sources", "safetensors.torch"): "only safetensors checkpoints need it",
    ("precompute.clustering", "sklearn.cluster"): "k-means only when a clusters request is computed (server)",
    ("precompute.colours", "scipy.optimize"): "only when factors of rank > 5 are aligned (never at rank 3)",
    ("precompute.analyses.nmf_core", "scipy.cluster.hierarchy"): "only for the leaf order of a grid",
    ("precompute.analyses.nmf_core", "scipy.spatial.distance"): "only for the leaf order of a grid",
    ("precompute.analyses.svd", "scipy.linalg"): "only the CPU backend of the SVD",
    ("precompute.analyses.svd", "threadpoolctl"): "only the CPU backend of the SVD",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _package(module: str) -> list[str]:
    parts = module.split(".")
    return parts if MODULES[module].name == "__init__.py" else parts[:-1]


def _targets(node, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = _package(module)
        base = ".".join(pkg[:len(pkg) - (node.level - 1)] + ([node.module] if node.module else []))
    full = [f"{base}.{a.name}" for a in node.names]
    return [f if f in MODULES else base for f in full]


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str):
    """(imported module, line, function or None) for every import of ``module``."""
    found = []

    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((t, child.lineno, function) for t in _targets(child, module))
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            walk(child, inner)

    walk(ast.parse(MODULES[module].read_text()), None)
    return found


def _edges(module: str) -> set[str]:
    """The project modules that importing ``module`` runs at once (module level), with their packages."""
    out = set()
    own = set(".".join(module.split(".")[:i]) for i in range(1, len(module.split(".")) + 1))
    for target, _, function in _imports(module):
        if function is not None:
            continue
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in MODULES and name not in own:
                out.add(name)
    return out


def test_no_import_cycle():
    graph = {m: _edges(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles (move what both need down a floor):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_no_import_inside_a_function_but_the_listed_ones():
    found = {}
    for m in MODULES:
        for target, line, function in _imports(m):
            if function is not None:
                found.setdefault((m, target), f"{MODULES[m].relative_to(REPO)}:{line} in {function}()")
    unlisted = {k: v for k, v in found.items() if k not in LAZY}
    assert not unlisted, ("imports inside functions (import at module level; if that makes a cycle, move the "
                          "shared thing down; if it must stay lazy, list it in LAZY with the reason):\n"
                          + "\n".join(f"{v}: {k[1]}" for k, v in sorted(unlisted.items())))
    stale = sorted(k for k in LAZY if k not in found)
    assert not stale, f"LAZY lists imports that no longer exist; remove them: {stale}"


def test_the_walker_sees_a_cycle_and_a_lazy_import(tmp_path, monkeypatch):
    """The two tests above would pass on a walker that finds nothing: plant both and look."""
    pkg = tmp_path / "precompute"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from . import a\nx = 1\ndef f():\n    from .c import y\n")
    (pkg / "c.py").write_text("y = 2\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    monkeypatch.setattr(__import__(__name__), "MODULES", {m: p for m, p in _planted(tmp_path).items()})
    assert _edges("precompute.a") == {"precompute.b"} and _edges("precompute.b") == {"precompute.a"}
    assert ("precompute.c", 4, "f") in _imports("precompute.b")
    with pytest.raises(AssertionError, match="precompute.a -> precompute.b -> precompute.a"):
        test_no_import_cycle()


def _planted(root: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((root / "precompute").rglob("*.py"))}


FLOOR = ("precompute.errors", "precompute.names", "precompute.registry", "precompute.redact", "precompute.settings",
         "precompute.locks")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("precompute.declarations")) + list(FLOOR))
def test_the_ground_floor_imports_nothing_above_it(module):
    """The declarations and the floor modules import only the standard library, pydantic and each other."""
    allowed_outside = {"pydantic_settings", "pydantic"}
    for target, line, _ in _imports(module):
        top = target.split(".")[0]
        if top in PACKAGES:
            assert target in FLOOR or target.startswith("precompute.declarations") or target == "precompute", \
                f"{module}:{line} imports {target}, above the ground floor"
        else:
            assert top in allowed_outside or top in __import__("sys").stdlib_module_names or top == "__future__", \
                f"{module}:{line} imports {target}: the ground floor takes only the standard library and pydantic"
