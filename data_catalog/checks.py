"""Checks on opened data that end in one clear :class:`UserError` line."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.grid import describe_grid

__all__ = ["check_finite", "check_global_grid", "check_unique_times"]

logger = logging.getLogger(__name__)


def _fmt(value: object) -> str:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="m"))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def check_global_grid(ds: xr.Dataset | xr.DataArray) -> dict[str, object]:
    """Require a uniform global grid (equiangular with or without poles, or Gaussian).

    Returns :func:`data_catalog.grid.describe_grid` of the grid; raises UserError naming what is
    wrong (non-uniform spacing, regional extent) otherwise.
    """
    lat = np.asarray(ds["latitude"].values)
    lon = np.asarray(ds["longitude"].values)
    g = describe_grid(lat, lon)
    if g["global"]:
        return g
    lr, nr = g["latitude_range"], g["longitude_range"]
    extent = f"latitude {lr[0]:g}..{lr[1]:g}, longitude {nr[0]:g}..{nr[1]:g}"  # type: ignore[index]
    if g["kind"] == "irregular" or g["dlon"] is None:
        which = "longitude" if g["dlon"] is None else "latitude"
        raise UserError(
            f"non-uniform {which} spacing ({extent}, {g['nlat']}x{g['nlon']}); a global model needs a "
            "uniform global latitude-longitude grid"
        )
    raise UserError(
        f"grid is not global ({extent}, {g['nlat']}x{g['nlon']}); a global model needs a uniform global "
        "latitude-longitude grid"
    )


def check_unique_times(ds: xr.Dataset | xr.DataArray) -> None:
    """Raise UserError when the ``time`` coordinate repeats a value."""
    if "time" not in ds.dims:
        return
    t = np.asarray(ds["time"].values)
    uniq, counts = np.unique(t, return_counts=True)
    if (counts > 1).any():
        first = uniq[counts > 1][0]
        raise UserError(f"{int((counts - 1).sum())} duplicate time(s), first {_fmt(first)}")


def check_finite(ds: xr.Dataset | xr.DataArray) -> None:
    """Raise UserError if the (selected) data hold NaN or infinite values.

    The message gives the total count, the count per variable, and the coordinates of the first
    non-finite value (in array order) of the first affected variable. Computes with dask.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=str(ds.name or "data"))
    names = list(ds.data_vars)
    bad = {n: ~da.isfinite(da.asarray(ds[n].data)) for n in names}
    (counts,) = da.compute([b.sum() for b in bad.values()])
    per = {n: int(c) for n, c in zip(names, counts, strict=True) if int(c)}
    if not per:
        return
    first = next(iter(per))
    arr = ds[first]
    flat = int(bad[first].ravel().argmax().compute())
    index = np.unravel_index(flat, arr.shape)
    where = ", ".join(
        f"{d}={_fmt(arr[d].values[i])}" if d in arr.coords else f"{d}={i}"
        for d, i in zip(arr.dims, index, strict=True)
    )
    total = sum(per.values())
    detail = ", ".join(f"{n}: {c}" for n, c in per.items())
    raise UserError(
        f"{total} NaN/infinite value(s) in the selected data ({detail}); first at {first} {where}"
    )
