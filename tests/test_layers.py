"""Imports go one way: io -> data -> represent -> models -> tasks -> cli (DESIGN.md, README's code map).

Every ``import partita...`` in the package, at module top or inside a function, is checked: a
module imports only its own layer or a lower one; training sits above the other tasks, so
evaluation, search, generation and plots never import it (they work without Lightning). And a
part of the package uses only the public names of another part: no ``from partita.x import _y``
and no ``x._y`` across parts (a name another part needs is public, documented and kept).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "partita"

#: top-level part of partita -> layer (a module may import its own layer and lower ones)
LAYERS = {
    "errors": 0, "io": 0,
    "data": 1,
    "represent": 2,
    "nn": 3, "models": 3, "bundle": 3, "pretrained": 3,
    "search": 4, "generation": 4, "edit": 4, "evaluate": 4, "viz": 4,
    "train": 5,
    "demo": 6, "serve": 6,
    "": 6,  # partita/__init__.py: the Python API's front door (partita.load, partita.generate)
    "cli": 7, "__main__": 7,
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str):
    """``(line, imported module)`` for every partita import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "partita":
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "partita":
                continue
            if base == "partita" or not node.module:  # from partita import io / from . import corpus: modules
                for a in node.names:
                    yield node.lineno, f"{base}.{a.name}"
            else:
                yield node.lineno, base


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(m) for _, m in _modules()}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


def test_imports_go_one_way():
    wrong = []
    for path, module in _modules():
        mine = _part(module)
        for line, target in _imports(path, module):
            theirs = _part(target)
            if theirs not in LAYERS:  # partita.<name> where name is not a part (e.g. __version__)
                continue
            if LAYERS[theirs] > LAYERS[mine]:
                where = path.relative_to(PACKAGE.parent)
                wrong.append(f"{where}:{line}: {mine or 'partita'} (layer {LAYERS[mine]}) imports {target} (layer {LAYERS[theirs]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    code = "import numpy\n\ndef f():\n    from partita.train.gpt import train_gpt\n    from . import corpus\n"
    path = tmp_path / "partita" / "data" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(code)
    assert list(_imports(path, "partita.data.x")) == [(4, "partita.train.gpt"), (5, "partita.data.corpus")]


def _private_uses(path: Path, module: str):
    """``(line, "partita.x._y")`` for every private name ``path`` takes from a module: imported
    (``from partita.x import _y``) or read as an attribute of an imported module (``x._y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    modules: dict[str, str] = {}  # local name -> the partita module (or name) it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "partita":
                    modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else "partita"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "partita":
                continue
            for a in node.names:
                if _private(a.name):
                    yield node.lineno, f"{base}.{a.name}"
                else:
                    modules[a.asname or a.name] = f"{base}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            if node.value.id in modules:
                yield node.lineno, f"{modules[node.value.id]}.{node.attr}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_part_takes_another_parts_private_names():
    wrong = []
    for path, module in _modules():
        for line, name in _private_uses(path, module):
            if _part(name.rpartition(".")[0]) != _part(module):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert not wrong, "private names used across parts of the package (make them public):\n" + "\n".join(wrong)


def test_the_checker_sees_private_names_taken_across_parts(tmp_path):
    code = ("import partita.search.embed as e\nfrom partita.represent import features\n\ndef f():\n"
            "    from partita.search.embed import _run, embed_notes\n    from ._x import _y\n"
            "    return e._run, features._onset_groups, features.onset_groups, e.__name__\n")
    path = tmp_path / "partita" / "train" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(code)
    assert sorted(_private_uses(path, "partita.train.x")) == [
        (5, "partita.search.embed._run"), (6, "partita.train._x._y"),
        (7, "partita.represent.features._onset_groups"), (7, "partita.search.embed._run")]
