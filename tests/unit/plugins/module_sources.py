"""The modules of the collection and what their code reaches: for the tests of their docs and of the action group."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODULES_DIR = REPO / "plugins" / "modules"
PKG = "ansible_collections.hvfleet.drain."
MODULES = sorted(p.stem for p in MODULES_DIR.glob("*.py") if p.stem != "__init__")


def imports(path):
    """(dotted module, imported names) of every import in a file, nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def collection_file(dotted):
    rel = Path(*dotted[len(PKG):].split("."))
    for candidate in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reached(module):
    """(collection files the module imports, directly or through module_utils; top-level third-party names)."""
    seen, third_party, todo = set(), set(), [MODULES_DIR / f"{module}.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dotted, names in imports(path):
            if dotted.startswith(PKG):
                # `from ...planning import forecast` imports the module planning/forecast.py
                todo += [f for f in (collection_file(d) for d in [dotted] + [f"{dotted}.{n}" for n in names]) if f]
            else:
                third_party.add(dotted.split(".")[0])
    return seen, third_party


def opens_libvirt_connections(module):
    """The module reaches common/connection.py, the one place libvirt connections are opened."""
    files, _third_party = reached(module)
    return REPO / "plugins" / "module_utils" / "common" / "connection.py" in files
