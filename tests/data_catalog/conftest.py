"""Fixtures of the data_catalog tests (stores built by dc_stores.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dc_stores import wb2_dataset, write


@pytest.fixture
def wb2_store(tmp_path: Path) -> Path:
    """64x32 WeatherBench2-layout store (zarr v3), latitude ascending without poles."""
    return write(wb2_dataset(), tmp_path / "wb2_64x32.zarr")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistics caches and user catalogs never leak between tests."""
    monkeypatch.setenv("WXENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WXENS_CATALOG", raising=False)
