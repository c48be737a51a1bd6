"""Reference forecasts built from the truth, in the WeatherBench2 forecast layout so that the same
scorer handles them: dims ``(time, number, prediction_timedelta, latitude, longitude)``.

* :func:`climatology`: deterministic; the mean of the truth over a reference period for the valid
  time's day of year and hour (one member).
* :func:`probabilistic_climatology`: the truth at the valid time's calendar date and hour in each other
  reference year, one member per year (Feb 29 falls back to Feb 28 in common years).
* :func:`persistence`: the analysis at the initialisation time, for every lead.
* :func:`deterministic_member`: one member of any forecast store (e.g. a single checkpoint's
  unperturbed run).

All are lazy (dask) where the truth is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from data_catalog.errors import UserError
from evaluation.score import normalize_forecast, normalize_truth

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "canonical_baseline_name",
    "climatology",
    "deterministic_member",
    "make_baseline",
    "persistence",
    "probabilistic_climatology",
    "reference_years",
]

BASELINES = ("climatology", "probabilistic_climatology", "persistence")
_ALIASES = {
    "climatology": "climatology",
    "clim": "climatology",
    "probclim": "probabilistic_climatology",
    "probabilistic_climatology": "probabilistic_climatology",
    "probabilistic-climatology": "probabilistic_climatology",
    "persistence": "persistence",
}


def canonical_baseline_name(name: str) -> str:
    """``probclim`` -> ``probabilistic_climatology`` etc.; UserError for unknown names."""
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        raise UserError(
            f"unknown baseline {name!r}; choose from climatology, probclim, persistence"
        ) from None


def _valid_times(forecast: xr.Dataset) -> np.ndarray:
    return forecast["time"].values[:, None] + forecast["prediction_timedelta"].values[None, :]


def reference_years(
    truth: xr.Dataset, forecast: xr.Dataset | None = None, reference: tuple[Any, Any] | None = None
) -> list[int]:
    """Years of the reference period: ``reference`` (start, end) if given, else the truth's years
    without the forecast's valid years (all truth years if that leaves none)."""
    t = pd.DatetimeIndex(truth["time"].values)
    if reference is not None:
        start, end = pd.Timestamp(reference[0]), pd.Timestamp(reference[1])
        years = sorted({y for y in t.year if start.year <= y <= end.year})
    else:
        years = sorted(set(t.year))
        if forecast is not None:
            vy = set(pd.DatetimeIndex(_valid_times(forecast).ravel()).year)
            rest = [y for y in years if y not in vy]
            if rest:
                years = rest
            else:
                log.warning("no truth year outside the forecast's valid years: the climatology is in-sample")
    if not years:
        raise UserError("the reference period holds no truth data")
    return years


def _as_forecast(per_lead: list[xr.Dataset], forecast: xr.Dataset, member_dim: bool) -> xr.Dataset:
    leads = forecast["prediction_timedelta"]
    out = xr.concat(
        per_lead, dim=xr.DataArray(leads.values, dims="prediction_timedelta", name="prediction_timedelta")
    )
    if not member_dim:
        out = out.expand_dims(number=[0])
    return out.transpose("time", "number", "prediction_timedelta", "latitude", "longitude")


def climatology(
    truth: xr.Dataset,
    forecast: xr.Dataset,
    variables: Sequence[str] | None = None,
    reference: tuple[Any, Any] | None = None,
) -> xr.Dataset:
    """Deterministic day-of-year x hour climatology at every valid time of ``forecast``.

    ``clim(d, h) = mean{ truth(t) : t in reference period, dayofyear(t) = d, hour(t) = h }``, with
    ``dayofyear`` counted in a 365-day calendar (Feb 29 joins Feb 28).
    """
    truth = normalize_truth(truth)
    forecast = normalize_forecast(forecast)
    variables = list(variables or [str(v) for v in forecast.data_vars if v in truth.data_vars])
    years = reference_years(truth, forecast, reference)
    t = pd.DatetimeIndex(truth["time"].values)
    ref = truth[variables].isel(time=np.flatnonzero(t.year.isin(years)))
    ref_keys = _calendar_key(pd.DatetimeIndex(ref["time"].values))
    valid = _valid_times(forecast)
    keys = _calendar_key(pd.DatetimeIndex(valid.ravel())).reshape(valid.shape)
    needed = np.unique(keys)
    means = []
    for k in needed:  # only the calendar slots the forecast needs, not the whole year
        idx = np.flatnonzero(ref_keys == k)
        if idx.size == 0:
            raise UserError(
                f"the climatology's reference period lacks day-of-year {k // 100} at {k % 100:02d} h"
            )
        means.append(ref.isel(time=idx).mean("time"))
    clim = xr.concat(means, dim="calkey").assign_coords(calkey=needed)
    per_lead = []
    for j in range(valid.shape[1]):
        sel = clim.sel(calkey=xr.DataArray(keys[:, j], dims="time")).drop_vars("calkey")
        per_lead.append(sel.assign_coords(time=forecast["time"].values))
    out = _as_forecast(per_lead, forecast, member_dim=False)
    out.attrs.update(baseline="climatology", reference_years=f"{years[0]}-{years[-1]}")
    return out


def _calendar_key(t: pd.DatetimeIndex) -> np.ndarray:
    """``100 * dayofyear + hour`` in a 365-day calendar (Feb 29 -> Feb 28)."""
    doy = np.asarray(t.day_of_year, dtype=np.int64).copy()
    doy[np.asarray(t.is_leap_year) & (doy >= 60)] -= 1  # Feb 29 joins Feb 28, later days shift back
    return (doy * 100 + t.hour.values).astype(np.int64)


def _same_date(ts: pd.Timestamp, year: int) -> pd.Timestamp:
    if ts.month == 2 and ts.day == 29 and not pd.Timestamp(year=year, month=1, day=1).is_leap_year:
        return ts.replace(year=year, day=28)
    return ts.replace(year=year)


def probabilistic_climatology(
    truth: xr.Dataset,
    forecast: xr.Dataset,
    variables: Sequence[str] | None = None,
    reference: tuple[Any, Any] | None = None,
) -> xr.Dataset:
    """Ensemble of the truth at the valid date and hour in the other reference years.

    Member ``k`` at valid time ``v`` is ``truth(v with year Y_k)`` for the reference years ``Y != year(v)``,
    keeping the first ``M`` of them, ``M`` the smallest such count over the valid times (so every valid
    time has the same number of members). The ``number`` coordinate carries ``year`` of member 0's
    first valid time for information.
    """
    truth = normalize_truth(truth)
    forecast = normalize_forecast(forecast)
    variables = list(variables or [str(v) for v in forecast.data_vars if v in truth.data_vars])
    years = reference_years(truth, forecast, reference)
    valid = _valid_times(forecast)
    vyears = pd.DatetimeIndex(valid.ravel()).year
    n_members = min(len([y for y in years if y != vy]) for vy in set(vyears))
    if n_members < 1:
        raise UserError("probabilistic climatology needs at least one reference year besides the valid year")
    tt = pd.DatetimeIndex(truth["time"].values)
    per_lead = []
    for j in range(valid.shape[1]):
        idx = np.empty((valid.shape[0], n_members), dtype="datetime64[ns]")
        for i in range(valid.shape[0]):
            v = pd.Timestamp(valid[i, j])
            ys = [y for y in years if y != v.year][:n_members]
            idx[i] = [_same_date(v, y).to_datetime64() for y in ys]
        miss = ~pd.DatetimeIndex(idx.ravel()).isin(tt)
        if miss.any():
            raise UserError(
                f"truth lacks {pd.Timestamp(idx.ravel()[miss][0]):%Y-%m-%dT%H:%M} needed by the probabilistic climatology"
            )
        sel = (
            truth[variables]
            .sel(time=xr.DataArray(idx, dims=("time", "number")))
            .drop_vars("time", errors="ignore")
        )
        per_lead.append(sel.assign_coords(time=forecast["time"].values, number=np.arange(n_members)))
    out = _as_forecast(per_lead, forecast, member_dim=True)
    out.attrs.update(baseline="probabilistic_climatology", reference_years=",".join(map(str, years)))
    return out


def persistence(
    truth: xr.Dataset, forecast: xr.Dataset, variables: Sequence[str] | None = None
) -> xr.Dataset:
    """The analysis at the initialisation time for every lead: ``x(init + lead) = truth(init)``."""
    truth = normalize_truth(truth)
    forecast = normalize_forecast(forecast)
    variables = list(variables or [str(v) for v in forecast.data_vars if v in truth.data_vars])
    inits = forecast["time"].values
    miss = ~pd.DatetimeIndex(inits).isin(pd.DatetimeIndex(truth["time"].values))
    if miss.any():
        raise UserError(
            f"truth lacks the initial time {pd.Timestamp(inits[miss][0]):%Y-%m-%dT%H:%M} needed by persistence"
        )
    at_init = truth[variables].sel(time=inits)
    out = _as_forecast([at_init] * forecast.sizes["prediction_timedelta"], forecast, member_dim=False)
    out.attrs.update(baseline="persistence")
    return out


def deterministic_member(forecast: xr.Dataset, number: int = 0) -> xr.Dataset:
    """One member of a forecast (e.g. the unperturbed run of a single checkpoint) as a one-member
    forecast; UserError if ``number`` is not a member."""
    forecast = normalize_forecast(forecast)
    if number not in forecast["number"].values:
        raise UserError(
            f"member {number} not in the forecast (numbers {forecast['number'].values.min()}..{forecast['number'].values.max()})"
        )
    out = forecast.sel(number=[number])
    out.attrs.update(baseline=f"member {number}")
    return out


def make_baseline(
    name: str,
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str] | None = None,
    reference: tuple[Any, Any] | None = None,
) -> xr.Dataset:
    """Build a baseline by name (``climatology``, ``probclim``, ``persistence``) for ``forecast``'s
    inits and leads."""
    key = canonical_baseline_name(name)
    if key == "climatology":
        return climatology(truth, forecast, variables, reference)
    if key == "probabilistic_climatology":
        return probabilistic_climatology(truth, forecast, variables, reference)
    return persistence(truth, forecast, variables)
