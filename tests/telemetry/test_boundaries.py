"""Package boundaries that a docstring alone would not keep."""

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def _imported_packages(path: Path) -> set[str]:
    # Parsed on a thread of its own: CPython 3.11's AST validator keeps a
    # per-thread recursion count that earlier tests on the session's event-loop
    # thread can leave off ("SystemError: AST constructor recursion depth mismatch").
    with ThreadPoolExecutor(1) as fresh_thread:
        tree = fresh_thread.submit(ast.parse, path.read_text(), str(path)).result()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_tracing_and_telemetry_never_import_the_dashboard() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("tracing", "telemetry")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "dashboard" in _imported_packages(path)
    ]
    assert offenders == []


def test_telemetry_never_imports_django_even_lazily() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "telemetry").rglob("*.py"))
        if _imported_packages(path) & {"django", "channels", "tracing", "dashboard"}
    ]
    assert offenders == []
