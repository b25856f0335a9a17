"""The law engine imports numpy and scipy only (the dependency direction in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("torch", "fastapi", "sqlalchemy", "pydantic", "matplotlib", "starlette")


def test_importing_the_law_engine_pulls_in_no_web_db_plot_or_torch_module() -> None:
    code = (
        "import sys, json\n"
        "import app.law, app.law.forms, app.law.fitting, app.law.metrics, app.law.bootstrap,"
        " app.law.recommend, app.law.plan, app.law.ranges, app.law.synthetic\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
