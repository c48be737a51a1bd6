"""Fixtures of the data_catalog tests (stores built by dc_stores.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_catalog.dc_stores import wb2_dataset, write


@pytest.fixture
def wb2_store(tmp_path: Path) -> Path:
    """64x32 WeatherBench2-layout store (zarr v3), latitude ascending without poles."""
    return write(wb2_dataset(), tmp_path / "wb2_64x32.zarr")


@pytest.fixture(autouse=True)
def _private_cache(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistics caches and user catalogs never leak between tests. The embedded world's tests
    keep the shared repo-local cache (its store is built once per checkout, not once per test)."""
    if "world" in request.node.path.name:
        return
    monkeypatch.setenv("WXENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WXENS_CATALOG", raising=False)
