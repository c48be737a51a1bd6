"""Baselines in the forecast layout: persistence, climatology, probabilistic climatology, one member."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data_catalog.errors import UserError
from evaluation import score_forecast
from evaluation.baselines import (
    _calendar_key,
    climatology,
    deterministic_member,
    persistence,
    probabilistic_climatology,
)

LAT = np.linspace(-78.75, 78.75, 8)
LON = np.arange(16) * 22.5
YEARS = (2016, 2017, 2018, 2019)


@pytest.fixture(scope="module")
def truth() -> xr.Dataset:
    rng = np.random.default_rng(3)
    times = pd.DatetimeIndex(
        np.concatenate([pd.date_range(f"{y}-01-01", f"{y}-01-04T18", freq="6h").values for y in YEARS])
    )
    z = (
        54000
        + 300 * rng.standard_normal((len(times), 8, 16))
        + 10 * (times.year.values - 2016)[:, None, None]
    )
    return xr.Dataset(
        {"z500": (("time", "latitude", "longitude"), z.astype("f4"), {"units": "m2 s-2"})},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )


@pytest.fixture(scope="module")
def forecast(truth: xr.Dataset) -> xr.Dataset:
    rng = np.random.default_rng(4)
    inits = pd.to_datetime(["2019-01-01T00", "2019-01-01T12"])
    leads = pd.to_timedelta([0, 6, 24], unit="h")
    x = 54000 + 300 * rng.standard_normal((2, 5, 3, 8, 16))
    return xr.Dataset(
        {"z500": (("time", "number", "prediction_timedelta", "latitude", "longitude"), x.astype("f4"))},
        coords={
            "time": inits,
            "number": np.arange(5),
            "prediction_timedelta": leads,
            "latitude": LAT,
            "longitude": LON,
        },
    )


def _truth_desc(truth: xr.Dataset) -> xr.Dataset:
    return truth.isel(latitude=slice(None, None, -1))


def test_persistence(truth: xr.Dataset, forecast: xr.Dataset) -> None:
    p = persistence(truth, forecast)
    assert p.z500.dims == ("time", "number", "prediction_timedelta", "latitude", "longitude")
    t = _truth_desc(truth)
    for i, t0 in enumerate(forecast.time.values):
        for j in range(3):
            np.testing.assert_array_equal(p.z500.values[i, 0, j], t.z500.sel(time=t0).values)
    s = score_forecast(forecast, truth, baselines=["persistence"], regions=["global"]).sel(
        forecast="persistence"
    )
    np.testing.assert_array_equal(s.crps.isel(prediction_timedelta=0).values, 0.0)
    np.testing.assert_array_equal(s.rmse.isel(prediction_timedelta=0).values, 0.0)
    assert (s.rmse.isel(prediction_timedelta=2).values > 100).all()


def test_climatology_is_mean_by_day_of_year_and_hour(truth: xr.Dataset, forecast: xr.Dataset) -> None:
    c = climatology(truth, forecast)
    t = _truth_desc(truth)
    for i, t0 in enumerate(forecast.time.values):
        for j, lead in enumerate(forecast.prediction_timedelta.values):
            v = pd.Timestamp(t0 + lead)
            same = [v.replace(year=y) for y in (2016, 2017, 2018)]  # 2019 holds the valid times: excluded
            exp = t.z500.sel(time=same).values.astype(np.float64).mean(0)
            np.testing.assert_allclose(c.z500.values[i, 0, j], exp, rtol=1e-6)
    # an explicit reference period that includes the valid year
    c_all = climatology(truth, forecast, reference=("2016-01-01", "2019-12-31"))
    v = pd.Timestamp("2019-01-02T00")
    exp = t.z500.sel(time=[v.replace(year=y) for y in YEARS]).values.astype(np.float64).mean(0)
    np.testing.assert_allclose(c_all.z500.values[0, 0, 2], exp, rtol=1e-6)


def test_calendar_key_365_day() -> None:
    k = _calendar_key(pd.to_datetime(["2016-02-28T06", "2016-02-29T06", "2016-03-01T06", "2017-03-01T06"]))
    assert k[0] == k[1] == 59 * 100 + 6
    assert k[2] == k[3] == 60 * 100 + 6


def test_probabilistic_climatology_members_are_other_years(truth: xr.Dataset, forecast: xr.Dataset) -> None:
    pc = probabilistic_climatology(truth, forecast, reference=("2016", "2019"))
    assert pc.sizes["number"] == 3  # 2019 (the valid year) is left out of the four reference years
    t = _truth_desc(truth)
    for i, t0 in enumerate(forecast.time.values):
        for j, lead in enumerate(forecast.prediction_timedelta.values):
            v = pd.Timestamp(t0 + lead)
            for k, y in enumerate((2016, 2017, 2018)):
                np.testing.assert_array_equal(
                    pc.z500.values[i, k, j], t.z500.sel(time=v.replace(year=y)).values
                )
    s = score_forecast(forecast, truth, baselines=["probclim", "climatology"], regions=["global"])
    assert list(s.forecast.values) == ["forecast", "probabilistic_climatology", "climatology"]
    assert list(s.n_members.values) == [5, 3, 1]


def test_deterministic_member_and_errors(truth: xr.Dataset, forecast: xr.Dataset) -> None:
    one = deterministic_member(forecast, 2)
    assert one.sizes["number"] == 1
    np.testing.assert_array_equal(
        one.z500.values[:, 0], forecast.z500.values[:, 2][:, :, ::-1]
    )  # lat flipped
    s = score_forecast(one, truth, regions=["global"]).sel(forecast="forecast")
    np.testing.assert_allclose(s.crps.values, s.mae.values, rtol=1e-12)
    with pytest.raises(UserError, match="member 7"):
        deterministic_member(forecast, 7)
    with pytest.raises(UserError, match="unknown baseline"):
        score_forecast(forecast, truth, baselines=["analogues"])
    late = forecast.assign_coords(time=pd.to_datetime(["2019-01-04T00", "2019-01-04T12"]))
    with pytest.raises(UserError, match="valid times"):
        score_forecast(late, truth, baselines=["persistence"])
    short = truth.sel(time=truth.time.dt.year != 2017)
    early = forecast.assign_coords(time=pd.to_datetime(["2019-01-01T00", "2019-01-01T06"]))
    pc = probabilistic_climatology(short, early, reference=("2016", "2019"))
    assert pc.sizes["number"] == 2
