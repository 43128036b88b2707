"""The serving side must run on an install without torch or transformers."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = [
    "app.cli",
    "app.corpus",
    "app.metric",
    "app.text.brat",
    "app.text.encode",
    "app.text.segment",
]


def test_light_modules_import_no_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in LIGHT_MODULES)
        + "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
