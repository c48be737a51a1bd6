"""The ensemble engine: perturbations (bred vectors, noise), member layout, batched rollout, zarr
writer, manifest/resume, shards and inline scoring.

Notebook API::

    from pipeline import run_forecast, open_forecast
    summary = run_forecast("forecast.yaml", "runs/hens")      # or a ForecastConfig / dict
    ds = open_forecast("runs/hens")                             # lazy xarray.Dataset
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ForecastConfig": "pipeline.config",
    "load_config": "pipeline.config",
    "run_forecast": "pipeline.engine",
    "regenerate_members": "pipeline.engine",
    "open_forecast": "pipeline.store",
    "verify": "pipeline.manifest",
    "MemberLayout": "pipeline.members",
    "open_scores": "pipeline.inline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = list(_LAZY)
