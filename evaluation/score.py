"""Score WeatherBench2-layout forecast stores against a truth dataset, chunk by chunk with dask.

The scorer never loads a whole ensemble: each variable becomes a dask graph of blocks of
``(init, member [all], lead, latitude band, longitude [all])``; every block is reduced at once to
area-weighted partial sums per region (``sum w``, ``sum w crps``, ``sum w (xbar - y)^2``, rank counts,
threshold contingency sums, ...), and the partial sums are added over latitude bands and inits.
Metrics are ratios of those sums, so the result does not depend on the chunking, and the same graph
runs on the threaded scheduler, on a ``dask.distributed.LocalCluster`` or on any distributed
``Client`` (e.g. a dask-jobqueue ``SLURMCluster``): whichever scheduler is active computes it.

Estimators (kernels in :mod:`evaluation.metrics`):

* ``crps``: fair CRPS (Ferro 2014) per point, area-weighted mean over the region, mean over inits;
  ``crps = crps_skill - crps_spread`` with ``crps_skill = E|X - y|`` and ``crps_spread = E|X - X'| / 2``.
* ``crps_spread_skill_ratio = 2 crps_spread / crps_skill = E|X - X'| / E|X - y|``: 1 for a perfect
  ensemble (exchangeable truth), below 1 for an under-dispersive one.
* ``rmse = sqrt(mean_inits mean_area (xbar - y)^2)`` (ensemble mean; mean over inits before the root, as
  WeatherBench2), ``spread = sqrt(mean_inits mean_area var)`` (unbiased member variance) and
  ``spread_skill_ratio = sqrt((M + 1) / M) spread / rmse`` (Fortin et al. 2014).
* ``rank_histogram``: counts of the rank of the truth among the members (ties broken at random from a
  recorded seed), unweighted point counts per region.
* per threshold (event ``value > threshold``): Brier score (fair when ``fair``), ROC hit and
  false-alarm rates at probability levels ``p >= k / M`` and their area ``roc_auc``, reliability-diagram
  sums per probability bin; all area-weighted.

A one-member (deterministic) forecast gets the standard CRPS, which is its mean absolute error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.lexicon import holds_level
from evaluation import metrics

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_REGIONS",
    "align_truth",
    "normalize_forecast",
    "normalize_truth",
    "open_forecast",
    "open_scores",
    "open_truth",
    "score_forecast",
    "scores_to_frame",
    "write_scores",
]

DEFAULT_REGIONS: tuple[str, ...] = ("global", "nhextratropics", "shextratropics", "tropics")
DEFAULT_METRICS: tuple[str, ...] = (
    "crps",
    "rmse",
    "spread",
    "spread_skill_ratio",
    "crps_spread_skill_ratio",
    "rank_histogram",
    "brier",
    "roc",
    "reliability",
)
#: Scalar metrics (dims variable x lead x region) that go into the tidy CSV.
SCALAR_METRICS: tuple[str, ...] = (
    "crps",
    "crps_skill",
    "crps_spread",
    "mae",
    "rmse",
    "spread",
    "spread_skill_ratio",
    "crps_spread_skill_ratio",
)
THRESHOLD_METRICS: tuple[str, ...] = ("brier", "roc_auc")

_SPATIAL = ("latitude", "longitude")
#: the scorer reads the verifying truth at once (not per lead, lazily) up to this size (it goes into the
#: task graph: kept small for distributed schedulers)
TRUTH_LOAD_MAX_BYTES = 32 * 2**20
_BASE_STATS = ("w", "crps", "skill", "spread", "se", "var", "ae")
_NB = len(_BASE_STATS)
_MAX_EXACT_LEVELS = 50  # up to this many members, one probability level per k/M


# ----------------------------------------------------------------------------------------------------
# opening and normalising inputs
# ----------------------------------------------------------------------------------------------------


def _canonical(name: str, level: Any = None) -> str:
    try:
        from data_catalog.lexicon import canonical_name
    except ImportError:  # pragma: no cover - lexicon is part of data_catalog
        return name if level is None else f"{name}{int(level)}"
    return canonical_name(name, level)


def _flatten_levels(ds: xr.Dataset) -> xr.Dataset:
    """Split variables with a ``level`` dim into canonical channels (``geopotential`` @500 -> ``z500``)
    and rename single-level long names (``2m_temperature`` -> ``t2m``)."""
    out: dict[str, xr.DataArray] = {}
    for name, var in ds.data_vars.items():
        if "level" in var.dims:
            for lev in var["level"].values:
                if not holds_level(var.attrs, lev):  # a wxens store's NaN fill for a level it lacks
                    continue
                lv = int(lev) if float(lev).is_integer() else float(lev)
                out[_canonical(str(name), lv)] = var.sel(level=lev, drop=True)
        else:
            out[_canonical(str(name))] = var
    res = xr.Dataset(out, attrs=ds.attrs)
    if "level" in res.coords:
        res = res.drop_vars("level")
    return res


def _canonical_grid(ds: xr.Dataset) -> xr.Dataset:
    """Latitude descending, longitude ascending in [0, 360) (the contract of docs/architecture.md)."""
    for old, new in (("lat", "latitude"), ("lon", "longitude")):
        if old in ds.dims and new not in ds.dims:
            ds = ds.rename({old: new})
    if "latitude" not in ds.dims or "longitude" not in ds.dims:
        raise UserError("dataset needs latitude and longitude dimensions")
    lon = np.mod(ds["longitude"].values.astype(np.float64), 360.0)
    if not np.array_equal(lon, ds["longitude"].values):
        ds = ds.assign_coords(longitude=lon)
    if np.any(np.diff(ds["longitude"].values) <= 0):
        ds = ds.sortby("longitude")
    lat = ds["latitude"].values
    if lat.size > 1 and lat[0] < lat[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    return ds


def normalize_forecast(ds: xr.Dataset) -> xr.Dataset:
    """Forecast in canonical form: channels as variables, dims ``(time, number, prediction_timedelta,
    latitude, longitude)``; a missing ``number`` dim becomes one member, a missing
    ``prediction_timedelta`` one lead of 0 h."""
    ds = _canonical_grid(_flatten_levels(ds))
    if "time" not in ds.dims:
        raise UserError("forecast has no 'time' (initialisation) dimension")
    if "prediction_timedelta" not in ds.dims:
        if "step" in ds.dims:
            ds = ds.rename({"step": "prediction_timedelta"})
        else:
            ds = ds.expand_dims(prediction_timedelta=[np.timedelta64(0, "ns")])
    if "number" not in ds.dims:
        if "member" in ds.dims:
            ds = ds.rename({"member": "number"})
        else:
            ds = ds.expand_dims(number=[0])
    dims = ("time", "number", "prediction_timedelta", *_SPATIAL)
    keep = {}
    for name, var in ds.data_vars.items():
        if set(var.dims) == set(dims):
            keep[name] = var.transpose(*dims)
        else:
            log.debug("forecast variable %s with dims %s skipped", name, var.dims)
    if not keep:
        raise UserError(f"forecast has no variable with dims {dims}")
    return xr.Dataset(keep, attrs=ds.attrs)


def normalize_truth(ds: xr.Dataset) -> xr.Dataset:
    """Truth in canonical form: channels as variables with dims ``(time, latitude, longitude)``."""
    ds = _canonical_grid(_flatten_levels(ds))
    if "time" not in ds.dims:
        raise UserError("truth has no 'time' dimension")
    dims = ("time", *_SPATIAL)
    keep = {n: v.transpose(*dims) for n, v in ds.data_vars.items() if set(v.dims) == set(dims)}
    if not keep:
        raise UserError(f"truth has no variable with dims {dims}")
    return xr.Dataset(keep, attrs=ds.attrs)


def open_forecast(forecast: xr.Dataset | str | os.PathLike[str]) -> xr.Dataset:
    """Open a WeatherBench2-layout forecast store lazily (``data_catalog.open_forecast_store``) unless
    it is already a Dataset."""
    if isinstance(forecast, xr.Dataset):
        return forecast
    path = Path(forecast)
    if not path.exists():
        raise UserError(f"forecast store not found: {path}")
    from data_catalog import open_forecast_store

    return open_forecast_store(path)


def open_truth(
    truth: xr.Dataset | str | os.PathLike[str],
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Open the verifying dataset lazily: a Dataset, a zarr path or a catalog source name
    (``data_catalog.open_reanalysis(source, variables)``)."""
    if isinstance(truth, xr.Dataset):
        return truth
    from data_catalog import open_reanalysis

    return open_reanalysis(str(truth), variables=list(variables) if variables else None)


def _grid_match(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """Truth on the forecast's grid (same points, tolerance 1e-6 deg) or a UserError."""
    fl, fo = forecast["latitude"].values, forecast["longitude"].values
    tl, to = truth["latitude"].values, truth["longitude"].values
    if tl.shape == fl.shape and to.shape == fo.shape and np.allclose(tl, fl) and np.allclose(to, fo):
        return truth.assign_coords(latitude=fl, longitude=fo)
    try:
        sub = truth.sel(latitude=fl, longitude=fo, method="nearest", tolerance=1e-6)
    except KeyError as exc:
        raise UserError(
            f"truth grid ({tl.size}x{to.size}) does not contain the forecast grid ({fl.size}x{fo.size}); "
            "regrid one of them first"
        ) from exc
    return sub.assign_coords(latitude=fl, longitude=fo)


def align_truth(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str],
    load_max_bytes: int = 0,
) -> xr.Dataset:
    """Verifying truth ``(time, prediction_timedelta, latitude, longitude)`` at valid time
    ``init + lead`` for every forecast init and lead.

    Lazy (one selection per lead), unless the truth at the distinct valid times takes at most
    ``load_max_bytes``: then those times are read at once and the result is in memory (the truth of an
    ensemble is ``1 / members`` of the forecast; this saves a selection graph per lead).
    """
    inits = forecast["time"].values
    leads = forecast["prediction_timedelta"].values
    valid = inits[:, None] + leads[None, :]
    tt = pd.DatetimeIndex(truth["time"].values)
    missing = ~pd.DatetimeIndex(valid.ravel()).isin(tt)
    if missing.any():
        first = pd.Timestamp(valid.ravel()[missing][0])
        raise UserError(
            f"truth lacks {int(missing.sum())} of {missing.size} valid times (first {first:%Y-%m-%dT%H:%M}); "
            f"truth covers {tt.min():%Y-%m-%dT%H:%M} to {tt.max():%Y-%m-%dT%H:%M}"
        )
    absent = [v for v in variables if v not in truth.data_vars]
    if absent:
        raise UserError(
            f"truth lacks variable(s) {', '.join(absent)}; it has {', '.join(map(str, truth.data_vars))}"
        )
    idx = tt.get_indexer(valid.ravel())
    uniq, inverse = np.unique(idx, return_inverse=True)
    point_bytes = sum(
        int(np.prod([truth[v].sizes[d] for d in _SPATIAL])) * truth[v].dtype.itemsize for v in variables
    )
    if load_max_bytes > 0 and uniq.size * point_bytes <= load_max_bytes:
        sub = truth[list(variables)].isel(time=uniq).load().drop_vars("time")
        pick = xr.DataArray(inverse.reshape(valid.shape), dims=("time", "prediction_timedelta"))
        out = sub.isel(time=pick).assign_coords(time=inits, prediction_timedelta=leads)
        return out.transpose("time", "prediction_timedelta", *_SPATIAL)
    per_lead = []
    for j in range(len(leads)):
        sel = truth[list(variables)].sel(time=valid[:, j])
        per_lead.append(sel.assign_coords(time=inits))
    out = xr.concat(
        per_lead, dim=xr.DataArray(leads, dims="prediction_timedelta", name="prediction_timedelta")
    )
    return out.transpose("time", "prediction_timedelta", *_SPATIAL)


# ----------------------------------------------------------------------------------------------------
# weights and regions
# ----------------------------------------------------------------------------------------------------


def _area_weights(latitude: np.ndarray) -> np.ndarray:
    """Area weights (mean 1): the contract's ``area_weights`` for global grids; for a regional grid
    (not reaching within one spacing of both poles) cell edges at half spacing beyond the ends."""
    from data_catalog.grid import area_weights

    lat = np.asarray(latitude, dtype=np.float64)
    if lat.size < 2:
        return np.ones_like(lat)
    step = np.abs(np.diff(lat)).max()
    if lat.max() + 1.5 * step >= 90.0 and lat.min() - 1.5 * step <= -90.0:
        return area_weights(lat)
    order = np.argsort(lat)
    s = lat[order]
    edges = np.concatenate(
        [[s[0] - 0.5 * (s[1] - s[0])], 0.5 * (s[1:] + s[:-1]), [s[-1] + 0.5 * (s[-1] - s[-2])]]
    )
    edges = np.deg2rad(np.clip(edges, -90.0, 90.0))
    w = np.empty_like(lat)
    w[order] = np.sin(edges[1:]) - np.sin(edges[:-1])
    return w / w.mean()


def _region_masks(regions: Sequence[str], latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Boolean masks ``(lat, lon, region)``."""
    from evaluation import regions as reg

    masks = [np.asarray(reg.region_mask(latitude, longitude, r), dtype=bool) for r in regions]
    return np.stack(masks, axis=-1)


# ----------------------------------------------------------------------------------------------------
# the block kernel
# ----------------------------------------------------------------------------------------------------


def _prob_levels(n_members: int) -> np.ndarray:
    """Probability levels for ROC decisions and reliability bins: ``k / M`` (``M <= 50``), else 0.05 steps."""
    if n_members <= _MAX_EXACT_LEVELS:
        return np.arange(n_members + 1, dtype=np.float64) / max(n_members, 1)
    return np.linspace(0.0, 1.0, 21)


def _n_stats(n_members: int, n_thresholds: int) -> int:
    nl = len(_prob_levels(n_members))
    return _NB + (n_members + 1) + n_thresholds * (3 + 3 * nl)


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit mix, used as a counter-based RNG."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def _point_uniforms(
    seed: int, init_ns: np.ndarray, lead_ns: np.ndarray, lat_index: np.ndarray, nlon: int
) -> np.ndarray:
    """Uniforms in [0, 1) of shape ``(t, l, y, x)``, a pure function of ``(seed, init, lead, point)``."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(1, seed, dtype=np.uint64))
        h = _splitmix64(h ^ init_ns.astype(np.uint64))[:, None, None, None]
        h = _splitmix64(h ^ lead_ns.astype(np.uint64)[None, :, None, None])
        pt = (
            lat_index.astype(np.uint64)[:, None] * np.uint64(nlon) + np.arange(nlon, dtype=np.uint64)[None, :]
        )
        h = _splitmix64(h ^ pt[None, None])
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _complete_block_terms(
    f: np.ndarray, y: np.ndarray, fair: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CRPS skill and spread, ensemble-mean error, variance and rank counts of members-last ``f``
    without NaN (``m >= 2``), all from one sort and one float64 array ``d = sorted(x) - y``: skill
    ``mean|d|``, pair sum ``d @ (2i - m - 1)`` (see :func:`evaluation.metrics.crps_components`), mean error
    ``mean(d)``, variance ``(sum d^2 - m mean(d)^2) / (m - 1)`` (one pass about the observation: the
    float64 cancellation error is ~1e-16 (mean error / spread)^2 relative, below float32 resolution
    unless the bias exceeds the spread ~1e4-fold), ``#(d < 0)`` and ``#(d == 0)`` (exact: ``x - y < 0``
    exactly when ``x < y`` in IEEE arithmetic). Every reduction over the members is a matrix-vector
    product: NumPy's own reductions along a short last axis (64 members) are 3-5x slower
    (docs/benchmarks.md, figure 2)."""
    m = f.shape[-1]
    d = np.sort(f, axis=-1).astype(np.float64)
    d -= y[..., None]
    coef = np.empty((m, 2))
    coef[:, 0] = 1.0
    coef[:, 1] = 2.0 * (np.arange(m, dtype=np.float64) + 1.0) - m - 1.0
    sums = d @ coef
    mean_d, pair = sums[..., 0] / m, sums[..., 1]
    ones = coef[:, 0]
    spread = 2.0 * pair / (m * (m - 1.0) if fair else float(m * m))
    work = np.abs(d)
    skill = (work @ ones) / m
    # counts (exact integers in float32 for any realistic m): 0/1 indicators summed by a product
    ones32 = np.ones(m, dtype=np.float32)
    less = (np.less(d, 0.0).astype(np.float32) @ ones32).astype(np.int64)
    tie = np.equal(d, 0.0)
    eq = (tie.astype(np.float32) @ ones32).astype(np.int64) if tie.any() else np.zeros(less.shape, np.int64)
    sq = np.einsum("...i,...i->...", d, d)
    var = np.maximum(sq - m * mean_d * mean_d, 0.0) / (m - 1)
    return skill, spread, mean_d, var, less, eq


def _block_stats(
    fc: np.ndarray,
    obs: np.ndarray,
    weights: np.ndarray,
    masks: np.ndarray,
    init_ns: np.ndarray,
    lead_ns: np.ndarray,
    lat_index: np.ndarray,
    *,
    fair: bool,
    thresholds: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Partial sums of one block.

    ``fc (t, M, l, y, x)``, ``obs (t, l, y, x)``, ``weights (y,)``, ``masks (y, x, R)``; returns
    ``(t, l, 1, R, S)`` float64 with, per region, ``[sum w, sum w crps, sum w skill, sum w spread/2,
    sum w se, sum w var, sum w |xbar - y|]``, then ``M + 1`` rank counts, then per threshold
    ``[sum w bs, sum w o, sum w]`` and per probability level ``t`` ``[sum w o 1(p >= t),
    sum w (1 - o) 1(p >= t), sum w p 1(p >= t)]`` (reliability bins are differences of consecutive levels).
    """
    t, m, nl, ny, nx = fc.shape
    r = masks.shape[-1]
    # members last, contiguous, in the store's own dtype (sorting and comparisons are exact in it)
    f = np.ascontiguousarray(np.moveaxis(fc, 1, -1))  # (t, l, y, x, M)
    if not np.issubdtype(f.dtype, np.floating):
        f = f.astype(np.float64)
    y = obs.astype(np.float64)
    levels = _prob_levels(m)
    n_th = len(thresholds)
    out = np.zeros((t, nl, 1, r, _n_stats(m, n_th)), dtype=np.float64)

    use_fair = fair and m > 1
    finite = bool(np.isfinite(f).all())
    if finite and m > 1:
        skill, spread, err, var, less, eq = _complete_block_terms(f, y, use_fair)
    else:
        skill, spread = metrics.crps_components(f, y, member_axis=-1, fair=use_fair)
        if m == 1:
            xbar, var = f[..., 0].astype(np.float64), np.zeros_like(y)
        else:
            xbar = np.nanmean(f.astype(np.float64), axis=-1)
            var = np.nanvar(f.astype(np.float64), axis=-1, ddof=1)
        err = xbar - y
        # comparisons of the store's values with float64 observations are exact
        less = np.count_nonzero(f < y[..., None], axis=-1)
        eq = np.count_nonzero(f == y[..., None], axis=-1)
    crps = skill - 0.5 * spread
    valid = np.isfinite(crps) & np.isfinite(err) & np.isfinite(var)
    full = valid if finite else valid & np.all(np.isfinite(f), axis=-1)

    # random tie-breaking (Hamill 2001): a uniform per point from a counter-based hash of
    # (seed, init, lead, grid point), so the ranks do not depend on the chunking or the scheduler
    u = _point_uniforms(seed, init_ns, lead_ns, lat_index, nx)
    rank = (less + np.floor(u * (eq + 1))).astype(np.int64)

    w_pt = np.broadcast_to(weights.astype(np.float64)[:, None], (ny, nx))
    for k in range(r):
        wk = np.where(masks[..., k], w_pt, 0.0)  # (y, x)
        wv = np.where(valid, wk, 0.0)  # (t, l, y, x)
        z = lambda a: np.where(valid, a, 0.0)  # noqa: E731
        out[:, :, 0, k, 0] = wv.sum(axis=(-2, -1))
        for s_i, a in enumerate((crps, skill, 0.5 * spread, err * err, var, np.abs(err)), start=1):
            out[:, :, 0, k, s_i] = (wv * z(a)).sum(axis=(-2, -1))
        sel = full & masks[..., k]
        for i in range(t):
            for j in range(nl):
                rr = rank[i, j][sel[i, j]]
                out[i, j, 0, k, _NB : _NB + m + 1] = np.bincount(rr, minlength=m + 1)[: m + 1]
    base = _NB + m + 1
    nlev = len(levels)
    f64 = f.astype(np.float64) if np.isfinite(thresholds).any() else None
    for q, thr in enumerate(thresholds):
        off = base + q * (3 + 3 * nlev)
        if not np.isfinite(thr):
            continue
        p, _ = metrics.event_probability(f64, thr, member_axis=-1)
        o = (y > thr).astype(np.float64)
        bs = metrics.brier_score(f64, y, threshold=thr, member_axis=-1, fair=use_fair)
        ok = valid & np.isfinite(p) & np.isfinite(bs)
        for k in range(r):
            wk = np.where(masks[..., k] & ok, w_pt, 0.0)
            out[:, :, 0, k, off] = (wk * np.where(ok, bs, 0.0)).sum(axis=(-2, -1))
            out[:, :, 0, k, off + 1] = (wk * o).sum(axis=(-2, -1))
            out[:, :, 0, k, off + 2] = wk.sum(axis=(-2, -1))
            for li, lev in enumerate(levels):
                ge = p >= lev - 1e-9
                col = off + 3 + 3 * li
                wge = wk * ge
                out[:, :, 0, k, col] = (wge * o).sum(axis=(-2, -1))
                out[:, :, 0, k, col + 1] = (wge * (1.0 - o)).sum(axis=(-2, -1))
                out[:, :, 0, k, col + 2] = (wge * np.where(ok, p, 0.0)).sum(axis=(-2, -1))
    return out


def _only_block(a: Any) -> Any:
    """The one block blockwise hands over (unconcatenated) along axes that are a single chunk."""
    while isinstance(a, list):
        if len(a) != 1:
            raise AssertionError("scoring blocks must hold all members and longitudes in one chunk")
        a = a[0]
    return a


def _single_block_stats(*args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`_block_stats` on blockwise's unconcatenated inputs: members and longitudes are one chunk
    each, so every input is one block in nested lists (dask's concatenate step cost ~0.3 ms a block)."""
    return _block_stats(*(_only_block(a) for a in args), **kwargs)


def _default_lat_chunk(n_members: int, nlon: int, target_bytes: int) -> int:
    return max(1, int(target_bytes // max(1, n_members * nlon * 8 * 6)))


def _stats_graph(
    fc: xr.DataArray,
    obs: xr.DataArray,
    weights: np.ndarray,
    masks: np.ndarray,
    *,
    fair: bool,
    thresholds: np.ndarray,
    seed: int,
    lat_chunk: int,
    time_chunk: int,
) -> da.Array:
    """Lazy ``(time, lead, 1, region, stat)`` sums for one variable: summed over the latitude blocks in
    the graph when there are several; a single block skips the dask sum (two tasks a block, ~20 % of
    a small store's time).

    One task per forecast chunk reads it, one slices the observations (a truth held in memory is cut
    straight into the forecast's blocks, not loaded as one block and rechunked), one scores it."""
    m = fc.sizes["number"]
    f = fc.data if isinstance(fc.data, da.Array) else da.from_array(fc.values)
    f = f.rechunk({0: time_chunk, 1: -1, 2: 1, 3: lat_chunk, 4: -1})
    o_chunks = (f.chunks[0], f.chunks[2], f.chunks[3], (obs.shape[-1],))
    if isinstance(obs.data, da.Array):
        o = obs.data.rechunk(o_chunks)
    else:
        o = da.from_array(np.asarray(obs.values), chunks=o_chunks, inline_array=True)
    w = da.from_array(weights, chunks=(f.chunks[3],))
    mk = da.from_array(masks, chunks=(f.chunks[3], -1, -1))
    it = da.from_array(fc["time"].values.astype("datetime64[ns]").astype(np.int64), chunks=(f.chunks[0],))
    lt = da.from_array(
        fc["prediction_timedelta"].values.astype("timedelta64[ns]").astype(np.int64), chunks=(f.chunks[2],)
    )
    yi = da.from_array(np.arange(fc.sizes["latitude"]), chunks=(f.chunks[3],))
    n_stats = _n_stats(m, len(thresholds))
    blocks = da.blockwise(
        _single_block_stats,
        "tlyrs",
        f,
        "tmlyx",
        o,
        "tlyx",
        w,
        "y",
        mk,
        "yxr",
        it,
        "t",
        lt,
        "l",
        yi,
        "y",
        new_axes={"s": n_stats},
        adjust_chunks={"y": 1},
        dtype=np.float64,
        concatenate=False,
        meta=np.empty((0, 0, 0, 0, 0), dtype=np.float64),
        fair=fair,
        thresholds=thresholds,
        seed=seed,
    )
    # one lat block (the usual case): nothing to sum in the graph; several: sum there (bounded memory)
    return blocks if blocks.numblocks[2] == 1 else blocks.sum(axis=2, keepdims=True)


# ----------------------------------------------------------------------------------------------------
# from sums to metrics
# ----------------------------------------------------------------------------------------------------


def _finalize(
    stats: np.ndarray, n_members: int, thresholds: np.ndarray, metrics_: Sequence[str]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Metrics from summed stats ``(..., R, S)`` (leading dims e.g. ``(lead,)`` or ``(time, lead)``)."""
    m = n_members
    ws = stats[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda i: stats[..., i] / ws  # noqa: E731
        crps, skill, half_spread = mean(1), mean(2), mean(3)
        rmse = np.sqrt(mean(4))
        spread = np.sqrt(mean(5))
        mae = mean(6)
        ssr = metrics.spread_skill_ratio(spread, rmse, m) if m > 1 else np.full_like(rmse, np.nan)
        cssr = 2.0 * half_spread / skill if m > 1 else np.full_like(skill, np.nan)
    res: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "crps": ((), crps),
        "crps_skill": ((), skill),
        "crps_spread": ((), half_spread),
        "mae": ((), mae),
        "rmse": ((), rmse),
        "spread": ((), spread),
        "spread_skill_ratio": ((), np.asarray(ssr)),
        "crps_spread_skill_ratio": ((), cssr),
    }
    if "rank_histogram" in metrics_:
        res["rank_histogram"] = (("rank",), stats[..., _NB : _NB + m + 1])
    n_th = len(thresholds)
    if n_th:
        levels = _prob_levels(m)
        nlev = len(levels)
        base = _NB + m + 1
        lead_shape = stats.shape[:-1]
        brier = np.full((*lead_shape, n_th), np.nan)
        auc = np.full((*lead_shape, n_th), np.nan)
        base_rate = np.full((*lead_shape, n_th), np.nan)
        hr = np.full((*lead_shape, n_th, nlev), np.nan)
        far = np.full((*lead_shape, n_th, nlev), np.nan)
        rel_p = np.full((*lead_shape, n_th, nlev), np.nan)
        rel_o = np.full((*lead_shape, n_th, nlev), np.nan)
        rel_w = np.full((*lead_shape, n_th, nlev), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            for q in range(n_th):
                off = base + q * (3 + 3 * nlev)
                wq = stats[..., off + 2]
                ev = stats[..., off + 1]
                brier[..., q] = stats[..., off] / wq
                base_rate[..., q] = ev / wq
                blk = stats[..., off + 3 : off + 3 + 3 * nlev].reshape(*lead_shape, nlev, 3)
                hits, fas, pge = blk[..., 0], blk[..., 1], blk[..., 2]
                hr[..., q, :] = hits / ev[..., None]
                far[..., q, :] = fas / (wq - ev)[..., None]
                # bin b holds levels[b] <= p < levels[b+1]: differences of the ">=" sums
                wge = hits + fas
                nxt = lambda a: np.concatenate([a[..., 1:], np.zeros_like(a[..., :1])], axis=-1)  # noqa: E731
                bw = wge - nxt(wge)
                rel_w[..., q, :] = bw
                rel_p[..., q, :] = (pge - nxt(pge)) / bw
                rel_o[..., q, :] = (hits - nxt(hits)) / bw
                for idx in np.ndindex(*lead_shape):
                    h, fa = hr[(*idx, q)], far[(*idx, q)]
                    if np.all(np.isfinite(h)) and np.all(np.isfinite(fa)):
                        curve = metrics.RocCurve(levels[::-1], h[::-1], fa[::-1])
                        auc[(*idx, q)] = metrics.roc_auc(curve)
        res["brier"] = (("threshold",), brier)
        res["base_rate"] = (("threshold",), base_rate)
        if "roc" in metrics_:
            res["roc_auc"] = (("threshold",), auc)
            res["roc_hit_rate"] = (("threshold", "prob_level"), hr)
            res["roc_false_alarm_rate"] = (("threshold", "prob_level"), far)
        if "reliability" in metrics_:
            res["reliability_forecast_probability"] = (("threshold", "prob_level"), rel_p)
            res["reliability_observed_frequency"] = (("threshold", "prob_level"), rel_o)
            res["reliability_weight"] = (("threshold", "prob_level"), rel_w)
    return res


# ----------------------------------------------------------------------------------------------------
# the public scorer
# ----------------------------------------------------------------------------------------------------


def _threshold_table(
    thresholds: Mapping[str, Sequence[float]] | Sequence[float] | None, variables: Sequence[str]
) -> np.ndarray:
    """``(variable, threshold)`` array, NaN-padded."""
    if thresholds is None:
        return np.zeros((len(variables), 0))
    if isinstance(thresholds, Mapping):
        unknown = set(thresholds) - set(variables)
        if unknown:
            raise UserError(f"thresholds given for unscored variable(s): {', '.join(sorted(unknown))}")
        rows = [list(map(float, thresholds.get(v, ()))) for v in variables]
    else:
        rows = [list(map(float, thresholds)) for _ in variables]
    k = max((len(r) for r in rows), default=0)
    out = np.full((len(variables), k), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _score_one(
    fc: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str],
    regions: Sequence[str],
    metrics_: Sequence[str],
    fair: bool,
    th_table: np.ndarray,
    per_init: bool,
    seed: int,
    lat_chunk: int | None,
    time_chunk: int,
    target_chunk_bytes: int,
) -> xr.Dataset:
    fc = normalize_forecast(fc)
    missing = [v for v in variables if v not in fc.data_vars]
    if missing:
        raise UserError(
            f"forecast lacks variable(s) {', '.join(missing)}; it has {', '.join(map(str, fc.data_vars))}"
        )
    truth = _grid_match(fc, normalize_truth(truth))
    obs = align_truth(fc, truth, variables, load_max_bytes=TRUTH_LOAD_MAX_BYTES)
    lat, lon = fc["latitude"].values, fc["longitude"].values
    weights = _area_weights(lat)
    masks = _region_masks(regions, lat, lon)
    m = fc.sizes["number"]
    yc = lat_chunk or _default_lat_chunk(m, lon.size, target_chunk_bytes)
    graphs = [
        _stats_graph(
            fc[v],
            obs[v],
            weights,
            masks,
            fair=fair,
            thresholds=th_table[i][np.isfinite(th_table[i])] if th_table.shape[1] else th_table[i],
            seed=seed + i,
            lat_chunk=yc,
            time_chunk=time_chunk,
        )
        for i, v in enumerate(variables)
    ]
    log.info(
        "scoring %d variable(s), %d members, %d inits x %d leads",
        len(variables),
        m,
        fc.sizes["time"],
        fc.sizes["prediction_timedelta"],
    )
    # unoptimised: blockwise fusion wraps each block in a subgraph that dask orders and runs again
    # per task (~0.5 ms a block, measured); the graph is already one task per chunk
    computed = dask.compute(*graphs, optimize_graph=False)
    per_var = []
    for i, st in enumerate(computed):
        st = st[:, :, 0]
        th = th_table[i]
        thr = th[np.isfinite(th)] if th.size else th
        if not per_init:
            st = st.sum(axis=0)
            lead_dims: tuple[str, ...] = ("prediction_timedelta", "region")
        else:
            lead_dims = ("time", "prediction_timedelta", "region")
        res = _finalize(st, m, thr, metrics_)
        data = {}
        for name, (extra, arr) in res.items():
            if extra and extra[0] == "threshold" and arr.shape[len(lead_dims)] < th_table.shape[1]:
                pad = [(0, 0)] * arr.ndim
                pad[len(lead_dims)] = (0, th_table.shape[1] - arr.shape[len(lead_dims)])
                arr = np.pad(arr, pad, constant_values=np.nan)
            data[name] = (lead_dims + extra, arr)
        per_var.append(xr.Dataset(data))
    ds = xr.concat(per_var, dim="variable", join="outer")
    leads = fc["prediction_timedelta"].values.astype("timedelta64[ns]")
    coords: dict[str, Any] = {
        "variable": list(variables),
        "prediction_timedelta": leads,
        "lead_hours": ("prediction_timedelta", leads / np.timedelta64(1, "h")),
        "region": list(regions),
    }
    if per_init:
        coords["time"] = fc["time"].values
    if "rank_histogram" in ds:
        coords["rank"] = np.arange(ds.sizes["rank"])
    if "prob_level" in ds.dims:
        coords["prob_level"] = _prob_levels(m)
    if th_table.shape[1]:
        coords["threshold"] = np.arange(th_table.shape[1])
        coords["threshold_value"] = (("variable", "threshold"), th_table)
    ds = ds.assign_coords(coords)
    ds["n_members"] = xr.DataArray(m)
    units = {v: str(fc[v].attrs.get("units", "")) for v in variables}
    ds.attrs["units"] = json.dumps(units)
    return ds


def score_forecast(
    forecast: xr.Dataset | str | os.PathLike[str],
    truth: xr.Dataset | str | os.PathLike[str],
    variables: Sequence[str] | None = None,
    regions: Sequence[str] = DEFAULT_REGIONS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    fair: bool = True,
    thresholds: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
    baselines: Mapping[str, xr.Dataset] | Sequence[str] | None = None,
    *,
    name: str = "forecast",
    per_init: bool = False,
    seed: int = 0,
    lat_chunk: int | None = None,
    time_chunk: int = 1,
    target_chunk_bytes: int = 128 * 2**20,
    reference: tuple[Any, Any] | None = None,
) -> xr.Dataset:
    """Score an ensemble forecast (and optional baselines) against truth at valid time ``init + lead``.

    Parameters
    ----------
    forecast : WeatherBench2-layout Dataset or store path (dims ``time, number, prediction_timedelta,
        latitude, longitude``; a missing ``number`` means a deterministic forecast).
    truth : Dataset ``(time, latitude, longitude)``, a zarr path or a catalog source name.
    variables : channels to score (default: those in both).
    regions : region names of :mod:`evaluation.regions`.
    metrics : subset of :data:`DEFAULT_METRICS` (CRPS, RMSE and spread sums are always computed).
    fair : fair CRPS / Brier (Ferro 2014) instead of the standard estimators.
    thresholds : exceedance thresholds in physical units, per variable (mapping) or for all.
    baselines : names (``climatology``, ``probabilistic_climatology``/``probclim``, ``persistence``) built
        from ``truth`` with :mod:`evaluation.baselines`, or a mapping name -> forecast-like Dataset.
    name : coordinate label of the forecast on the ``forecast`` dim.
    per_init : keep a ``time`` dim (one value per init) instead of averaging over inits.
    seed : seed of the rank-histogram tie-breaking.
    lat_chunk, time_chunk, target_chunk_bytes : block size; by default latitude bands holding about
        ``target_chunk_bytes`` of working memory per task, with all members and longitudes.
    reference : (start, end) reference period of the climatological baselines.

    Returns
    -------
    Dataset with dims ``forecast x variable x prediction_timedelta x region`` (+ ``rank``,
    ``threshold``, ``prob_level``); one data variable per metric (see the module docstring).
    """
    if time_chunk < 1 or (lat_chunk is not None and lat_chunk < 1) or target_chunk_bytes < 1:
        raise UserError("time_chunk, lat_chunk and target_chunk_bytes must be positive")
    fc = open_forecast(forecast)
    fcn = normalize_forecast(fc)
    if variables is not None:
        absent = [v for v in variables if v not in fcn.data_vars]
        if absent:
            have = ", ".join(map(str, fcn.data_vars))
            raise UserError(f"forecast lacks variable(s) {', '.join(absent)}; it has {have}")
    tr = normalize_truth(open_truth(truth, variables))
    if variables is None:
        variables = [str(v) for v in fcn.data_vars if v in tr.data_vars]
        if not variables:
            raise UserError("forecast and truth share no variable")
    variables = list(variables)
    unknown = set(metrics) - set(DEFAULT_METRICS) - set(SCALAR_METRICS)
    if unknown:
        raise UserError(
            f"unknown metric(s) {', '.join(sorted(unknown))}; choose from {', '.join(DEFAULT_METRICS)}"
        )
    th_table = _threshold_table(thresholds, variables)
    entries: list[tuple[str, xr.Dataset]] = [(name, fcn)]
    if baselines:
        from evaluation import baselines as bl

        if isinstance(baselines, Mapping):
            entries += [(str(k), v) for k, v in baselines.items()]
        else:
            for b in baselines:
                entries.append(
                    (
                        bl.canonical_baseline_name(b),
                        bl.make_baseline(b, fcn, tr, variables, reference=reference),
                    )
                )
    kw = dict(
        regions=list(regions),
        metrics_=list(metrics),
        fair=fair,
        th_table=th_table,
        per_init=per_init,
        seed=seed,
        lat_chunk=lat_chunk,
        time_chunk=time_chunk,
        target_chunk_bytes=target_chunk_bytes,
    )
    scored = [_score_one(ds, tr, variables, **kw) for _, ds in entries]  # type: ignore[arg-type]
    out = xr.concat(
        scored,
        dim=xr.DataArray([n for n, _ in entries], dims="forecast", name="forecast"),
        join="outer",
        combine_attrs="override",
    )
    out.attrs.update(
        {
            "title": "wxens forecast scores",
            "fair": int(fair),
            "seed": seed,
            "area_weighting": "cell-area weights, data_catalog.grid.area_weights",
            "time_mean": "per_init" if per_init else "mean over initialisations",
        }
    )
    return out


# ----------------------------------------------------------------------------------------------------
# writing and reading
# ----------------------------------------------------------------------------------------------------


def scores_to_frame(scores: xr.Dataset) -> pd.DataFrame:
    """Tidy table ``(forecast, variable, lead_hours, metric, region, threshold, value)`` of the scalar
    metrics (and per-threshold Brier / ROC AUC)."""
    rows = []
    for metric in (*SCALAR_METRICS, *THRESHOLD_METRICS):
        if metric not in scores:
            continue
        da_ = scores[metric]
        if "time" in da_.dims:
            da_ = da_.mean("time")
        df = da_.to_dataframe(name="value").reset_index()
        df["metric"] = metric
        if "threshold_value" in df:
            df["threshold"] = df.pop("threshold_value")
            df = df[np.isfinite(df["threshold"])]
        else:
            df["threshold"] = np.nan
        rows.append(df)
    if not rows:
        return pd.DataFrame(
            columns=["forecast", "variable", "lead_hours", "metric", "region", "threshold", "value"]
        )
    df = pd.concat(rows, ignore_index=True)
    if "lead_hours" not in df:
        df["lead_hours"] = df["prediction_timedelta"] / pd.Timedelta(hours=1)
    if "forecast" not in df:
        df["forecast"] = "forecast"
    cols = ["forecast", "variable", "lead_hours", "metric", "region", "threshold", "value"]
    return df[cols].sort_values(cols[:6]).reset_index(drop=True)


def write_scores(scores: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``scores`` to ``path`` (``.nc`` netCDF or ``.zarr``) and the tidy CSV beside it
    (``<path stem>.csv``). Written to a temporary name first and moved into place, so a failed write
    never leaves a complete-looking result."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".nc", ".zarr"}:
        raise UserError(f"scores path must end in .nc or .zarr, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    enc_ds = scores.copy()
    for v in list(enc_ds.variables):
        enc_ds[v].encoding = {}
        if enc_ds[v].dtype.kind == "U":  # variable-length strings: portable in netCDF and zarr v3
            enc_ds[v] = enc_ds[v].astype(object)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        target = tmp / path.name
        if suffix == ".nc":
            enc_ds.to_netcdf(target)
        else:
            enc_ds.to_zarr(target, mode="w", consolidated=False)
        csv_tmp = tmp / "scores.csv"
        scores_to_frame(scores).to_csv(csv_tmp, index=False)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(target, path)
        os.replace(csv_tmp, path.with_suffix(".csv"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote scores to %s and %s", path, path.with_suffix(".csv"))
    return path


def open_scores(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open scores written by :func:`write_scores` (netCDF or zarr), loaded into memory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"scores not found: {path}")
    try:
        if path.is_dir():
            ds = xr.open_zarr(path, consolidated=False).load()
        else:
            with xr.open_dataset(path) as f:
                ds = f.load()
    except Exception as exc:
        raise UserError(f"cannot read scores {path}: {exc}") from exc
    return ds
