"""docs/TESTING.md's mutation-testing recipe: pyproject.toml's [tool.mutmut] matches what the page says it runs."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mutmut_runs_every_sdk_unit_test_file_the_testing_page_names():
    # docs/TESTING.md: "Test selection: `tests/test_sdk_*.py` and `tests/test_metrics.py`"; the list in
    # pyproject.toml is written out by hand and missed tests/test_sdk_api_use.py, added after it.
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    expected = sorted([f"tests/{p.name}" for p in (ROOT / "tests").glob("test_sdk_*.py")] + ["tests/test_metrics.py"])
    assert sorted(config["pytest_add_cli_args_test_selection"]) == expected
    assert "Test selection: `tests/test_sdk_*.py` and `tests/test_metrics.py`" in (ROOT / "docs" / "TESTING.md").read_text()
