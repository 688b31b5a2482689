"""The code keeps the house style: ruff's checks (line width 100, imports, bugbear) pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from fixtures.common import require

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    require(ruff is not None, "ruff (pip install -e '.[dev]')")
    checked = subprocess.run(
        [ruff, "check", "--no-cache", "lib", "bot", "tests", "bench", "runbooks"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
