"""Figures of scores and ensembles: each function takes xarray objects and returns a matplotlib
``Figure`` (object-oriented API, no pyplot state, rendered with Agg when saved), usable from notebooks
and by :mod:`evaluation.report`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from data_catalog.errors import UserError
from evaluation.score import align_truth, normalize_forecast, normalize_truth

log = logging.getLogger(__name__)

__all__ = [
    "plot_efi_map",
    "plot_ensemble_maps",
    "plot_metric_vs_lead",
    "plot_plume",
    "plot_rank_histogram",
    "plot_reliability",
    "plot_scorecard",
    "plot_skill_spread",
    "plot_spectra",
]

_LABELS = {
    "crps": "CRPS",
    "rmse": "RMSE (ensemble mean)",
    "spread": "spread",
    "mae": "MAE",
    "spread_skill_ratio": "spread/skill ratio",
    "crps_spread_skill_ratio": "CRPS spread/skill ratio",
    "brier": "Brier score",
    "roc_auc": "ROC area",
}


def _hours(td: Any) -> np.ndarray:
    return np.asarray(td, dtype="timedelta64[ns]") / np.timedelta64(1, "h")


def _units(scores: xr.Dataset, variable: str) -> str:
    import json

    try:
        return str(json.loads(scores.attrs.get("units", "{}")).get(variable, ""))
    except ValueError:
        return ""


def _pick(scores: xr.Dataset, name: str, dim: str, value: Any) -> Any:
    if dim not in scores.dims:
        return value
    labels = [str(v) for v in scores[dim].values]
    if value is None:
        return labels[0]
    if str(value) not in labels:
        raise UserError(f"{dim} {value!r} not in the scores ({', '.join(labels)})")
    return value


def plot_scorecard(card: pd.DataFrame, title: str | None = None, vmax: float | None = None) -> Figure:
    """Heatmap of a :func:`evaluation.scorecard.scorecard` table (rows variables, columns lead hours);
    blue = better than the baseline, red = worse, values annotated."""
    kind = card.attrs.get("kind", "skill")
    vals = card.to_numpy(dtype=float)
    signed = vals if kind == "skill" else -vals  # positive = better in both kinds
    if vmax is not None:
        lim = float(vmax)
    else:
        lim = float(np.nanmax(np.abs(signed))) if np.isfinite(signed).any() else 1.0
    lim = lim if lim > 0 else 1.0
    fig = Figure(
        figsize=(1.0 + 0.7 * max(3, vals.shape[1]), 1.2 + 0.45 * max(2, vals.shape[0])), layout="constrained"
    )
    ax = fig.add_subplot()
    im = ax.imshow(signed, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(vals.shape[1]), [f"{h:g}" for h in card.columns])
    ax.set_yticks(range(vals.shape[0]), list(card.index))
    ax.set_xlabel("lead time (h)")
    fmt = "{:.2f}" if kind == "skill" else "{:+.1f}%"
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                ax.text(j, i, fmt.format(vals[i, j]), ha="center", va="center", fontsize=8)
    metric = str(card.attrs.get("metric", "crps")).upper()
    label = (
        f"{metric} skill (1 - S/S_ref)" if kind == "skill" else f"{metric} change vs baseline (sign flipped)"
    )
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(
        title
        or f"{metric} scorecard vs {card.attrs.get('baseline', 'baseline')} ({card.attrs.get('region', '')})"
    )
    return fig


def plot_metric_vs_lead(
    scores: xr.Dataset | dict[str, xr.Dataset],
    metric: str = "crps",
    variable: str | None = None,
    region: str = "global",
    forecasts: Sequence[str] | None = None,
) -> Figure:
    """A metric against lead time, one line per forecast (and baseline) on one axis.

    ``scores`` is a scores Dataset (lines = its ``forecast`` labels) or a mapping name -> scores.
    """
    sets = scores if isinstance(scores, dict) else {"": scores}
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    units = ""
    for prefix, ds in sets.items():
        if metric not in ds:
            raise UserError(f"scores have no metric {metric!r}")
        var = _pick(ds, metric, "variable", variable)
        units = units or _units(ds, var)
        da = ds[metric].sel(variable=var, region=_pick(ds, metric, "region", region))
        if "time" in da.dims:
            da = da.mean("time")
        labels = [str(v) for v in da["forecast"].values] if "forecast" in da.dims else [""]
        for lab in forecasts or labels:
            line = da.sel(forecast=lab) if "forecast" in da.dims else da
            name = " ".join(p for p in (prefix, lab) if p) or metric
            ax.plot(_hours(line["prediction_timedelta"].values), line.values, marker="o", label=name)
        variable = var
    ax.set_xlabel("lead time (h)")
    unit = "" if metric.endswith("ratio") or metric == "roc_auc" else (f" [{units}]" if units else "")
    ax.set_ylabel(f"{_LABELS.get(metric, metric)}{unit}")
    ax.set_title(f"{variable} {_LABELS.get(metric, metric)} ({region})")
    if metric.endswith("ratio"):
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_skill_spread(
    scores: xr.Dataset, variable: str | None = None, region: str = "global", forecast: str | None = None
) -> Figure:
    """Ensemble-mean RMSE and spread against lead time (a calibrated ensemble has spread ~ RMSE)."""
    var = _pick(scores, "rmse", "variable", variable)
    fc = _pick(scores, "rmse", "forecast", forecast)
    sel = {"variable": var, "region": region} | ({"forecast": fc} if "forecast" in scores.dims else {})
    ds = scores[["rmse", "spread"]].sel(sel)
    if "time" in ds.dims:
        ds = ds.mean("time")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    h = _hours(ds["prediction_timedelta"].values)
    ax.plot(h, ds.rmse.values, marker="o", label="RMSE of ensemble mean")
    ax.plot(h, ds.spread.values, marker="s", ls="--", label="spread")
    units = _units(scores, var)
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{var} [{units}]" if units else var)
    ax.set_title(f"{fc} {var}: skill and spread ({region})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_rank_histogram(
    scores: xr.Dataset,
    variable: str | None = None,
    region: str = "global",
    forecast: str | None = None,
    lead: int = -1,
) -> Figure:
    """Rank histogram (relative frequency of the truth's rank; flat = calibrated) at lead index ``lead``."""
    if "rank_histogram" not in scores:
        raise UserError("scores have no rank histogram")
    var = _pick(scores, "rank_histogram", "variable", variable)
    fc = _pick(scores, "rank_histogram", "forecast", forecast)
    sel = {"variable": var, "region": region} | ({"forecast": fc} if "forecast" in scores.dims else {})
    da = scores["rank_histogram"].sel(sel).isel(prediction_timedelta=lead)
    if "time" in da.dims:
        da = da.sum("time")
    counts = da.values
    if "n_members" in scores:
        nm = (
            scores["n_members"].sel(forecast=fc)
            if "forecast" in scores["n_members"].dims
            else scores["n_members"]
        )
        counts = counts[: int(nm) + 1]
    counts = np.nan_to_num(counts)
    freq = counts / max(counts.sum(), 1.0)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(len(freq)), freq, width=1.0, edgecolor="white")
    ax.axhline(1.0 / len(freq), color="k", ls="--", lw=0.8, label="flat (calibrated)")
    ax.set_xlabel("rank of truth among members")
    ax.set_ylabel("relative frequency")
    ax.set_title(f"{fc} {var} rank histogram, +{_hours(da['prediction_timedelta'].values):g} h ({region})")
    ax.legend(fontsize=8)
    return fig


def plot_reliability(
    scores: xr.Dataset,
    variable: str | None = None,
    region: str = "global",
    threshold: int = 0,
    forecast: str | None = None,
    lead: int = -1,
) -> Figure:
    """Reliability diagram (observed frequency against forecast probability) for the event
    ``value > threshold``, with the sharpness histogram underneath."""
    if "reliability_observed_frequency" not in scores:
        raise UserError("scores have no reliability data (score with thresholds)")
    var = _pick(scores, "", "variable", variable)
    fc = _pick(scores, "", "forecast", forecast)
    sel = {"variable": var, "region": region, "threshold": threshold} | (
        {"forecast": fc} if "forecast" in scores.dims else {}
    )
    ds = scores[
        ["reliability_forecast_probability", "reliability_observed_frequency", "reliability_weight"]
    ].sel(sel)
    ds = ds.isel(prediction_timedelta=lead)
    if "time" in ds.dims:
        ds = ds.mean("time")
    p = ds.reliability_forecast_probability.values
    o = ds.reliability_observed_frequency.values
    w = np.nan_to_num(ds.reliability_weight.values)
    ok = np.isfinite(p) & np.isfinite(o)
    fig = Figure(figsize=(5, 6), layout="constrained")
    ax, axh = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfect reliability")
    ax.plot(p[ok], o[ok], marker="o", label=str(fc))
    ax.set_ylabel("observed frequency")
    tv = (
        scores["threshold_value"].sel(variable=var, threshold=threshold).values
        if "threshold_value" in scores.coords
        else np.nan
    )
    ax.set_title(f"{var} > {float(tv):g}, +{_hours(ds['prediction_timedelta'].values):g} h ({region})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    lv = ds["prob_level"].values
    axh.bar(
        lv,
        w / max(w.sum(), 1e-300),
        width=(lv[1] - lv[0]) if len(lv) > 1 else 0.05,
        align="edge" if len(lv) > 21 else "center",
    )
    axh.set_xlabel("forecast probability")
    axh.set_ylabel("share")
    return fig


def _field(ds: xr.Dataset, variable: str) -> xr.DataArray:
    if variable not in ds.data_vars:
        raise UserError(f"no variable {variable!r}; have {', '.join(map(str, ds.data_vars))}")
    return ds[variable]


def plot_ensemble_maps(forecast: xr.Dataset, variable: str, init: int = 0, lead: int = -1) -> Figure:
    """Maps of the ensemble mean and the ensemble spread (member standard deviation) at one init/lead."""
    fc = normalize_forecast(forecast)
    x = _field(fc, variable).isel(time=init, prediction_timedelta=lead).load()
    mean = x.mean("number")
    spread = x.std("number", ddof=1) if x.sizes["number"] > 1 else xr.zeros_like(mean)
    lat, lon = fc["latitude"].values, fc["longitude"].values
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    units = str(fc[variable].attrs.get("units", ""))
    for ax, fld, title, cmap in (
        (axes[0], mean, "ensemble mean", "viridis"),
        (axes[1], spread, "spread (std)", "magma"),
    ):
        im = ax.pcolormesh(lon, lat, fld.values, cmap=cmap, shading="nearest")
        fig.colorbar(im, ax=ax, label=units, shrink=0.85)
        ax.set_title(f"{variable} {title}")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
    t0 = pd.Timestamp(fc["time"].values[init])
    fig.suptitle(
        f"init {t0:%Y-%m-%d %H:%M}, +{_hours(x['prediction_timedelta'].values):g} h, {fc.sizes['number']} members"
    )
    return fig


def plot_plume(
    forecast: xr.Dataset,
    truth: xr.Dataset | None,
    variable: str,
    latitude: float,
    longitude: float,
    init: int = 0,
) -> Figure:
    """Spaghetti/plume plot at the grid point nearest ``(latitude, longitude)``: every member against
    lead time, the ensemble mean, and the truth at the valid times where available."""
    fc = normalize_forecast(forecast)
    lon = float(np.mod(longitude, 360.0))
    x = _field(fc, variable).isel(time=init).sel(latitude=latitude, longitude=lon, method="nearest").load()
    h = _hours(x["prediction_timedelta"].values)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for k in range(x.sizes["number"]):
        ax.plot(h, x.isel(number=k).values, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(h, x.mean("number").values, color="tab:blue", lw=2, label="ensemble mean")
    if truth is not None:
        tr = normalize_truth(truth)
        valid = fc["time"].values[init] + x["prediction_timedelta"].values
        have = pd.DatetimeIndex(valid).isin(pd.DatetimeIndex(tr["time"].values))
        if have.any():
            y = (
                tr[variable]
                .sel(time=valid[have])
                .sel(latitude=latitude, longitude=lon, method="nearest")
                .load()
            )
            ax.plot(h[have], y.values, color="k", lw=2, marker="o", label="truth")
    units = str(fc[variable].attrs.get("units", ""))
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{variable} [{units}]" if units else variable)
    plat, plon = float(x["latitude"]), float(x["longitude"])
    t0 = pd.Timestamp(fc["time"].values[init])
    ax.set_title(f"{variable} plume at {plat:.2f}N {plon:.2f}E, init {t0:%Y-%m-%d %H:%M}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_spectra(
    forecast: xr.Dataset, truth: xr.Dataset, variable: str, init: int = 0, leads: Sequence[int] | None = None
) -> Figure:
    """Angular power spectra of the members (range), the ensemble mean and the truth, one panel per
    lead (HENS spectral test: members should follow the truth, the mean loses small scales)."""
    from evaluation.spectra import ensemble_spectra

    fc = normalize_forecast(forecast)
    tr = normalize_truth(truth)
    obs = align_truth(fc.isel(time=[init]), tr, [variable])[variable].isel(time=0)
    x = _field(fc, variable).isel(time=init)
    nl = fc.sizes["prediction_timedelta"]
    idx = list(leads) if leads is not None else sorted({0, nl // 2, nl - 1})
    fig = Figure(figsize=(4.2 * len(idx), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(idx), sharey=True))
    lat, lon = fc["latitude"].values, fc["longitude"].values
    for ax, j in zip(axes, idx, strict=True):
        xs = x.isel(prediction_timedelta=j).values.astype(np.float64)
        ys = obs.isel(prediction_timedelta=j).values.astype(np.float64)
        sp = ensemble_spectra(xs, ys, lat, lon, member_axis=0)
        deg = sp.degree[1:]
        lo, hi = sp.member_ratio_range
        mem = np.asarray(sp.member)[:, 1:]
        ax.fill_between(deg, mem.min(0), mem.max(0), color="tab:blue", alpha=0.3, label="members (range)")
        ax.loglog(deg, np.asarray(sp.ensemble_mean)[1:], color="tab:orange", label="ensemble mean")
        ax.loglog(deg, np.asarray(sp.truth)[1:], color="k", label="truth")
        ax.set_xlabel("total wavenumber l")
        ax.set_title(f"+{_hours(fc['prediction_timedelta'].values[j]):g} h")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"{variable} power")
    axes[0].legend(fontsize=8)
    return fig


def plot_efi_map(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: str,
    init: int = 0,
    lead: int = -1,
    n_quantiles: int = 101,
) -> Figure:
    """Extreme Forecast Index map (Lalaurette 2003) of one init/lead against the truth's climate
    (``n_quantiles`` quantiles of the truth over all its times at each point)."""
    from evaluation.extremes import efi

    fc = normalize_forecast(forecast)
    tr = normalize_truth(truth)
    x = _field(fc, variable).isel(time=init, prediction_timedelta=lead).load()
    clim = _field(tr, variable).load().quantile(np.linspace(0.0, 1.0, n_quantiles), dim="time")
    clim = clim.sel(latitude=x["latitude"], longitude=x["longitude"], method="nearest")
    e = efi(clim.values, x.values, quantile_axis=0, member_axis=0)
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    im = ax.pcolormesh(
        fc["longitude"].values, fc["latitude"].values, e, cmap="RdBu_r", vmin=-1, vmax=1, shading="nearest"
    )
    fig.colorbar(im, ax=ax, label="EFI")
    t0 = pd.Timestamp(fc["time"].values[init])
    ax.set_title(f"{variable} EFI, init {t0:%Y-%m-%d %H:%M}, +{_hours(x['prediction_timedelta'].values):g} h")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    return fig
