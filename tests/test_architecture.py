"""The import rules of docs/design.md, checked on the source with ``ast`` (no exceptions list), and a scan
of ``src/`` for the calls peftkit never makes (a shell, pickle, eval/exec, unsafe YAML or torch loading).

Layers (a module may import its own layer and the ones below, never one above):
    0 core   1 ops, layers, metrics   2 backbones, methods, data   3 measure   4 train   5 recipes
    6 bench   7 cli;   ``peftkit/__init__.py`` and ``__main__.py`` are the package top: they import anything.
The package top is also the public API (``import peftkit as pk``): the applications of the library (layers 4
and up: train, recipes, bench, cli) may use it; layers 0-3 import the module that defines a name.
Besides: backbones, methods and data never import each other, and one method folder never imports another
(``methods/__init__.py`` and ``methods/_lazy.py`` are the registry side of the methods package, not a method).

An import is any ``import`` / ``from ... import`` (module level or inside a function, relative ones
resolved), the module named by a string literal in ``importlib.import_module("...")`` or ``lazy("...", ...)``,
and any other string literal that is exactly the dotted name of a peftkit submodule (an import by name).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "peftkit"

LAYERS: dict[str, int] = {
    "core": 0,
    "ops": 1, "layers": 1, "metrics": 1,
    "backbones": 2, "methods": 2, "data": 2,
    "measure": 3,
    "train": 4,
    "recipes": 5,
    "bench": 6,
    "cli": 7,
}
API_USERS_FROM = 4  # layers from this one up may ``import peftkit`` (the public API)
SIBLINGS_APART = ("backbones", "methods", "data")  # layer 2: these three never import each other
METHODS_PACKAGE_LEVEL = ("peftkit.methods", "peftkit.methods._lazy")  # the registry side, not a method


def module_name(path: Path) -> str:
    """``src/peftkit/core/spec.py`` -> ``peftkit.core.spec``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve_relative(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def imports_of(source: str, current: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported peftkit module) for every import of ``source``, as described in the module docstring.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    """
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    found: list[tuple[int, str]] = []
    string_imports: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_relative(node, current, is_package) if node.level else (node.module or "")
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((node.lineno, sub if sub in known else mod))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "lazy") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
                string_imports.add(id(node.args[0]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in string_imports and node.value in known and "." in node.value:
            found.append((node.lineno, node.value))
    return [(line, m) for line, m in found if m == "peftkit" or m.startswith("peftkit.")]


TOP = ("peftkit", "peftkit.__main__")  # the package top: the public API and the ``python -m peftkit`` command


def area(module: str) -> str | None:
    """The second component (``core``, ``methods`` ...) of a peftkit module; None for the package top."""
    if module in TOP:
        return None
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def method_folder(module: str) -> str | None:
    """``peftkit.methods.deft.probe`` -> ``deft``; None outside a method folder."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "methods" and module not in METHODS_PACKAGE_LEVEL:
        return parts[2]
    return None


@dataclass(frozen=True)
class Violation:
    where: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line} imports {self.imported}: {self.rule}"


def check_import(importer: str, imported: str) -> str | None:
    """The rule ``importer -> imported`` breaks, or None."""
    src_area, dst_area = area(importer), area(imported)
    if src_area is None:
        return None  # the package top may import anything
    if src_area not in LAYERS:
        return f"'{src_area}' is in no layer; add it to the layer list in docs/design.md"
    if dst_area is None:
        if LAYERS[src_area] >= API_USERS_FROM:
            return None
        return (f"layer {LAYERS[src_area]} ({src_area}) imports the package top; "
                "import the module that defines the name")
    if dst_area not in LAYERS:
        return f"'{dst_area}' is in no layer; add it to the layer list in docs/design.md"
    if LAYERS[dst_area] > LAYERS[src_area]:
        return f"layer {LAYERS[src_area]} ({src_area}) imports layer {LAYERS[dst_area]} ({dst_area})"
    if src_area != dst_area and src_area in SIBLINGS_APART and dst_area in SIBLINGS_APART:
        return f"{src_area} and {dst_area} never import each other (compose through core)"
    src_method = method_folder(importer)
    if src_method is not None and dst_area == "methods":
        dst_method = method_folder(imported)
        if dst_method is None and imported not in ("peftkit.methods._lazy",):
            return "a method imports the whole methods package (that is every method)"
        if dst_method is not None and dst_method != src_method:
            return f"method '{src_method}' imports method '{dst_method}' (compose through core protocols)"
    return None


def violations() -> list[Violation]:
    modules = all_modules()
    known = set(modules)
    out: list[Violation] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for line, imported in imports_of(path.read_text(encoding="utf-8"), name, is_package, known):
            rule = check_import(name, imported)
            if rule is not None:
                out.append(Violation(str(path.relative_to(SRC.parent)), line, imported, rule))
    return out


def test_every_area_is_in_a_layer() -> None:
    areas = {p.name if p.is_dir() else p.stem for p in PKG.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists())
             or (p.suffix == ".py" and f"peftkit.{p.stem}" not in TOP and p.stem != "__init__")}
    assert areas - set(LAYERS) == set(), "place every subpackage of peftkit in a layer (docs/design.md)"


def test_imports_follow_the_layers() -> None:
    found = violations()
    assert not found, "import rule violations:\n" + "\n".join(map(str, found))


def private_uses(source: str, current: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, ``module._name``) for each private name taken from a peftkit module of another area.

    Counts ``from peftkit.x.y import _name`` and ``y._name`` where ``y`` was imported as a peftkit module.
    """
    tree = ast.parse(source)
    aliases: dict[str, str] = {}   # local name -> peftkit module
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_relative(node, current, is_package) if node.level else (node.module or "")
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known:
                    aliases[a.asname or a.name] = sub
                elif a.name.startswith("_") and not a.name.startswith("__") and mod in known:
                    out.append((node.lineno, f"{mod}.{a.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            out.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return [(line, name) for line, name in out if area(name) != area(current)]


def test_no_private_name_crosses_an_area() -> None:
    """What another area needs is made public (as ``train.config._coerce`` became ``coerce_scalar``)."""
    modules = all_modules()
    found: list[str] = []
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        for line, private in private_uses(source, module, path.name == "__init__.py", set(modules)):
            found.append(f"{path.relative_to(SRC.parent)}:{line} uses {private}")
    assert not found, "private names used from another area (make them public):\n" + "\n".join(found)


# ---- the checker itself can fail ---------------------------------------------------------------------------

KNOWN = {"peftkit.core.spec", "peftkit.methods.deft", "peftkit.methods.deft.probe", "peftkit.bench.memory",
         "peftkit.train.config", "peftkit.methods.meft.blocks", "peftkit.layers.bottleneck"}


@pytest.mark.parametrize("importer,source,rule", [
    ("peftkit.core.registry", "def f():\n    import peftkit.methods.deft\n", "layer 0 (core) imports"),
    ("peftkit.train.measure", "import importlib\nm = importlib.import_module('peftkit.bench.memory')\n",
     "layer 4 (train) imports layer 6"),
    ("peftkit.train.measure", "NAME = 'peftkit.bench.memory'\n", "layer 4 (train) imports layer 6"),
    ("peftkit.methods.meft.autograd", "from peftkit.methods.deft.probe import x\n",
     "method 'meft' imports method 'deft'"),
    ("peftkit.methods.meft.autograd", "from ..deft import probe\n", "method 'meft' imports method 'deft'"),
    ("peftkit.data.points.dataset", "from peftkit.backbones.point import zoo\n",
     "data and backbones never import each other"),
    ("peftkit.methods.point_peft.bank", "x = lazy('peftkit.train.config', 'load_config')\n",
     "layer 2 (methods) imports layer 4"),
    ("peftkit.core.checkpoint", "from peftkit import __version__\n", "layer 0 (core) imports the package"),
    ("peftkit.measure.step", "import peftkit as pk\n", "layer 3 (measure) imports the package top"),
])
def test_checker_finds(importer: str, source: str, rule: str) -> None:
    is_package = False
    rules = [check_import(importer, m) for _, m in imports_of(source, importer, is_package, KNOWN)]
    assert any(r is not None and rule in r for r in rules), rules


@pytest.mark.parametrize("importer,source", [
    ("peftkit.methods.meft.blocks", "from peftkit.layers.bottleneck import Bottleneck\n"),
    ("peftkit.methods.meft.blocks", "from .stack import x\nfrom peftkit.core.spec import BackboneSpec\n"),
    ("peftkit.bench.memory", "'''peftkit.train.config is documented here.'''\nimport peftkit.core.spec\n"),
    ("peftkit", "import peftkit.methods.deft\n"),
    ("peftkit.methods", "x = lazy('peftkit.methods.deft.probe', 'f')\n"),
    ("peftkit.train.loop", "import peftkit as pk\nv = version('peftkit')\n"),
])
def test_checker_allows(importer: str, source: str) -> None:
    is_package = importer == "peftkit.methods"
    rules = [check_import(importer, m) for _, m in imports_of(source, importer, is_package, KNOWN)]
    assert rules and all(r is None for r in rules), rules


def test_private_use_checker() -> None:
    known = {"peftkit.core.registry", "peftkit.train.config", "peftkit.bench.memory", "peftkit.core"}
    src = ("from peftkit.train.config import _coerce\nfrom peftkit.core import registry\n"
           "x = registry._BACKBONES\nfrom peftkit.bench.memory import _read_kib\n")
    assert private_uses(src, "peftkit.bench.demo", False, known) == [
        (1, "peftkit.train.config._coerce"), (3, "peftkit.core.registry._BACKBONES")]


# ---- calls peftkit never makes -------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve"}
YAML_UNSAFE = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for shell=True, weights_only=False, pickle, builtin eval/exec and yaml.load."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, f"import {a.name}") for a in node.names if a.name in UNSAFE_MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.module in UNSAFE_MODULES:
                out.append((node.lineno, f"from {node.module} import"))
            if node.module == "yaml" and any(a.name in YAML_UNSAFE for a in node.names):
                out.append((node.lineno, "from yaml import load"))
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in ("eval", "exec"):
                out.append((node.lineno, f"{fn.id}()"))
            if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                if fn.value.id == "yaml" and fn.attr in YAML_UNSAFE:
                    out.append((node.lineno, f"yaml.{fn.attr}()"))
                if fn.value.id in UNSAFE_MODULES and fn.attr in ("load", "loads"):
                    out.append((node.lineno, f"{fn.value.id}.{fn.attr}()"))
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant):
                    if kw.arg == "shell" and kw.value.value is True:
                        out.append((node.lineno, "shell=True"))
                    if kw.arg == "weights_only" and kw.value.value is False:
                        out.append((node.lineno, "weights_only=False"))
    return out


def test_src_makes_no_unsafe_call() -> None:
    found = [f"{p.relative_to(SRC.parent)}:{line}: {what}"
             for p in sorted(PKG.rglob("*.py")) for line, what in unsafe_calls(p.read_text(encoding="utf-8"))]
    assert not found, "unsafe calls in src/:\n" + "\n".join(found)


@pytest.mark.parametrize("source,what", [
    ("import subprocess\nsubprocess.run('ls', shell=True)\n", "shell=True"),
    ("import torch\ntorch.load('x.pt', weights_only=False)\n", "weights_only=False"),
    ("import pickle\n", "import pickle"),
    ("from pickle import loads\n", "from pickle import"),
    ("x = eval('1 + 1')\n", "eval()"),
    ("exec('y = 2')\n", "exec()"),
    ("import yaml\nyaml.load(open('c.yaml'))\n", "yaml.load()"),
])
def test_unsafe_scan_finds(source: str, what: str) -> None:
    assert what in [w for _, w in unsafe_calls(source)]


def test_unsafe_scan_allows_the_safe_forms() -> None:
    source = ("import yaml\nimport torch\nyaml.safe_load('a: 1')\nmodel.eval()\n"
              "torch.load('x', weights_only=True)\nimport subprocess\nsubprocess.run(['ls'], shell=False)\n")
    assert unsafe_calls(source) == []
