"""The serving side must run on an install without torch, transformers or ray: every module of app/ imports
in a fresh interpreter in which they cannot be imported, without trying to, and none is loaded afterwards.
The command line's training commands and `annotate --engine ray` import them when called, inside the
function that runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "ray")

# Run in a fresh interpreter: a finder placed first on sys.meta_path refuses the heavy packages, as an
# install without them would, and notes which module tried them (even one that would fall back); then every
# module given is imported, and what of the heavy packages got into sys.modules is reported.
CHILD = """
import importlib, importlib.abc, json, sys

HEAVY = {heavy!r}
tried = {{}}
importing = None


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            tried.setdefault(importing, []).append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (tests/test_imports.py)", name=name)
        return None


sys.meta_path.insert(0, Absent())
failed = {{}}
for importing in {modules!r}:
    try:
        importlib.import_module(importing)
    except Exception as exc:
        failed[importing] = f"{{type(exc).__name__}}: {{exc}}"
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)
print(json.dumps({{"failed": failed, "tried": tried, "loaded": loaded}}))
"""


def app_modules() -> list[str]:
    """Every module under app/, found on disk (a new module is checked without being listed anywhere)."""
    names = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":  # importing it would run the command line
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_app_module_imports_without_torch() -> None:
    modules = app_modules()
    assert {"app", "app.main", "app.service", "app.pipeline", "app.cli", "app.text.brat"} <= set(modules)
    code = CHILD.format(heavy=HEAVY, modules=modules)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, "these modules fail to import without torch, transformers and ray"
    assert report["tried"] == {}, "importing these modules tries torch, transformers or ray"
    assert report["loaded"] == []
