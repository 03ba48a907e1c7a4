"""Package boundaries that a docstring alone would not keep."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_and_telemetry_never_load_django() -> None:
    # A fresh interpreter: this test process has Django loaded already.
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import telemetry, worker\n"
        "for package in (telemetry, worker):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'dashboard', 'tracing', 'channels'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"worker/telemetry pulled in {loaded}"


_IMPORTS = """
import ast, json, sys
found = {}
for path in sys.argv[1:]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    found[path] = sorted(names)
print(json.dumps(found))
"""


def _imports(packages: tuple[str, ...]) -> dict[Path, set[str]]:
    """The top-level packages each module of these packages imports.

    Parsed in a fresh interpreter: in this one, CPython 3.11's AST validator can be
    left with a wrong recursion count by earlier tests ("SystemError: AST constructor
    recursion depth mismatch"), even on a new thread.
    """
    paths = [str(p) for package in packages for p in sorted((ROOT / package).rglob("*.py"))]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *paths], capture_output=True, text=True, check=True
    )
    return {Path(path): set(names) for path, names in json.loads(done.stdout).items()}


def test_tracing_and_telemetry_never_import_the_dashboard() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path, imported in _imports(("tracing", "telemetry")).items()
        if "dashboard" in imported
    ]
    assert offenders == []


def test_telemetry_never_imports_django_even_lazily() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path, imported in _imports(("telemetry",)).items()
        if imported & {"django", "channels", "tracing", "dashboard"}
    ]
    assert offenders == []
