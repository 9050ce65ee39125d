"""What imports what: the core and the producer never import an ML library; the worker's docstring
names exactly the modules that do."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import workers

ROOT = Path(__file__).resolve().parents[2]
ML = ("torch", "diffusers", "transformers")


def _imports_ml(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(name.split(".")[0] in ML for name in names):
            return True
    return False


def test_core_producer_and_storage_import_no_ml_library():
    offenders = [str(p.relative_to(ROOT)) for pkg in ("sdq", "producer", "storage")
                 for p in (ROOT / pkg).rglob("*.py") if _imports_ml(p)]
    assert offenders == []


def test_the_workers_docstring_names_the_modules_that_import_ml_libraries():
    named = set(re.findall(r"`workers\.(\w+)`", workers.__doc__.split("The other modules")[0]))
    actual = {p.stem for p in (ROOT / "workers").glob("*.py") if _imports_ml(p)}
    assert named == actual
