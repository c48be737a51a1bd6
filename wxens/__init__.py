"""wxens: huge-ensemble ML weather forecasting.

The notebook API: lazy xarray openers for reanalyses, forecasts and scores. Each function is
imported on first use so that ``import wxens`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "open_reanalysis": "data_catalog",
    "open_forecast": "pipeline",
    "open_scores": "evaluation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wxens' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["__version__", *_LAZY]
