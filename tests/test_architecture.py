"""The package's dependencies point down, never up, and nothing hides a cycle inside a function.

Layers, bottom first (a module may import its own package and any package of a LOWER layer):

0. ``_io``, ``_config``: atomic files, configuration dataclasses
1. ``scheme``, ``data``, ``metrics``: the scheme, the data formats and augmentation, the metrics
2. ``train``, ``modules``, ``challenge``: training on encryptions, the module twins, the challenge
3. ``attacks``, ``federated``, ``distributed``: what builds on training and the challenge
4. ``report``: figures and the audit report
5. ``audit``: challenge -> attacks -> report
6. ``cli``: the command line

The package ``__init__`` (the public API) may import anything. Imports of other ``instahide`` modules
sit at the top of a module; a function may import an optional third-party dependency (``flwr``,
``matplotlib``, ``scipy``, ...) where it is used, never a part of this package, except the modules
in ``LAZY_OK``, which import the optional Flower at their top and are therefore imported where used.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "instahide"
LAYERS = {
    "_io": 0, "_config": 0,
    "scheme": 1, "data": 1, "metrics": 1,
    "train": 2, "modules": 2, "challenge": 2,
    "attacks": 3, "federated": 3, "distributed": 3,
    "report": 4,
    "audit": 5,
    "compare": 5.5,  # between the audit and the command line: uses train, attacks and audit
    "cli": 6, "__main__": 7,
}
# Modules that import an optional dependency (flwr) at their top: imported inside the functions that
# need them, so that the rest of the package works without the extra.
LAZY_OK = {"federated.client", "federated.simulation", "federated.server"}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    """``(line, imported top-level instahide package or None, inside a function, dotted module)``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(SRC)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = list(rel.parts[:-1])
                    up = child.level - 1
                    base = base[:len(base) - up] if up else base
                    parts = base + (child.module.split(".") if child.module else [])
                    if not parts:  # from . import x at the package root
                        parts = [alias.name for alias in child.names]
                        for p in parts:
                            out.append((child.lineno, p, in_function, p))
                        continue
                    out.append((child.lineno, parts[0], in_function, ".".join(parts)))
                elif child.module and child.module.split(".")[0] == "instahide":
                    parts = child.module.split(".")
                    target = parts[1] if len(parts) > 1 else None
                    for alias in child.names if target is None else [None]:
                        out.append((child.lineno, target or alias.name, in_function, ".".join(parts[1:])))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "instahide":
                        out.append((child.lineno, parts[1] if len(parts) > 1 else "", in_function,
                                    ".".join(parts[1:])))
            visit(child, inner)

    visit(tree, False)
    return out


def _modules():
    return [p for p in sorted(SRC.rglob("*.py")) if p != SRC / "__init__.py"]


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _modules()}
    assert packages - set(LAYERS) == set(), "add new packages to LAYERS (and to the docstring)"


def test_imports_point_down():
    bad = []
    for path in _modules():
        here = _package(path)
        for line, target, _, _ in _imports(path):
            if target in ("", None, here) or target == "__version__":
                continue
            if target not in LAYERS:
                continue
            if LAYERS[target] >= LAYERS[here]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({here}, layer {LAYERS[here]}) imports {target} "
                           f"(layer {LAYERS[target]})")
    assert not bad, "imports that climb or cross a layer:\n" + "\n".join(bad)


def test_no_package_import_inside_a_function():
    bad = [f"{p.relative_to(SRC)}:{line} imports {module}" for p in _modules()
           for line, target, inside, module in _imports(p) if inside and module not in LAZY_OK]
    assert not bad, "imports of instahide modules inside functions:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_package():
    bad = []
    for path in _modules():
        here = _package(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("instahide")):
                mod = node.module or ""
                parts = mod.split(".") if not node.level else list(path.relative_to(SRC).parts[:-1])[
                    :len(path.relative_to(SRC).parts) - node.level] + (mod.split(".") if mod else [])
                if parts and parts[0] == "instahide":
                    parts = parts[1:]
                target = parts[0] if parts else None
                if target is None or target == here:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_"):
                        bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports {mod}.{alias.name}")
                if any(p.startswith("_") and p not in ("_io", "_config") for p in parts):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports private module {mod}")
    assert not bad, "private names used across packages:\n" + "\n".join(bad)
