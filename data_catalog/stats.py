"""Per-channel normalisation statistics, computed with dask and cached as JSON with provenance.

For each channel ``x(t, lat, lon)`` (pooled over ensemble members when present), with area weights
``w_i`` of :func:`data_catalog.grid.area_weights` (mean 1 over latitude rows):

* ``mean = <w x>`` where ``<.>`` averages over time, latitude and longitude;
* ``std = sqrt(<w x^2> - mean^2)`` (area-weighted population standard deviation);
* ``tendency_std``: the same standard deviation of ``x(t + 6 h) - x(t)`` over every pair of times
  6 h apart present in the selection (FourCastNet / SFNO use it to scale residual prediction).

Sums are accumulated in float64 in one dask pass over the data. Results are cached in
``$WXENS_CACHE/stats/`` (default ``~/.cache/wxens/stats``) keyed by source, time range, channels
and tendency step, and recomputed when the store's fingerprint (size and modification time of its
zarr metadata files and array folders) changes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.grid import area_weights

__all__ = ["cache_dir", "channel_statistics", "compute_statistics", "store_fingerprint"]

logger = logging.getLogger(__name__)

STATS_VERSION = 1
_META = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs", ".zarray")


def cache_dir() -> Path:
    """``$WXENS_CACHE/stats`` (default ``~/.cache/wxens/stats``)."""
    base = os.environ.get("WXENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wxens")
    return Path(base) / "stats"


def store_fingerprint(location: str | os.PathLike[str]) -> str:
    """SHA-256 over (name, size, mtime_ns) of a local store's metadata files and array folders.

    Rewriting or appending to a store through zarr changes its metadata or folder listings, so the
    fingerprint changes; an in-place overwrite of existing chunk files that leaves all of them
    untouched is not detected (use ``refresh=True``). Remote URLs are fingerprinted by name only.
    """
    loc = os.fspath(location)
    h = hashlib.sha256()
    p = Path(loc)
    if "://" in loc or not p.is_dir():
        h.update(loc.encode())
        return h.hexdigest()
    items: list[Path] = [p / m for m in _META]
    for child in sorted(p.iterdir()):
        if child.is_dir():
            items.append(child)
            items.extend(child / m for m in _META)
            items.extend(sorted(c for c in child.iterdir() if c.is_dir()))
    for item in items:
        try:
            st = item.stat()
        except FileNotFoundError:
            continue
        h.update(f"{item.relative_to(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _pairs(times: pd.DatetimeIndex, step: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i, j)`` with ``times[j] == times[i] + step``."""
    target = times + step
    j = times.get_indexer(target)
    i = np.flatnonzero(j >= 0)
    return i, j[i]


def compute_statistics(ds: xr.Dataset, tendency_hours: float = 6.0) -> dict[str, dict[str, Any]]:
    """Area-weighted mean, std and tendency std of every channel of a canonical dataset.

    Returns ``{channel: {"mean", "std", "tendency_std", "count", "tendency_count"}}`` (floats;
    ``tendency_std`` is None when no two times are ``tendency_hours`` apart). Raises UserError when
    the data hold NaN or infinite values.
    """
    w = xr.DataArray(area_weights(ds["latitude"].values), dims=["latitude"])
    times = pd.DatetimeIndex(ds.indexes["time"]) if "time" in ds.dims else pd.DatetimeIndex([])
    i, j = _pairs(times, pd.Timedelta(hours=tendency_hours)) if times.size else (np.array([]), np.array([]))
    lazy: dict[str, list[Any]] = {}
    for name, da in ds.data_vars.items():
        x = da.astype(np.float64)
        terms = [(w * x).mean(), (w * x * x).mean(), (~np.isfinite(x)).sum()]
        if i.size:
            d = x.isel(time=j).drop_vars("time") - x.isel(time=i).drop_vars("time")
            terms += [(w * d).mean(), (w * d * d).mean()]
        lazy[str(name)] = [t.data for t in terms]
    (computed,) = dask.compute(lazy)
    out: dict[str, dict[str, Any]] = {}
    for name, vals in computed.items():
        n_bad = int(vals[2])
        if n_bad:
            raise UserError(
                f"{n_bad} NaN/infinite value(s) in {name}; statistics need finite data (see check_finite)"
            )
        mean, m2 = float(vals[0]), float(vals[1])
        entry: dict[str, Any] = {
            "mean": mean,
            "std": float(np.sqrt(max(m2 - mean * mean, 0.0))),
            "tendency_std": None,
            "count": int(ds[name].size),
            "tendency_count": int(i.size * ds[name].size // max(times.size, 1)),
        }
        if i.size:
            dm, dm2 = float(vals[3]), float(vals[4])
            entry["tendency_std"] = float(np.sqrt(max(dm2 - dm * dm, 0.0)))
        out[name] = entry
    if not i.size:
        logger.warning("no pairs of times %g h apart: tendency_std not computed", tendency_hours)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[-60:] or "store"


def _time_repr(time: Any) -> Any:
    if time is None:
        return None
    if isinstance(time, slice):
        return [_time_repr(time.start), _time_repr(time.stop)]
    if isinstance(time, (list, tuple)):
        return [_time_repr(t) for t in time]
    if isinstance(time, (_dt.datetime, _dt.date, np.datetime64, pd.Timestamp)):
        return pd.Timestamp(time).isoformat()
    return str(time)


def channel_statistics(
    source: str | os.PathLike[str],
    time: Any = None,
    variables: Sequence[str] | str | None = None,
    levels: Sequence[float] | None = None,
    *,
    tendency_hours: float = 6.0,
    cache: bool = True,
    refresh: bool = False,
    catalog: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Statistics of a source over a time range, from the cache when still valid.

    Returns ``{"version", "channels": {name: {...}}, "provenance": {...}}`` where provenance holds
    the source, its resolved location, the time range asked for and the one covered, the number of
    times, the tendency step, the store fingerprint, the creation time and the wxens version.
    """
    from data_catalog.readers import open_reanalysis, resolve_source

    loc, _opts, label = resolve_source(source, catalog)
    fp = store_fingerprint(loc)
    key_doc = {
        "location": os.path.abspath(loc) if "://" not in loc else loc,
        "time": _time_repr(time),
        "variables": [variables] if isinstance(variables, str) else (list(variables) if variables else None),
        "levels": [float(v) for v in levels] if levels is not None else None,
        "tendency_hours": tendency_hours,
    }
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{_slug(str(label))}-{key}.json"
    if cache and not refresh and path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") == STATS_VERSION and doc.get("provenance", {}).get("fingerprint") == fp:
                logger.debug("statistics from cache %s", path)
                return doc
            logger.info("store %s changed since %s was written: recomputing statistics", loc, path)
        except (OSError, ValueError):
            logger.warning("unreadable statistics cache %s: recomputing", path)

    ds = open_reanalysis(source, variables, time, levels, catalog=catalog)
    stats = compute_statistics(ds, tendency_hours=tendency_hours)
    t = pd.DatetimeIndex(ds.indexes["time"])
    try:
        from importlib.metadata import version

        code_version = version("wxens")
    except Exception:  # pragma: no cover - not installed
        code_version = "unknown"
    doc = {
        "version": STATS_VERSION,
        "channels": stats,
        "provenance": {
            "source": str(label),
            "location": key_doc["location"],
            "time_requested": key_doc["time"],
            "time_range": [t[0].isoformat(), t[-1].isoformat()],
            "n_times": int(t.size),
            "tendency_hours": tendency_hours,
            "area_weighting": "data_catalog.grid.area_weights (cell-bound sin difference, mean 1)",
            "fingerprint": fp,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "wxens_version": code_version,
        },
    }
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return doc
