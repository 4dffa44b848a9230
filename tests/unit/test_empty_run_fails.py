"""A test run that collects nothing must fail, loudly, so CI can never pass on an empty run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_run_that_collects_nothing_exits_non_zero_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "test_nothing_here.py").write_text("# no tests\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 5, result.stdout + result.stderr
    assert "no tests were collected" in result.stdout
