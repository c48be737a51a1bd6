"""open_reanalysis / open_forecast_store on WeatherBench2-layout fixtures (64x32 and 0.25 deg)."""

from __future__ import annotations

from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data_catalog import UserError, open_forecast_store, open_reanalysis
from data_catalog.grid import area_weights
from tests.data_catalog.dc_stores import t2m_value, wb2_dataset, write, z_value


def _assert_canonical(ds: xr.Dataset) -> None:
    lat = ds["latitude"].values
    lon = ds["longitude"].values
    assert np.all(np.diff(lat) < 0), "latitude must run north to south"
    assert np.all(np.diff(lon) > 0) and lon.min() >= 0 and lon.max() < 360
    for name, v in ds.data_vars.items():
        assert v.dtype == np.float32, name
        assert isinstance(v.data, dsa.Array), name
        assert v.dims[-2:] == ("latitude", "longitude")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_wb2_64x32_channels_and_values(tmp_path: Path, zarr_format: int) -> None:
    path = write(wb2_dataset(), tmp_path / "s.zarr", zarr_format)
    ds = open_reanalysis(path)
    _assert_canonical(ds)
    assert list(ds.data_vars) == ["z500", "z700", "z850", "t500", "t700", "t850", "t2m"]
    assert ds["z500"].dims == ("time", "latitude", "longitude")
    assert ds["latitude"].values[0] == pytest.approx(87.1875)
    assert ds["latitude"].values[-1] == pytest.approx(-87.1875)
    # every value equals the analytic field at its (new) coordinates
    la, lo = np.meshgrid(ds["latitude"].values, ds["longitude"].values, indexing="ij")
    for k in range(ds.sizes["time"]):
        np.testing.assert_allclose(ds["z850"].values[k], z_value(850, la, lo, k), rtol=1e-6)
        np.testing.assert_allclose(ds["t2m"].values[k], t2m_value(la, lo, k), rtol=1e-6)
    # CF attributes kept (store's units) and completed from the lexicon
    assert ds["z500"].attrs["units"] == "m2 s-2"
    assert ds["z500"].attrs["long_name"] == "Geopotential at 500 hPa"
    assert ds["t2m"].attrs["long_name"] == "2 metre temperature"
    assert ds["t850"].attrs["standard_name"] == "air_temperature"
    # the time-invariant land-sea mask became a coordinate, not a channel
    assert "lsm" in ds.coords and "lsm" not in ds.data_vars
    np.testing.assert_array_equal(ds["lsm"].values, (la > 0).astype(np.float32))


def test_selection_by_alias_level_and_time(wb2_store: Path) -> None:
    ds = open_reanalysis(wb2_store, variables=["geopotential_500", "2t", "temperature"], levels=[850, 500])
    assert list(ds.data_vars) == ["z500", "t2m", "t500", "t850"]
    ds = open_reanalysis(wb2_store, variables="z_850", time="2000-01-01T06")
    assert ds.sizes["time"] == 1 and list(ds.data_vars) == ["z850"]
    ds = open_reanalysis(wb2_store, time=slice("2000-01-01T06", "2000-01-01T12"))
    assert list(ds["time"].values) == list(pd.date_range("2000-01-01T06", periods=2, freq="6h").values)
    ds = open_reanalysis(wb2_store, time=[np.datetime64("2000-01-01T18"), "2000-01-01T00"])
    assert ds.sizes["time"] == 2
    ds = open_reanalysis(wb2_store, time=pd.Timestamp("2000-01-01T12"), variables=["z700"])
    la, lo = np.meshgrid(ds["latitude"].values, ds["longitude"].values, indexing="ij")
    np.testing.assert_allclose(ds["z700"].values[0], z_value(700, la, lo, 2), rtol=1e-6)


def test_negative_longitudes_are_wrapped_and_sorted(tmp_path: Path) -> None:
    path = write(
        wb2_dataset(lon_start=-180.0, coord_dtype="float32", level_dtype="int32"), tmp_path / "neg.zarr"
    )
    ds = open_reanalysis(path, variables=["z500"])
    _assert_canonical(ds)
    assert ds["longitude"].dtype == np.float64 and ds["longitude"].values[0] == 0.0
    la, lo = np.meshgrid(ds["latitude"].values, ds["longitude"].values, indexing="ij")
    lo_src = np.where(lo >= 180.0, lo - 360.0, lo)  # the original longitude of each column
    np.testing.assert_allclose(ds["z500"].values[1], z_value(500, la, lo_src, 1), rtol=1e-6)


def test_quarter_degree_with_poles(tmp_path: Path) -> None:
    times = pd.date_range("2020-01-01", periods=2, freq="6h")
    src = wb2_dataset(nlat=721, nlon=1440, poles=True, times=times, levels=(500,))
    path = write(src[["2m_temperature", "geopotential"]], tmp_path / "q.zarr")
    ds = open_reanalysis(path, variables=["t2m", "z500"])
    _assert_canonical(ds)
    assert ds.sizes["latitude"] == 721 and ds.sizes["longitude"] == 1440
    assert ds["latitude"].values[0] == 90.0 and ds["latitude"].values[-1] == -90.0
    # spot values at named places survive the flip: (lat, lon) -> analytic value
    for lat, lon in [(90.0, 0.0), (-90.0, 359.75), (51.5, 0.0), (-33.75, 151.25)]:
        got = float(ds["t2m"].sel(latitude=lat, longitude=lon).isel(time=1))
        assert got == pytest.approx(t2m_value(np.array(lat), np.array(lon), 1), rel=1e-6)
    # the global mean with cell-bound weights matches the analytic integral of the linear field
    w = area_weights(ds["latitude"].values)
    gm = float((ds["t2m"].isel(time=0) * xr.DataArray(w, dims="latitude")).mean())
    # mean of 0.25*lat over the sphere is 0; mean of longitude over the grid is 179.875
    assert gm == pytest.approx(280.0 - 0.001 * 179.875, abs=1e-3)


def test_number_dim_and_member_selection(tmp_path: Path) -> None:
    base = wb2_dataset(levels=(500,))
    ens = xr.concat([base + m for m in range(3)], dim=xr.DataArray([0, 1, 2], dims="member", name="member"))
    path = write(ens.transpose("time", "member", ...), tmp_path / "ens.zarr")
    ds = open_reanalysis(path, variables=["z500"])
    assert ds["z500"].dims == ("time", "number", "latitude", "longitude")
    one = open_reanalysis(path, variables=["z500"], member=2)
    assert one["z500"].dims == ("time", "latitude", "longitude")
    np.testing.assert_allclose(one["z500"].values, ds["z500"].sel(number=0).values + 2, rtol=1e-6)
    with pytest.raises(UserError, match="member 7 not in the store"):
        open_reanalysis(path, member=7)


def test_forecast_layout(tmp_path: Path) -> None:
    base = wb2_dataset(levels=(500,))
    fc = xr.concat([base, base + 1.0], dim=pd.TimedeltaIndex(["0h", "6h"], name="prediction_timedelta"))
    fc = fc.expand_dims(number=[0, 1]).transpose("time", "number", "prediction_timedelta", ...)
    # the pipeline's store layout: member coordinates and a per-(init, member) status array
    fc = fc.assign_coords(checkpoint=("number", np.array([0, 3])), sign=("number", np.array([1, -1])))
    fc["nonfinite_step"] = (("time", "number"), np.full((4, 2), -1, np.int32))
    path = write(fc, tmp_path / "fc.zarr")
    ds = open_forecast_store(path)
    assert ds["z500"].dims == ("time", "number", "prediction_timedelta", "latitude", "longitude")
    assert list(ds["checkpoint"].values) == [0, 3] and list(ds["sign"].values) == [1, -1]
    assert ds["nonfinite_step"].dims == ("time", "number") and "nonfinite_step" not in ds.data_vars
    _assert_canonical(ds)
    with pytest.raises(UserError, match="forecast store"):
        open_reanalysis(path)
    an = open_reanalysis(path, lead="6h", member=0, variables=["z500"])
    # time becomes the valid time: init + 6 h
    assert pd.Timestamp(an["time"].values[0]) == pd.Timestamp("2000-01-01T06")
    np.testing.assert_allclose(an["z500"].values, ds["z500"].isel(number=0, prediction_timedelta=1).values)


def test_in_memory_dataset_with_cf_dim_names() -> None:
    ds = wb2_dataset(levels=(850,)).rename({"latitude": "lat", "longitude": "lon", "level": "pressure_level"})
    out = open_reanalysis(ds, variables=["t850"])
    _assert_canonical(out)
    assert list(out.data_vars) == ["t850"]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"variables": ["foo"]},
            r"unknown variable 'foo' \(the store has: z500, z700, z850, t500, t700, t850, t2m\)",
        ),
        ({"variables": ["q700"]}, r"unknown variable 'q700'"),
        ({"variables": ["z300"]}, r"needs level 300 hPa.*z levels: 500, 700, 850"),
        ({"levels": [1000]}, r"level 1000 hPa not in the store \(levels: 500, 700, 850 hPa\)"),
        (
            {"time": slice("2030-01-01", "2030-02-01")},
            r"no data for time .*store covers 2000-01-01T00:00:00 to 2000-01-01T18:00:00, 4 times",
        ),
        ({"time": ["2000-01-01T03"]}, r"1 requested time\(s\) not in the store, first 2000-01-01T03:00:00"),
        ({"time": 3.5}, r"cannot select time"),
    ],
)
def test_clear_errors(wb2_store: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as info:
        open_reanalysis(wb2_store, **kwargs)
    assert "\n" not in str(info.value)


def test_store_errors(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="is not a zarr store"):
        open_reanalysis(tmp_path / "plain")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(UserError, match="is not a zarr store"):
        open_reanalysis(tmp_path / "file.zarr")
    xr.Dataset().to_zarr(tmp_path / "empty.zarr")
    with pytest.raises(UserError, match="is empty"):
        open_reanalysis(tmp_path / "empty.zarr")
    with pytest.raises(UserError, match="no catalog entry of that name"):
        open_reanalysis(tmp_path / "missing.zarr")
    times = pd.DatetimeIndex(["2000-01-01T00", "2000-01-01T06", "2000-01-01T06"])
    dup = write(wb2_dataset(times=times, levels=(500,)), tmp_path / "dup.zarr")
    with pytest.raises(UserError, match=r"1 duplicate time\(s\) in the store, first 2000-01-01T06"):
        open_reanalysis(dup)
    nolat = xr.Dataset(
        {"x": (("time", "y"), np.zeros((1, 2)))}, coords={"time": [np.datetime64("2000-01-01")]}
    )
    with pytest.raises(UserError, match="no latitude dimension"):
        open_reanalysis(nolat)


def test_builtin_source_is_resolved_lazily(wb2_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import data_catalog.readers as readers

    calls = []

    def fake(name: str) -> str:
        calls.append(name)
        return str(wb2_store)

    monkeypatch.setattr(readers, "_builtin_store", fake)
    ds = open_reanalysis("builtin:sphere-swe", variables=["z500"])
    assert calls == ["sphere-swe"] and list(ds.data_vars) == ["z500"]
    ds = open_reanalysis("sphere-swe", variables=["z500"])  # through the default catalog
    assert calls == ["sphere-swe", "sphere-swe"]


def test_unknown_builtin() -> None:
    with pytest.raises(UserError, match="unknown builtin store 'builtin:nope'"):
        open_reanalysis("builtin:nope")


def test_embedded_world_layout(tmp_path: Path) -> None:
    """The layout data_catalog.world writes (canonical names, ascending latitude, static orography)."""
    src = wb2_dataset(levels=(500,))
    lay = xr.Dataset(
        {
            "z500": src["geopotential"].sel(level=500, drop=True),
            "vo500": (src["temperature"].sel(level=500, drop=True) * 1e-9)
            .drop_attrs()
            .assign_attrs(units="s-1"),
            "u500": (src["2m_temperature"] - 280.0).drop_attrs().assign_attrs(units="m s-1"),
            "v500": (src["2m_temperature"] - 281.0).drop_attrs().assign_attrs(units="m s-1"),
            "orography": (("latitude", "longitude"), np.ones((32, 64), np.float32), {"units": "m"}),
        },
        attrs={"title": "world"},
    )
    path = tmp_path / "world-like.zarr"
    lay.to_zarr(
        path, zarr_format=3, consolidated=False, encoding={"time": {"units": "hours since 2000-01-01"}}
    )
    ds = open_reanalysis(path)
    assert list(ds.data_vars) == ["z500", "u500", "v500", "vo500"]
    assert "orography" in ds.coords and ds["orography"].attrs["units"] == "m"
    assert ds["vo500"].attrs["long_name"] == "Relative vorticity at 500 hPa"
    assert ds["u500"].attrs["long_name"] == "U component of wind at 500 hPa"
    assert ds.attrs["title"] == "world"
    la, lo = np.meshgrid(ds["latitude"].values, ds["longitude"].values, indexing="ij")
    np.testing.assert_allclose(ds["z500"].values[3], z_value(500, la, lo, 3), rtol=1e-6)
