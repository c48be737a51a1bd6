"""Helpers of the models tests: a synthetic canonical world (zonally travelling waves)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

CHANNELS = ("z500", "u500", "v500", "vo500")


def midpoint_latitudes(nlat: int) -> np.ndarray:
    """WeatherBench2-style midpoint latitudes (no poles), descending."""
    return 90.0 - (np.arange(nlat) + 0.5) * 180.0 / nlat


def synthetic_world(
    nlat: int = 16, nlon: int = 32, years: tuple[int, int] = (2000, 2001), seed: int = 0
) -> xr.Dataset:
    """Canonical Dataset of zonally travelling, seasonally modulated, band-limited waves (6-hourly).

    ``f_c = base_c + amp_c (1 + 0.3 sin(2 pi doy / 365.25)) sum_w A_w cos(lat)^m_w (1 + 0.5 sin lat) cos(m_w (lon - c_w t) + p_w)``:
    exactly predictable from the state and the date, far from persistence at long leads.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range(f"{years[0]}-01-01", f"{years[1]}-12-31T18:00", freq="6h")
    t_days = ((times - times[0]) / pd.Timedelta(days=1)).to_numpy()
    doy = times.day_of_year.to_numpy() - 1 + times.hour.to_numpy() / 24.0
    season = 1.0 + 0.3 * np.sin(2 * np.pi * doy / 365.25)
    lat = midpoint_latitudes(nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    data = {}
    base = {"z500": 5.5e4, "u500": 10.0, "v500": 0.0, "vo500": 0.0}
    amp = {"z500": 800.0, "u500": 8.0, "v500": 6.0, "vo500": 2e-5}
    for c in CHANNELS:
        field = np.zeros((times.size, nlat, nlon), dtype=np.float64)
        for _ in range(3):
            m = int(rng.integers(1, 5))
            speed = rng.uniform(5.0, 15.0) * rng.choice([-1, 1])  # degrees per day
            ph = rng.uniform(0, 2 * np.pi)
            a = rng.uniform(0.5, 1.0)
            shape = np.cos(phi) ** m * (1 + 0.5 * np.sin(phi))
            arg = m * (lam[None] - np.deg2rad(speed * t_days)[:, None, None]) + ph
            field += a * shape[None] * np.cos(arg)
        data[c] = (
            ("time", "latitude", "longitude"),
            (base[c] + amp[c] * season[:, None, None] * field).astype(np.float32),
        )
    # orography-like static field (a coordinate, as open_reanalysis returns the world's orography)
    d2 = (phi - np.deg2rad(40.0)) ** 2 + (np.cos(phi) * (lam - np.deg2rad(90.0))) ** 2
    zs = (2000.0 * np.exp(-d2 / np.deg2rad(15.0) ** 2)).astype(np.float32)
    ds = xr.Dataset(
        data,
        coords={
            "time": times.values,
            "latitude": lat,
            "longitude": lon,
            "orography": (("latitude", "longitude"), zs),
        },
    )
    ds.attrs["dataset_id"] = f"synthetic-waves-{nlat}x{nlon}"
    return ds
