"""Builders of small WeatherBench2-layout stores with analytic values (shared by the data_catalog
tests), so every reordering is checked against a formula independent of the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LEVELS = (500, 700, 850)


def z_value(level: float, lat: np.ndarray, lon: np.ndarray, t: int) -> np.ndarray:
    """Analytic 'geopotential' of the fixtures: unique per (level, lat, lon, time)."""
    return 100.0 * level + 10.0 * lat + 0.01 * lon + 1000.0 * t


def t2m_value(lat: np.ndarray, lon: np.ndarray, t: int) -> np.ndarray:
    return 280.0 + 0.25 * lat - 0.001 * lon + 0.5 * t


def wb2_dataset(
    nlat: int = 32,
    nlon: int = 64,
    poles: bool = False,
    times: pd.DatetimeIndex | None = None,
    levels: tuple[int, ...] = LEVELS,
    lon_start: float = 0.0,
    level_dtype: str = "int64",
    coord_dtype: str = "float64",
) -> xr.Dataset:
    """A WeatherBench2-layout dataset: latitude ascending, `level` dim, long variable names."""
    if poles:
        lat = np.linspace(-90.0, 90.0, nlat)
    else:
        d = 180.0 / nlat
        lat = np.linspace(-90.0 + d / 2, 90.0 - d / 2, nlat)
    lon = lon_start + np.arange(nlon) * (360.0 / nlon)
    if times is None:
        times = pd.date_range("2000-01-01", periods=4, freq="6h")
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    z = np.stack([np.stack([z_value(lv, la, lo, k) for lv in levels]) for k in range(len(times))])
    t = z / 200.0  # temperature: another unique analytic field
    t2 = np.stack([t2m_value(la, lo, k) for k in range(len(times))])
    ds = xr.Dataset(
        {
            "geopotential": (
                ("time", "level", "latitude", "longitude"),
                z.astype(np.float32),
                {"units": "m2 s-2", "long_name": "Geopotential"},
            ),
            "temperature": (("time", "level", "latitude", "longitude"), t.astype(np.float32), {"units": "K"}),
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                t2.astype(np.float32),
                {"units": "K", "long_name": "2 metre temperature"},
            ),
            "land_sea_mask": (("latitude", "longitude"), (la > 0).astype(np.float32)),
        },
        coords={
            "time": times,
            "level": np.asarray(levels, dtype=level_dtype),
            "latitude": lat.astype(coord_dtype),
            "longitude": lon.astype(coord_dtype),
        },
    )
    return ds


def write(ds: xr.Dataset, path: Path, zarr_format: int = 3) -> Path:
    ds.to_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2, mode="w")
    return path
