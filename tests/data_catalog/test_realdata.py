"""Every store of ../shared/realdata opens in canonical form with its values preserved.

References are the raw ``xarray.open_zarr`` values, reordered in the test by xarray itself
(``sortby``), and spot values at named places read by label from the raw store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from data_catalog import UserError, check_global_grid, open_forecast_store, open_reanalysis
from data_catalog.grid import describe_grid

pytestmark = pytest.mark.realdata


def _raw_canonical(da: xr.DataArray) -> xr.DataArray:
    """Independent reference: wrap longitude and sort both axes with xarray."""
    da = da.assign_coords(longitude=da["longitude"].astype(np.float64) % 360.0)
    da = da.assign_coords(latitude=da["latitude"].astype(np.float64))
    return da.sortby("longitude").sortby("latitude", ascending=False)


def _check_order(ds: xr.Dataset) -> None:
    assert np.all(np.diff(ds["latitude"].values) < 0)
    assert np.all(np.diff(ds["longitude"].values) > 0)
    assert ds["longitude"].values.min() >= 0 and ds["longitude"].values.max() < 360
    assert all(v.dtype == np.float32 for v in ds.data_vars.values())


def test_zarr_v2_short_names_float32_coords_int32_level(realdata: Path) -> None:
    path = realdata / "earthkit_zarr_v2_1deg.zarr"
    raw = xr.open_zarr(path)
    assert raw["level"].dtype == np.int32 and raw["latitude"].dtype == np.float32
    ds = open_reanalysis(path)
    _check_order(ds)
    assert list(ds.data_vars) == ["z500", "z850", "t500", "t850"]
    assert ds["latitude"].dtype == np.float64
    for ch, var, lev in [("z500", "z", 500), ("t850", "t", 850)]:
        ref = _raw_canonical(raw[var].sel(level=lev))
        # float64 on disk -> float32 in memory: equal to float32 rounding
        np.testing.assert_allclose(ds[ch].values, ref.values.astype(np.float32), rtol=0, atol=0)
    # a named place: Reading, UK (51 N, 359 E = 1 W)
    want = float(raw["t"].sel(level=850, latitude=51.0, longitude=359.0).isel(time=0))
    got = float(ds["t850"].sel(latitude=51.0, longitude=359.0).isel(time=0))
    assert got == pytest.approx(want, rel=1e-7)
    assert ds["z500"].attrs["units"] == "m**2 s**-2" and ds["z500"].attrs["source_name"] == "z"
    assert check_global_grid(ds)["kind"] == "equiangular with poles"
    sub = open_reanalysis(path, variables=["geopotential"], levels=[850])
    assert list(sub.data_vars) == ["z850"]


def test_era5_ensemble_members(realdata: Path) -> None:
    path = realdata / "era5_eda_members_3deg.zarr"
    raw = xr.open_zarr(path)
    assert raw["level"].dtype == np.int64 and list(raw["level"].values) == [850, 500]
    ds = open_reanalysis(path)
    _check_order(ds)
    assert ds["z500"].dims == ("time", "number", "latitude", "longitude")
    assert ds.sizes["number"] == 10 and ds.sizes["time"] == 4
    ref = _raw_canonical(raw["geopotential"].sel(level=500)).transpose("time", "number", ...)
    np.testing.assert_array_equal(ds["z500"].values, ref.values)
    one = open_reanalysis(path, variables=["t850"], member=3, time="2017-01-02")
    assert one["t850"].dims == ("time", "latitude", "longitude") and one.sizes["time"] == 2
    want = raw["temperature"].sel(
        number=3, level=850, latitude=48.0, longitude=12.0, time=np.datetime64("2017-01-02T12")
    )
    assert float(one["t850"].sel(latitude=48.0, longitude=12.0).isel(time=1)) == float(want)
    assert check_global_grid(ds)["dlat"] == 3.0


def test_quarter_degree_t2m_with_poles(realdata: Path) -> None:
    path = realdata / "era5_t2m_0p25deg.zarr"
    raw = xr.open_zarr(path)
    ds = open_reanalysis(path, variables=["2m_temperature"])
    _check_order(ds)
    assert list(ds.data_vars) == ["t2m"] and ds["t2m"].shape == (1, 721, 1440)
    np.testing.assert_array_equal(ds["t2m"].values, _raw_canonical(raw["2m_temperature"]).values)
    for lat, lon in [(90.0, 0.0), (-90.0, 0.0), (-33.75, 151.25), (40.75, 286.0)]:
        assert float(ds["t2m"].sel(latitude=lat, longitude=lon).isel(time=0)) == float(
            raw["2m_temperature"].sel(latitude=lat, longitude=lon).isel(time=0)
        )
    # the raw store says standard_name "unknown"; the lexicon supplies the CF one
    assert ds["t2m"].attrs["standard_name"] == "air_temperature"
    g = check_global_grid(ds)
    assert (g["kind"], g["nlat"], g["nlon"], g["poles"]) == ("equiangular with poles", 721, 1440, True)


def test_ifs_forecast_store(realdata: Path) -> None:
    path = realdata / "ifs_forecast_10deg.zarr"
    raw = xr.open_zarr(path)
    ds = open_forecast_store(path)
    _check_order(ds)
    assert ds["z500"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
    assert len(ds.data_vars) == 5 * 6
    assert [c for c in ds.data_vars if c.startswith("r")] == ["r300", "r400", "r500", "r700", "r850", "r1000"]
    for ch, var, lev in [("u300", "u_component_of_wind", 300), ("r1000", "relative_humidity", 1000)]:
        np.testing.assert_array_equal(ds[ch].values, _raw_canonical(raw[var].sel(level=lev)).values)
    # one lead read as an analysis: valid time = init + lead
    an = open_reanalysis(path, lead="6h", variables=["t850"])
    np.testing.assert_array_equal(an["time"].values, raw["time"].values + np.timedelta64(6, "h"))
    np.testing.assert_array_equal(
        an["t850"].values, ds["t850"].sel(prediction_timedelta=np.timedelta64(6, "h")).values
    )
    with pytest.raises(UserError, match="forecast store"):
        open_reanalysis(path)
    with pytest.raises(UserError, match="lead 12h not in the store \\(leads: 0h, 6h\\)"):
        open_reanalysis(path, lead="12h")


def test_regional_ensemble_forecast_longitudes_wrapped(realdata: Path) -> None:
    path = realdata / "ifs_ens_z500_europe_1deg.zarr"
    raw = xr.open_zarr(path)
    assert raw["longitude"].values.min() < 0
    ds = open_forecast_store(path, variables=["z500"])
    _check_order(ds)
    assert ds["z500"].dims == ("time", "number", "prediction_timedelta", "latitude", "longitude")
    assert ds.sizes["number"] == 51
    np.testing.assert_array_equal(
        ds["z500"].values, _raw_canonical(raw["geopotential"].sel(level=500)).values
    )
    # 10 W in the raw store is 350 E in canonical form
    want = (
        raw["geopotential"]
        .sel(level=500, latitude=50.0, longitude=-10.0)
        .isel(time=0, prediction_timedelta=0)
    )
    got = ds["z500"].sel(latitude=50.0, longitude=350.0).isel(time=0, prediction_timedelta=0)
    np.testing.assert_array_equal(got.values, want.values)
    g = describe_grid(ds["latitude"].values, ds["longitude"].values)
    assert g["kind"] == "regional" and g["longitude_range"] == [310.0, 20.0]
    with pytest.raises(UserError, match="grid is not global"):
        check_global_grid(ds)


def test_every_realdata_store_opens(realdata: Path) -> None:
    """Whatever stores the folder holds, each opens in canonical form (reanalysis or forecast)."""
    stores = sorted(realdata.glob("*.zarr"))
    assert len(stores) >= 5
    for path in stores:
        raw = xr.open_zarr(path)
        opener = open_forecast_store if "prediction_timedelta" in raw.dims else open_reanalysis
        ds = opener(path)
        _check_order(ds)
        assert len(ds.data_vars) >= 1, path.name
