"""Describe a data source (``wxens catalog show``): dims, channels, time range, grid, size on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_catalog.catalog import load_catalog
from data_catalog.errors import UserError
from data_catalog.grid import describe_grid
from data_catalog.readers import FORECAST_DIMS, normalise_dataset, open_raw, resolve_source, store_format

__all__ = ["describe_source", "format_bytes", "size_on_disk"]


def size_on_disk(path: str | os.PathLike[str]) -> int:
    """Total size in bytes of the files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def format_bytes(n: int) -> str:
    """Human-readable size with binary prefixes (``3.5 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _time_step(t: pd.DatetimeIndex) -> str | None:
    if t.size < 2:
        return None
    steps = np.unique(np.diff(t.values))
    if steps.size == 1:
        return _hours(steps[0])
    return f"irregular ({_hours(steps.min())} to {_hours(steps.max())})"


def _hours(step: np.timedelta64) -> str:
    h = pd.Timedelta(step) / pd.Timedelta(hours=1)
    return f"{h:g}h"


def describe_source(source: str, catalog: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Describe a local store, builtin store or catalog entry.

    Remote catalog entries are described from the catalog alone (never opened). The dict holds
    ``location``, ``format``, ``layout`` (reanalysis/forecast), ``dims``, ``channels``, ``time``,
    ``members``, ``leads``, ``grid``, ``static`` and ``size_bytes``.
    """
    cat = load_catalog(catalog)
    entry = cat[source] if source in cat and not Path(source).expanduser().exists() else None
    info: dict[str, Any] = {"name": source}
    if entry is not None:
        info["catalog"] = entry.as_dict()
        if entry.remote:
            info.update({"location": entry.location, "remote": True, "opened": False})
            return info
    loc, opts, label = resolve_source(source, catalog)
    if "://" in loc:
        raise UserError(f"{loc} is remote: add it to a catalog with remote: true to see its metadata")
    raw = open_raw(loc, opts or None)
    ds = normalise_dataset(raw, label=label, leading=FORECAST_DIMS)
    info.update({"location": loc, "remote": False, "opened": True, "format": f"zarr v{store_format(loc)}"})
    info["layout"] = "forecast" if "prediction_timedelta" in ds.dims else "reanalysis"
    order = [d for d in (*FORECAST_DIMS, "latitude", "longitude") if d in ds.dims]
    info["dims"] = {d: int(ds.sizes[d]) for d in order}
    info["channels"] = [
        {
            "name": str(n),
            "units": str(v.attrs.get("units", "")),
            "long_name": str(v.attrs.get("long_name", "")),
            "source_name": str(v.attrs.get("source_name", n)),
        }
        for n, v in ds.data_vars.items()
    ]
    if "time" in ds.dims:
        t = pd.DatetimeIndex(ds.indexes["time"])
        info["time"] = {
            "start": t[0].isoformat(),
            "end": t[-1].isoformat(),
            "count": int(t.size),
            "step": _time_step(t),
        }
    if "number" in ds.dims:
        info["members"] = int(ds.sizes["number"])
    if "prediction_timedelta" in ds.dims:
        info["leads"] = [_hours(x) for x in ds["prediction_timedelta"].values]
    info["grid"] = describe_grid(ds["latitude"].values, ds["longitude"].values)
    info["static"] = [str(c) for c in ds.coords if str(c) not in ds.dims and ds[c].ndim == 2]
    info["size_bytes"] = size_on_disk(loc)
    return info
