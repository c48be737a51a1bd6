"""Property: whatever the input order of latitude and longitude (ascending, descending, shuffled,
shifted by -180 or rolled), normalisation gives the same canonical arrays."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from data_catalog import open_reanalysis
from tests.data_catalog.dc_stores import wb2_dataset

BASE = wb2_dataset(nlat=8, nlon=16, levels=(500, 850))
REF = open_reanalysis(BASE).compute()


@settings(max_examples=25, deadline=None)
@given(
    lat_perm=st.permutations(range(8)),
    roll=st.integers(0, 15),
    shift=st.sampled_from([0.0, -360.0, 360.0]),
    half_negative=st.booleans(),
)
def test_any_input_order_gives_the_same_canonical_form(
    lat_perm: list[int], roll: int, shift: float, half_negative: bool
) -> None:
    ds = BASE.isel(latitude=list(lat_perm)).roll(longitude=roll, roll_coords=True)
    lon = ds["longitude"].values + shift
    if half_negative:
        lon = np.where(lon % 360.0 >= 180.0, lon % 360.0 - 360.0, lon % 360.0)
    ds = ds.assign_coords(longitude=lon)
    out = open_reanalysis(ds).compute()
    xr.testing.assert_identical(out, REF)


@pytest.mark.parametrize("dim_names", [("lat", "lon"), ("latitude", "longitude")])
def test_cf_spellings(dim_names: tuple[str, str]) -> None:
    ds = BASE.rename({"latitude": dim_names[0], "longitude": dim_names[1], "level": "isobaricInhPa"})
    xr.testing.assert_identical(open_reanalysis(ds).compute(), REF)


def test_pressure_in_pa() -> None:
    ds = BASE.assign_coords(level=("level", BASE["level"].values * 100.0, {"units": "Pa"}))
    out = open_reanalysis(ds)
    assert list(out.data_vars)[:2] == ["z500", "z850"]
    np.testing.assert_array_equal(out["z850"].values, REF["z850"].values)


def test_file_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    BASE.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
    out = open_reanalysis(f"file://{tmp_path / 's.zarr'}", variables=["z500"])
    np.testing.assert_array_equal(out["z500"].values, REF["z500"].values)
