"""Grid description and the one-line checks (global grid, finite data, unique times)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data_catalog import UserError, check_finite, check_global_grid, check_unique_times, open_reanalysis
from data_catalog.grid import describe_grid
from tests.data_catalog.dc_stores import wb2_dataset


@pytest.mark.parametrize(
    ("lat", "lon", "kind", "is_global"),
    [
        (np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625, "equiangular without poles", True),
        (np.linspace(90, -90, 721), np.arange(1440) * 0.25, "equiangular with poles", True),
        (np.linspace(90, -90, 33), np.arange(-32, 32) * 5.625, "equiangular with poles", True),
        (np.linspace(65, 20, 46), np.arange(-50, 21.0), "regional", False),
        (np.linspace(60, 30, 31), np.arange(0, 360.0), "regional", False),
    ],
)
def test_describe_grid(lat: np.ndarray, lon: np.ndarray, kind: str, is_global: bool) -> None:
    g = describe_grid(lat, lon)
    assert (g["kind"], g["global"], g["nlat"], g["nlon"]) == (kind, is_global, lat.size, lon.size)


def test_gaussian_grid_is_global() -> None:
    x, _ = np.polynomial.legendre.leggauss(48)
    g = describe_grid(np.rad2deg(np.arcsin(x))[::-1], np.arange(96) * 3.75)
    assert g["kind"] == "gaussian" and g["global"] and g["dlat"] is None


def test_check_global_grid_messages() -> None:
    ds = open_reanalysis(wb2_dataset(levels=(500,)), variables=["z500"])
    assert check_global_grid(ds)["kind"] == "equiangular without poles"
    with pytest.raises(UserError, match=r"grid is not global \(latitude -36.5625..36.5625"):
        check_global_grid(ds.isel(latitude=slice(9, 23)))
    with pytest.raises(UserError, match="non-uniform latitude spacing"):
        check_global_grid(ds.isel(latitude=[0, 1, 2, 5, 9, 20, 31]))
    with pytest.raises(UserError, match="non-uniform longitude spacing"):
        check_global_grid(ds.isel(longitude=[0, 1, 2, 5, 9, 20, 63]))


def test_check_finite_count_and_first_location() -> None:
    src = wb2_dataset(levels=(500, 850))
    src["geopotential"][2, 1, 0, 10] = np.nan  # 850 hPa, southernmost row, lon 56.25
    src["geopotential"][3, 1, 31, 0] = np.inf
    src["2m_temperature"][0, 5, 5] = np.nan
    ds = open_reanalysis(src)
    with pytest.raises(UserError) as info:
        check_finite(ds)
    msg = str(info.value)
    assert msg.startswith("3 NaN/infinite value(s) in the selected data (z850: 2, t2m: 1)")
    # z850 in canonical order: the NaN at time index 2 comes first; latitude was -87.1875
    assert "first at z850 time=2000-01-01T12:00, latitude=-87.1875, longitude=56.25" in msg
    check_finite(ds[["z500", "t500"]])  # clean channels pass
    check_finite(ds["z500"])


def test_check_unique_times() -> None:
    t = pd.DatetimeIndex(["2000-01-01", "2000-01-01", "2000-01-02"])
    da = xr.DataArray(np.zeros(3), dims="time", coords={"time": t})
    with pytest.raises(UserError, match=r"1 duplicate time\(s\), first 2000-01-01T00:00"):
        check_unique_times(da)
    check_unique_times(da.isel(time=[0, 2]))
