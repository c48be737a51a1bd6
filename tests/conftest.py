"""Shared fixtures: the real sample data of ../shared/realdata, temporary run directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Test helper modules (e.g. tests/data_catalog/dc_stores.py) are importable by their bare names.
for _sub in sorted(Path(__file__).parent.iterdir()):
    if _sub.is_dir() and not _sub.name.startswith((".", "_")) and str(_sub) not in sys.path:
        sys.path.append(str(_sub))
REALDATA = Path(os.environ.get("WXENS_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of real sample stores; tests that need it skip with a clear reason when absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real sample data not found at {REALDATA} (set WXENS_REALDATA)")
    return REALDATA


# The embedded world and other caches live inside the checkout, so a fresh clone builds them anew
# (honest CI) and parallel test workers share one cache.
os.environ.setdefault("WXENS_CACHE", str(REPO / ".wxens-cache"))
