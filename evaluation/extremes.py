"""Extreme-event diagnostics: EFI, SOT, climatological percentiles and exceedances, and the HENS
Part II statistics of ensembles at the tails (numpy arrays or torch tensors; xarray for climatology).

* Extreme Forecast Index (Lalaurette 2003; Zsoter 2006), with ``F_f(p)`` the fraction of members at or
  below the climate ``p``-quantile:

      ``EFI = (2 / pi) * int_0^1 (p - F_f(p)) / sqrt(p (1 - p)) dp``,

  ``F_f`` taken piecewise linear in ``p`` between the climate quantile levels; the integral is then exact
  per segment: on ``[p_i, p_{i+1}]`` with ``F = F_i + s (p - p_i)``, ``s = dF/dp``,
  ``int = (2 F_i - 1) dA + s ((1 - 2 p_i) dA + dB) - dB`` with ``A(p) = arccos(sqrt p)`` and
  ``B(p) = sqrt(p (1 - p))``. EFI is in ``[-1, 1]``: +1 when every member is above the climate maximum.
* Shift of Tails (Zsoter 2006): ``SOT = (Q_f(90) - Q_c(99)) / (Q_c(99) - Q_c(90))`` for the upper tail
  (``perc=10`` with ``Q_c(1)`` for the lower tail), clipped to ``[-10, 10]``; ``Q_f`` is the forecast
  percentile with linear interpolation between sorted members (numpy's default).
* HENS Part II (Mahesh et al. 2024): outlier fraction (truth outside the ensemble range), largest
  standardised member deviations, best-member error, members needed to bracket the truth.

These follow ``earthkit.meteo.extreme.efi``/``sot`` (same conventions, cross-checked in the tests); the
``eps`` precipitation options are described in :func:`efi` and :func:`sot`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError
from evaluation.metrics import (
    _as_backend,
    _cast,
    _f64,
    _isnan,
    _moveaxis,
    _out_dtype,
    _prepare,
    _sort,
    _sum,
    _where,
    weighted_mean,
)

log = logging.getLogger(__name__)

__all__ = [
    "BracketCurve",
    "best_member_error",
    "climatological_percentiles",
    "efi",
    "exceedance",
    "members_to_bracket",
    "outlier_fraction",
    "outside_range",
    "select_climatology",
    "sot",
    "standardized_extreme_deviation",
]


def _torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _levels(n: int, levels: Sequence[float] | np.ndarray | None) -> np.ndarray:
    p = np.linspace(0.0, 1.0, n) if levels is None else np.asarray(levels, dtype=np.float64)
    if p.shape != (n,) or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 1:
        raise UserError(f"quantile levels must be {n} increasing values in [0, 1]")
    return p


# ----------------------------------------------------------------------------------------------------
# EFI and SOT
# ----------------------------------------------------------------------------------------------------


def efi(
    clim_quantiles: Any,
    ens: Any,
    levels: Sequence[float] | np.ndarray | None = None,
    quantile_axis: int = 0,
    member_axis: int = 0,
    eps: float | None = None,
) -> Any:
    """Extreme Forecast Index per point (Lalaurette 2003; Zsoter 2006; formula in the module docstring).

    Parameters
    ----------
    clim_quantiles : sorted climate quantiles along ``quantile_axis`` (e.g. 101 percentiles 0..100).
    ens : ensemble with members along ``member_axis``; the remaining shape must match the climate's.
    levels : probability of each climate quantile (default ``linspace(0, 1, n)``, as earthkit-meteo).
    eps : ``None`` (default; earthkit's ``eps <= 0``): plain EFI. ``eps > 0`` (precipitation, as
        earthkit-meteo): only segments whose upper climate quantile exceeds ``eps`` count, and the sum is
        divided by its value for a forecast entirely above the climate (at least ``eps``) instead of
        multiplied by ``2 / pi``.

    ``F_f(p_i)`` counts members ``<= q_i`` (ties count as below). NaN where any climate quantile or member
    at the point is NaN (as earthkit-meteo).
    """
    dtype = _out_dtype(ens)
    c = _moveaxis(_f64(_as_backend(clim_quantiles, ens)), quantile_axis, 0)
    f = _moveaxis(_f64(ens), member_axis, 0)
    if tuple(c.shape[1:]) != tuple(f.shape[1:]):
        raise UserError(f"efi: climate shape {tuple(c.shape[1:])} differs from forecast {tuple(f.shape[1:])}")
    nq, m = int(c.shape[0]), int(f.shape[0])
    p = _levels(nq, levels)
    missing = (_sum(_isnan(c), axis=0) + _sum(_isnan(f), axis=0)) > 0
    # F_i: fraction of members <= q_i, every level at once (one merge sort per point)
    frac = _fraction_at_or_below(f, c) / m  # (nq, *point)
    acos = np.arccos(np.sqrt(p))
    prod = np.sqrt(p * (1.0 - p))
    d_a, d_b = np.diff(acos), np.diff(prod)
    shape = (nq - 1,) + (1,) * (len(frac.shape) - 1)
    da_, db_ = _as_backend(d_a.reshape(shape), frac), _as_backend(d_b.reshape(shape), frac)
    dp = _as_backend(np.diff(p).reshape(shape), frac)
    lin = _as_backend(((1.0 - 2.0 * p[:-1]) * d_a + d_b).reshape(shape), frac)
    slope = (frac[1:] - frac[:-1]) / dp
    seg = (2.0 * frac[:-1] - 1.0) * da_ + slope * lin - db_
    norm: Any = 0.0
    if eps is not None and eps > 0:
        use = c[1:] > eps
        seg = _where(use, seg, 0.0)
        norm = _sum(_where(use, -da_ - db_, 0.0), axis=0)
    total = _sum(seg, axis=0)
    if eps is not None and eps > 0:
        if _torch(norm):
            norm = torch.clamp(norm, min=eps)
        else:
            norm = np.maximum(norm, eps)
        out = total / norm
    else:
        out = total * (2.0 / math.pi)
    out = _where(missing, float("nan"), out)
    return _cast(out, dtype)


def _fraction_at_or_below(f: Any, c: Any) -> Any:
    """``(nq, *point)`` float64 counts of the members ``f (M, *point)`` at or below each climate
    quantile ``c (nq, *point)``: the members sorted per point, then one batched binary search of all
    quantiles (``torch.searchsorted(..., right=True)``: a member equal to a quantile counts as below),
    ``O((M + nq) log M)`` per point instead of ``nq`` passes over the members."""
    m, nq = int(f.shape[0]), int(c.shape[0])
    point = tuple(f.shape[1:])
    n = int(np.prod(point)) if point else 1
    if _torch(f):
        fs = torch.sort(f.reshape(m, n).T.contiguous(), dim=1).values  # (points, M)
        ct = c.reshape(nq, n).T.contiguous().to(fs.dtype)
    else:  # NumPy's sort of short rows is ~4x torch's here (SIMD sort); search in torch (batched)
        fs = torch.from_numpy(np.sort(np.ascontiguousarray(np.asarray(f).reshape(m, n).T), axis=1))
        ct = torch.from_numpy(np.ascontiguousarray(np.asarray(c, dtype=fs.numpy().dtype).reshape(nq, n).T))
    cnt = torch.searchsorted(fs, ct, right=True)
    out = cnt.T.to(torch.float64).reshape((nq, *point))
    return out if _torch(f) else out.numpy()


def _percentile_linear(sorted_members: Any, q: float) -> Any:
    """Percentile ``q`` (0-100) of members sorted along axis 0, linear interpolation (numpy default)."""
    m = int(sorted_members.shape[0])
    pos = q / 100.0 * (m - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, m - 1)
    frac = pos - lo
    return sorted_members[lo] + frac * (sorted_members[hi] - sorted_members[lo])


def sot(
    clim_quantiles: Any,
    ens: Any,
    perc: int = 90,
    perc_tail: int | None = None,
    levels: Sequence[float] | np.ndarray | None = None,
    quantile_axis: int = 0,
    member_axis: int = 0,
    eps: float | None = None,
    bound: float = 10.0,
) -> Any:
    """Shift of Tails per point (Zsoter 2006): ``SOT = (Q_f(perc) - Q_c(tail)) / (Q_c(tail) - Q_c(perc))``.

    ``perc`` is 90 (upper tail, ``tail = 99``) or 10 (lower tail, ``tail = 1``) by default; the climate
    percentiles are looked up in ``clim_quantiles`` at ``levels`` (default: 101 percentiles 0..100, as
    earthkit-meteo requires). ``Q_f`` interpolates linearly between sorted members. Positive SOT means the
    forecast's tail reaches beyond the climate's 99th (1st) percentile. Clipped to ``[-bound, bound]``;
    NaN where the climate tail width ``Q_c(tail) - Q_c(perc)`` is 0 or data are NaN. ``eps > 0`` sets
    members and ``Q_c(perc)`` below ``eps`` to 0 first (earthkit's precipitation option).
    """
    if not 2 <= perc <= 98 or perc == 50:
        raise UserError(f"sot: perc must be in 2..98 and not 50, got {perc}")
    tail = perc_tail if perc_tail is not None else (99 if perc > 50 else 1)
    dtype = _out_dtype(ens)
    c = _moveaxis(_f64(_as_backend(clim_quantiles, ens)), quantile_axis, 0)
    f = _moveaxis(_f64(ens), member_axis, 0)
    nq = int(c.shape[0])
    p = _levels(nq, np.linspace(0.0, 1.0, 101) if levels is None and nq == 101 else levels)

    def at(level: float) -> Any:
        i = int(np.argmin(np.abs(p - level / 100.0)))
        if abs(p[i] - level / 100.0) > 1e-9:
            raise UserError(f"sot: climate quantiles have no level {level}%")
        return c[i]

    qc, qc_tail = at(perc), at(tail)
    if eps is not None and eps > 0:
        f = _where(f < eps, 0.0, f)
        qc = _where(qc < eps, 0.0, qc)
    qf = _percentile_linear(_sort(f, axis=0), perc)
    den = qc_tail - qc
    ok = abs(den) > max(eps or 0.0, 0.0)
    out = _where(ok, (qf - qc_tail) / _where(ok, den, 1.0), float("nan"))
    out = _where(out < -bound, -bound, _where(out > bound, bound, out))
    nan_any = _isnan(qf) | _isnan(qc) | _isnan(qc_tail)
    if _torch(f):
        nan_any = nan_any | torch.isnan(f).any(dim=0)
    else:
        nan_any = nan_any | np.isnan(f).any(axis=0)
    return _cast(_where(nan_any, float("nan"), out), dtype)


# ----------------------------------------------------------------------------------------------------
# climatological percentiles and exceedances (xarray)
# ----------------------------------------------------------------------------------------------------


def climatological_percentiles(
    truth: Any,
    q: Sequence[float] = (0.95, 0.99),
    by: str = "dayofyear_hour",
    window: int = 15,
    time_dim: str = "time",
    dayofyear: Sequence[int] | None = None,
) -> Any:
    """Per-point climatological quantiles of ``truth`` (an xarray DataArray or Dataset with ``time_dim``).

    ``by="dayofyear_hour"``: for each day of year ``d`` (1..366) and hour of day ``h`` present, the
    quantiles of all samples at hour ``h`` whose day of year lies within ``+-window`` days of ``d``
    (circular over the year); ``by="hour"``: per hour of day over all days; ``by="all"``: over all times.
    Leap days are day 366's neighbours by day-of-year number (the usual convention; a one-day shift after
    28 February in leap years). Quantiles interpolate linearly (numpy's default). Returns dims
    ``quantile`` (+ ``dayofyear``, ``hour``) + the remaining dims of ``truth``. ``dayofyear`` restricts the
    days computed (the forecast's valid days), which saves time on long records.
    """
    import xarray as xr

    if time_dim not in truth.dims:
        raise UserError(f"climatological_percentiles: truth has no {time_dim!r} dimension")
    qs = [float(v) for v in q]
    if any(not 0.0 <= v <= 1.0 for v in qs):
        raise UserError("quantiles q must lie in [0, 1]")
    t = truth[time_dim]
    if by == "all":
        return truth.quantile(qs, dim=time_dim)
    hours = t.dt.hour.values
    if by == "hour":
        out = [truth.isel({time_dim: hours == h}).quantile(qs, dim=time_dim) for h in np.unique(hours)]
        return xr.concat(out, dim="hour").assign_coords(hour=np.unique(hours))
    if by != "dayofyear_hour":
        raise UserError(f"climatological_percentiles: unknown grouping {by!r}")
    doy = t.dt.dayofyear.values
    days = np.arange(1, 367) if dayofyear is None else np.asarray(sorted(set(dayofyear)), dtype=int)
    per_hour = []
    uh = np.unique(hours)
    for h in uh:
        per_day = []
        for d in days:
            dist = np.abs(doy - d)
            dist = np.minimum(dist, 366 - dist)
            sel = (hours == h) & (dist <= window)
            if not sel.any():
                raise UserError(f"no truth sample within {window} days of day {d} at {h:02d} h")
            per_day.append(truth.isel({time_dim: np.nonzero(sel)[0]}).quantile(qs, dim=time_dim))
        per_hour.append(xr.concat(per_day, dim="dayofyear").assign_coords(dayofyear=days))
    return xr.concat(per_hour, dim="hour").assign_coords(hour=uh)


def select_climatology(clim: Any, valid_time: Any) -> Any:
    """Pick the climatology (from :func:`climatological_percentiles`) matching each valid time
    (a datetime64 DataArray, any shape): by day of year and hour where those dims exist."""
    import xarray as xr

    vt = valid_time if isinstance(valid_time, xr.DataArray) else xr.DataArray(np.asarray(valid_time))
    sel = {}
    if "dayofyear" in clim.dims:
        sel["dayofyear"] = vt.dt.dayofyear
    if "hour" in clim.dims:
        sel["hour"] = vt.dt.hour
    return clim.sel(sel) if sel else clim


def exceedance(values: Any, threshold: Any, greater: bool = True) -> Any:
    """Event indicator ``values > threshold`` (``<`` if ``greater=False``) as float, NaN where ``values``
    is NaN; thresholds broadcast per point (e.g. climatological percentiles)."""
    v = _f64(values)
    t = _f64(_as_backend(threshold, v))
    e = (v > t) if greater else (v < t)
    e = e.to(torch.float64) if _torch(e) else e.astype(np.float64)
    return _cast(_where(_isnan(v), float("nan"), e), _out_dtype(values))


# ----------------------------------------------------------------------------------------------------
# HENS Part II statistics
# ----------------------------------------------------------------------------------------------------


def _minmax(f: Any) -> tuple[Any, Any]:
    if _torch(f):
        return f.amin(dim=-1), f.amax(dim=-1)
    return f.min(axis=-1), f.max(axis=-1)


def outside_range(forecast: Any, obs: Any, member_axis: int = 0) -> Any:
    """1.0 where the observation lies outside ``[min_i x_i, max_i x_i]``, else 0.0 (NaN if obs is NaN)."""
    f, y, dtype = _prepare(forecast, obs, member_axis)
    lo, hi = _minmax(f)
    out = ((y < lo) | (y > hi)) * 1.0
    out = _cast(out, torch.float64) if _torch(out) else out.astype(np.float64)
    return _cast(_where(_isnan(y), float("nan"), out), dtype)


def outlier_fraction(
    forecast: Any,
    obs: Any,
    weights: Any = None,
    member_axis: int = 0,
    reduce_axes: int | Sequence[int] | None = None,
) -> Any:
    """(Area-)weighted fraction of points where the truth falls outside the ensemble range (HENS Part II;
    a perfect ``M``-member ensemble has expected outlier fraction ``2 / (M + 1)``)."""
    return weighted_mean(outside_range(forecast, obs, member_axis), weights, reduce_axes)


def standardized_extreme_deviation(forecast: Any, member_axis: int = 0) -> tuple[Any, Any]:
    """Largest standardised member deviations ``((max - mean) / std, (mean - min) / std)`` per point,
    ``std`` the unbiased member standard deviation (HENS Part II: how far the most extreme member
    reaches, in units of spread)."""
    dtype = _out_dtype(forecast)
    f = _moveaxis(_f64(forecast), member_axis, -1)
    m = f.shape[-1]
    if m < 2:
        raise UserError("standardized_extreme_deviation needs at least 2 members")
    mean = _sum(f, axis=-1) / m
    d = f - mean[..., None]
    std = (_sum(d * d, axis=-1) / (m - 1)) ** 0.5
    lo, hi = _minmax(f)
    s = _where(std > 0, std, float("nan"))
    return _cast((hi - mean) / s, dtype), _cast((mean - lo) / s, dtype)


def best_member_error(forecast: Any, obs: Any, member_axis: int = 0) -> Any:
    """``min_i |x_i - y|`` per point (NaN members ignored): the error of the best member."""
    f, y, dtype = _prepare(forecast, obs, member_axis)
    ae = abs(f - y[..., None])
    ae = _where(_isnan(ae), float("inf"), ae)
    best = ae.amin(dim=-1) if _torch(ae) else ae.min(axis=-1)
    return _cast(_where(_isnan(y) | (best == float("inf")), float("nan"), best), dtype)


@dataclass(frozen=True)
class BracketCurve:
    """Coverage ``coverage[k - 1]``: fraction of cases where ``k`` members drawn without replacement
    bracket the truth (``min <= y <= max``), for ``k = 1 .. M``; ``members_needed`` is the smallest ``k``
    reaching ``target`` (None if even all ``M`` members do not)."""

    n_members: np.ndarray
    coverage: np.ndarray
    target: float
    members_needed: int | None
    method: str


def _log_comb(n: np.ndarray, k: int) -> np.ndarray:
    from scipy.special import gammaln

    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = gammaln(n + 1) - gammaln(k + 1) - gammaln(np.maximum(n - k, 0) + 1)
    return np.where(n >= k, out, -np.inf)


def members_to_bracket(
    forecast: Any,
    obs: Any,
    target: float = 0.95,
    rng: np.random.Generator | None = None,
    member_axis: int = 0,
    n_resamples: int = 64,
    weights: Any = None,
) -> BracketCurve:
    """How many members the ensemble range needs to bracket the truth ``target`` of the time
    (HENS Part II).

    Coverage of a random ``k``-subset: with ``a`` members strictly below ``y`` and ``b`` strictly above,
    out of ``M``, the subset misses ``y`` iff all its members are below or all above, so

        ``P(bracket | k) = 1 - [C(a, k) + C(b, k)] / C(M, k)``

    (hypergeometric). Without ``rng`` that exact expectation over subsets is averaged over cases; with an
    ``rng``, ``n_resamples`` random subsets per ``k`` (the same subset for every point) estimate it by
    resampling instead. ``weights`` (broadcasting against the point shape) weight the cases, e.g. area
    weights. Points with a NaN observation or member are skipped.
    """
    f, y, _ = _prepare(forecast, obs, member_axis)
    if _torch(f):
        f, y = f.detach().cpu().numpy(), y.detach().cpu().numpy()
        if weights is not None and _torch(weights):
            weights = weights.detach().cpu().numpy()
    m = f.shape[-1]
    w = np.broadcast_to(np.asarray(1.0 if weights is None else weights, dtype=np.float64), y.shape)
    ok = ~(np.isnan(y) | np.isnan(f).any(axis=-1))
    f, y, w = f[ok], y[ok], w[ok]
    if y.size == 0:
        raise UserError("members_to_bracket: no valid case")
    ks = np.arange(1, m + 1)
    cov = np.empty(m)
    if rng is None:
        a = np.sum(f < y[:, None], axis=-1)
        b = np.sum(f > y[:, None], axis=-1)
        for k in ks:
            lc = _log_comb(np.array(m), int(k))
            miss = np.exp(_log_comb(a, int(k)) - lc) + np.exp(_log_comb(b, int(k)) - lc)
            cov[k - 1] = np.sum(w * (1.0 - miss)) / np.sum(w)
        method = "exact hypergeometric expectation"
    else:
        for k in ks:
            acc = 0.0
            for _ in range(n_resamples):
                idx = rng.choice(m, size=int(k), replace=False)
                sub = f[:, idx]
                acc += np.sum(w * ((sub.min(axis=-1) <= y) & (sub.max(axis=-1) >= y)))
            cov[k - 1] = acc / (n_resamples * np.sum(w))
        method = f"resampling ({n_resamples} subsets per size)"
    reached = np.nonzero(cov >= target)[0]
    need = int(ks[reached[0]]) if reached.size else None
    return BracketCurve(ks, cov, float(target), need, method)
