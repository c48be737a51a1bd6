"""wxens data_catalog package: readers, name lexicon, grids, statistics, catalog, embedded world.

Public functions are imported lazily (``import data_catalog`` stays cheap for the CLI)::

    from data_catalog import open_reanalysis
    ds = open_reanalysis("builtin:sphere-swe", variables=["z500"], time=slice("2008", "2009"))
"""

from __future__ import annotations

import importlib
from typing import Any

from data_catalog.errors import UserError

_LAZY = {
    "open_reanalysis": "data_catalog.readers",
    "open_forecast_store": "data_catalog.readers",
    "normalise_dataset": "data_catalog.readers",
    "resolve_source": "data_catalog.readers",
    "check_finite": "data_catalog.checks",
    "check_global_grid": "data_catalog.checks",
    "check_unique_times": "data_catalog.checks",
    "describe_grid": "data_catalog.grid",
    "area_weights": "data_catalog.grid",
    "Catalog": "data_catalog.catalog",
    "CatalogEntry": "data_catalog.catalog",
    "load_catalog": "data_catalog.catalog",
    "channel_statistics": "data_catalog.stats",
    "compute_statistics": "data_catalog.stats",
    "describe_source": "data_catalog.describe",
    "canonical_name": "data_catalog.lexicon",
}

__all__ = ["UserError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'data_catalog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
