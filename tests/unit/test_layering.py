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
    doc = workers.__doc__.split("torch, diffusers and transformers are imported only by")[1].split("The other")[0]
    named = set(re.findall(r"`(workers\.[\w.]+)`", doc))
    actual = {_module_name(p) for p in (ROOT / "workers").rglob("*.py")
              if _imports_ml(p) and (ROOT / "workers" / "options") not in p.parents}
    assert actual  # the device and pipeline code does import them
    assert named == actual


UPWARD = ("cli", "producer", "workers", "storage")
"""What the core (`sdq/`, all of it) must not import: the CLI, the composition root of the local stack, is the
top-level `cli` package, which may use the producer, workers and storage."""

FINALISATION = ("PIL", "boto3", "botocore")
"""Image composition and S3: finalisation lives under `workers/` (the producer never needs it)."""


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (``from a import b`` gives a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _core_modules() -> list[Path]:
    return list((ROOT / "sdq").rglob("*.py"))


def test_nothing_in_the_core_imports_the_cli_producer_workers_or_storage():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p)
                                                  if any(n == u or n.startswith(u + ".") for u in UPWARD))
                 for p in _core_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_finalisation_is_the_workers_not_the_cores_nor_the_producers():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p) if n.split(".")[0] in FINALISATION)
                 for p in _core_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}
    producer = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p) if n.split(".")[0] == "workers")
                for p in (ROOT / "producer").rglob("*.py")}
    assert {k: v for k, v in producer.items() if v} == {}


def _spelled_keys(path: Path, names: set[str]) -> list[str]:
    """String literals in `path` (docstrings aside) that spell a Redis key: an ``sdq:`` prefix or a
    key name `sdq.state.keys` defines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
            and (re.match(r"sdq:[\w-]", n.value) or n.value in names)]


def test_redis_keys_are_spelled_only_in_the_state_package():
    keys_py = ROOT / "sdq" / "state" / "keys.py"
    assert keys_py.exists()
    tree = ast.parse(keys_py.read_text(encoding="utf-8"))
    names = {n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
             and isinstance(n.value.value, str)}
    assert {"sdq:active", "unacked_index"} <= names
    state = ROOT / "sdq" / "state"
    paths = [p for pkg in ("sdq", "producer", "workers", "storage", "bench") for p in (ROOT / pkg).rglob("*.py")
             if state not in p.parents]
    offenders = {str(p.relative_to(ROOT)): _spelled_keys(p, names) for p in paths}
    assert {k: v for k, v in offenders.items() if v} == {}
    lua = [p.name for p in (state / "lua").glob("*.lua") if re.search(r"['\"]sdq:", p.read_text(encoding="utf-8"))]
    assert lua == []  # the scripts get every key in KEYS


def test_every_store_script_is_a_lua_file_saying_its_keys_and_args():
    from sdq.state import scripts

    files = {p.stem for p in (ROOT / "sdq" / "state" / "lua").glob("*.lua")}
    assert files == {*scripts.NAMES, "common"}
    for name in scripts.NAMES:
        head = (ROOT / "sdq" / "state" / "lua" / f"{name}.lua").read_text(encoding="utf-8").split("\n")[:4]
        assert any(line.startswith("-- KEYS:") for line in head), name
        assert any("ARGV" in line for line in head), name


MAX_MODULE_LINES = 400
"""Longest module outside the tests: past it, a module holds more than one concept (split it)."""


def test_no_module_outside_the_tests_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in ("sdq", "producer", "workers", "storage", "cli", "bench")
            for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


S3_LIBRARIES = ("boto3", "botocore")
"""Only `storage/` talks to S3: everything above it sees the store's own types and errors."""


def test_nothing_outside_storage_imports_an_s3_library():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p) if n.split(".")[0] in S3_LIBRARIES)
                 for pkg in ("sdq", "producer", "workers") for p in (ROOT / pkg).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


PACKAGES = ("sdq", "producer", "workers", "storage", "cli")
"""The product's packages (the tests, bench and deploy stand outside the house)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, at the top or inside a function (`from a import b` is a.b when
    a.b is a module, else a)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {n for n in _imported(path) if n in modules}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own __init__
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
OPTION_WORDS = re.compile(r"lora|controlnet|hires", re.IGNORECASE)
"""How the request options of today are spelled in names and strings (`params.loras`, `params.controlnet`,
`params.hires`, and their labels: LoRA, ControlNet, Hires ...)."""

OPTION_HOMES = ("sdq/options/", "workers/options/", "sdq/loras.py", "workers/builtin", "producer/doors/")
"""Where an option may be named: its row in the option table (`sdq/options/`), its worker hook
(`workers/options/`), the LoRA file format shared with model push and the built-ins (`sdq/loras.py`), and
the generators of the built-in weights (`workers/builtin*.py`: a tiny ControlNet or LoRA file is a model
source, not the option), and the doors for other clients (`producer/doors/`: they translate another API's words
for an option, such as A1111's `<lora:...>` tags and `enable_hr`, into the option's value)."""


def _option_names(path: Path) -> list[str]:
    """Identifiers (names, attributes, definitions, arguments, keywords, imports) and string literals
    (docstrings aside) in `path` that spell a request option."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found: list[str] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            found.append(n.value)
        elif isinstance(n, ast.Name):
            found.append(n.id)
        elif isinstance(n, ast.Attribute):
            found.append(n.attr)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append(n.name)
        elif isinstance(n, ast.arg):
            found.append(n.arg)
        elif isinstance(n, ast.keyword) and n.arg:
            found.append(n.arg)
        elif isinstance(n, ast.alias):
            found += [n.name, n.asname or ""]
        elif isinstance(n, ast.ImportFrom) and n.module:
            found.append(n.module)
    return sorted({text for text in found if OPTION_WORDS.search(text)})


def test_no_module_outside_the_option_table_names_a_request_option():
    """Options are rows (`sdq.options`) and hooks (`workers.options`): the schema, plan, cache, infotext,
    router, generation and CLI iterate them, so adding an option touches its row, its hook and its tests."""
    paths = [p for pkg in ("sdq", "producer", "workers") for p in (ROOT / pkg).rglob("*.py")
             if not str(p.relative_to(ROOT)).startswith(OPTION_HOMES)]
    offenders = {str(p.relative_to(ROOT)): names for p in paths if (names := _option_names(p))}
    assert offenders == {}
    web = {p.name: sorted(set(OPTION_WORDS.findall(p.read_text(encoding="utf-8"))))  # the page renders the rows
           for p in (ROOT / "producer" / "static").glob("*.*") if p.suffix in (".js", ".html")}
    assert {k: v for k, v in web.items() if v} == {}


MAX_FOLDER_MODULES = 20
"""Most modules in one folder: past it, a folder holds more than one capability (make subpackages that say what
they hold, as `workers/` does)."""


def test_no_folder_holds_more_than_20_modules():
    big = {str(d.relative_to(ROOT)): n for pkg in (*PACKAGES, "bench") for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
           if d.is_dir() and d.name != "__pycache__"
           and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"])) > MAX_FOLDER_MODULES}
    assert big == {}


STATE = "sdq/state"
"""The state layer: the only package that talks to Redis (keys, scripts, the outbox, fleet records ...)."""

REDIS_ROOTS = ("workers/app.py", "cli/")
"""Composition roots that import redis (the worker's connection options, the local-stack supervisor's
wait for a worker); they and `producer/app.py` connect from a URL and hand the connection to the state layer."""


def _attribute_uses(path: Path, attr: str) -> list[int]:
    """Lines of `path` that read attribute `attr` of anything (``jobs.redis``)."""
    return [n.lineno for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.Attribute) and n.attr == attr]


def test_the_redis_client_is_imported_only_in_the_state_layer_and_the_composition_roots():
    paths = [p for pkg in ("sdq", "producer", "workers", "storage", "cli") for p in (ROOT / pkg).rglob("*.py")]
    rel = {p: str(p.relative_to(ROOT)) for p in paths}
    outside = [p for p in paths if not rel[p].startswith(STATE + "/") and not rel[p].startswith(REDIS_ROOTS)]
    offenders = {rel[p]: sorted(n for n in _imported(p) if n.split(".")[0] == "redis") for p in outside}
    assert {k: v for k, v in offenders.items() if v} == {}
    # ...and nothing outside it reaches for the store's connection (`jobs.redis`): it asks the store's methods
    reached = {rel[p]: _attribute_uses(p, "redis") for p in outside if not rel[p].startswith("cli/")}
    assert {k: v for k, v in reached.items() if v} == {}
