"""Imports go one way: io -> data -> represent -> models -> tasks -> cli (DESIGN.md, README's code map).

Every ``import partita...`` in the package, at module top or inside a function, is checked: a
module imports only its own layer or a lower one; training sits above the other tasks, so
evaluation, search, generation and plots never import it (they work without Lightning).
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
    "search": 4, "generation": 4, "evaluate": 4, "viz": 4,
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
