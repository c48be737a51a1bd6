"""Scorecards: skill of a forecast relative to a baseline, per variable x lead.

For a negatively oriented score ``S`` (lower is better: CRPS, RMSE, MAE, Brier):

* ``kind="skill"``: ``skill = 1 - S_forecast / S_baseline`` (1 perfect, 0 no better than the baseline,
  negative worse); e.g. the CRPS skill score (CRPSS) against climatology.
* ``kind="percent"``: ``100 (S_forecast - S_baseline) / S_baseline``, the percentage difference
  WeatherBench2 scorecards show (negative = better than the baseline).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import xarray as xr

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["NEGATIVE_METRICS", "relative_score", "scorecard"]

#: Scores where lower is better, the ones a scorecard can compare.
NEGATIVE_METRICS = ("crps", "rmse", "mae", "brier")


def _select(scores: xr.Dataset, metric: str, label: str | None, region: str, what: str) -> xr.DataArray:
    if metric not in scores:
        raise UserError(f"{what} scores have no metric {metric!r}")
    da = scores[metric]
    if "forecast" in da.dims:
        labels = [str(v) for v in da["forecast"].values]
        if label is None:
            label = labels[0]
        if label not in labels:
            raise UserError(f"{what} {label!r} not among the scored forecasts: {', '.join(labels)}")
        da = da.sel(forecast=label, drop=True)
    if "region" in da.dims:
        regions = [str(v) for v in da["region"].values]
        if region not in regions:
            raise UserError(f"region {region!r} not scored; scored: {', '.join(regions)}")
        da = da.sel(region=region, drop=True)
    if "time" in da.dims:
        da = da.mean("time")
    return da


def relative_score(
    scores: xr.Dataset,
    baseline: str | xr.Dataset = "climatology",
    metric: str = "crps",
    forecast: str | None = None,
    region: str = "global",
    kind: str = "skill",
    baseline_forecast: str | None = None,
) -> xr.DataArray:
    """Relative score ``(variable, prediction_timedelta[, threshold])`` of ``forecast`` against a baseline.

    ``baseline`` is a label on the ``forecast`` dim of ``scores`` or another scores Dataset (whose
    ``baseline_forecast`` label, default its first, is used). Leads are matched by value (intersection).
    """
    if metric not in NEGATIVE_METRICS:
        raise UserError(f"scorecards compare scores where lower is better: {', '.join(NEGATIVE_METRICS)}")
    if kind not in ("skill", "percent"):
        raise UserError(f"scorecard kind must be 'skill' or 'percent', got {kind!r}")
    fc = _select(scores, metric, forecast, region, "forecast")
    if isinstance(baseline, xr.Dataset):
        base = _select(baseline, metric, baseline_forecast, region, "baseline")
    else:
        base = _select(scores, metric, baseline, region, "baseline")
    fc, base = xr.align(fc, base, join="inner")
    if fc.sizes.get("prediction_timedelta", 1) == 0 or fc.sizes.get("variable", 1) == 0:
        raise UserError("forecast and baseline share no variable and lead")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 1.0 - fc / base if kind == "skill" else 100.0 * (fc - base) / base
    rel = rel.where(np.isfinite(rel))
    rel.name = f"{metric}_{kind}"
    rel.attrs = {
        "long_name": f"{metric.upper()} skill score 1 - S/S_ref"
        if kind == "skill"
        else f"{metric.upper()} difference (%)",
        "baseline": baseline if isinstance(baseline, str) else (baseline_forecast or "other scores"),
        "region": region,
    }
    return rel


def scorecard(
    scores: xr.Dataset,
    baseline: str | xr.Dataset = "climatology",
    metric: str = "crps",
    forecast: str | None = None,
    region: str = "global",
    kind: str = "skill",
    baseline_forecast: str | None = None,
) -> pd.DataFrame:
    """Scorecard table: rows = variables, columns = lead time in hours, values from
    :func:`relative_score` (``1 - S/S_ref`` or percentage difference)."""
    rel = relative_score(scores, baseline, metric, forecast, region, kind, baseline_forecast)
    if "threshold" in rel.dims:
        rel = rel.isel(threshold=0)
    hours = (rel["prediction_timedelta"].values / np.timedelta64(1, "h")).astype(float)
    df = pd.DataFrame(
        rel.transpose("variable", "prediction_timedelta").values,
        index=pd.Index([str(v) for v in rel["variable"].values], name="variable"),
        columns=pd.Index(hours, name="lead_hours"),
    )
    df.attrs.update(rel.attrs, metric=metric, kind=kind)
    return df
