"""Browser tests: skipped with the reason when Debian's Chromium, its driver or selenium is missing.

Screenshots go to the test's tmp folder; with UI_SCREENSHOTS=docs/img they refresh the docs' images
(`docs/ui.md` shows them)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaptering.config import PROJECT_ROOT

from .chromium import Page, chromium, missing


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory) -> Path:
    where = os.environ.get("UI_SCREENSHOTS")
    out = (PROJECT_ROOT / where) if where and not Path(where).is_absolute() else Path(where or "")
    if not where:
        out = tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def page(shots_dir: Path, tmp_path: Path) -> Iterator[Page]:
    reason = missing()
    if reason:
        pytest.skip(f"browser tests need Debian's headless Chromium: {reason}")
    with chromium(shots_dir, tmp_path / "chromedriver.log") as p:
        yield p
