"""Ensemble metric kernels on numpy arrays and torch tensors.

Every kernel accepts ``numpy.ndarray`` (float32/float64) or ``torch.Tensor`` and returns the same
type (and, for floating inputs, the same dtype; internal sums run in float64). Ensembles carry their
members along an explicit ``member_axis`` (default 0); observations broadcast against the forecast with
the member axis removed.

Estimators (see docs/metrics.md for the derivations and references):

* CRPS (Gneiting & Raftery 2007) in sorted ("rank") form, ``O(M log M)`` time and ``O(M)`` memory per
  point; the fair (unbiased for finite ``M``) version of Ferro (2014), and the standard empirical-CDF
  version (equal to ``properscoring.crps_ensemble``).
* Ensemble-mean RMSE, ensemble spread and the spread/skill ratio with the ``sqrt((M+1)/M)`` correction
  (Fortin et al. 2014), so that a perfect ensemble scores 1.
* Rank histograms with random tie-breaking, Brier score (standard and fair, Ferro 2014), reliability
  and ROC curve data, energy score (Gneiting & Raftery 2007).
* :class:`EnsembleAccumulator`: mergeable per-point partial sums for inline scoring over member blocks
  and shards; merging blocks reproduces the one-shot metrics to float tolerance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

Array = TypeVar("Array", np.ndarray, torch.Tensor)

__all__ = [
    "EnsembleAccumulator",
    "ReliabilityCurve",
    "RocCurve",
    "brier_score",
    "crps_between_groups",
    "crps_components",
    "crps_ensemble",
    "energy_score",
    "ensemble_mean_rmse",
    "ensemble_spread",
    "event_probability",
    "rank_histogram",
    "reliability_curve",
    "roc_auc",
    "roc_curve",
    "spread_skill_ratio",
    "weighted_mean",
]


# ----------------------------------------------------------------------------------------------------
# backend helpers (numpy / torch)
# ----------------------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _as_backend(x: Any, like: Any, dtype: Any = None) -> Any:
    """Convert ``x`` to the array type (and device) of ``like``."""
    if _is_torch(like):
        if _is_torch(x):
            return x.to(device=like.device, dtype=dtype or x.dtype)
        return torch.as_tensor(np.asarray(x), device=like.device, dtype=dtype)
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _f64(x: Any) -> Any:
    if _is_torch(x):
        return x.to(torch.float64)
    return np.asarray(x, dtype=np.float64)


def _out_dtype(x: Any) -> Any:
    """Floating dtype of the result: the input's own floating dtype, else float64."""
    if _is_torch(x):
        return x.dtype if x.is_floating_point() else torch.float64
    x = np.asarray(x)
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64


def _cast(x: Any, dtype: Any) -> Any:
    return x.to(dtype) if _is_torch(x) else np.asarray(x, dtype=dtype)


def _sort(x: Any, axis: int = -1) -> Any:
    """Sort with NaN last (both backends put NaN at the end)."""
    if _is_torch(x):
        return torch.sort(x, dim=axis).values
    return np.sort(x, axis=axis)


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    return torch.movedim(x, src, dst) if _is_torch(x) else np.moveaxis(x, src, dst)


def _arange(n: int, like: Any) -> Any:
    if _is_torch(like):
        return torch.arange(n, device=like.device, dtype=torch.float64)
    return np.arange(n, dtype=np.float64)


def _where(c: Any, a: Any, b: Any) -> Any:
    if _is_torch(c):
        a = a if _is_torch(a) else torch.as_tensor(a, dtype=torch.float64, device=c.device)
        b = b if _is_torch(b) else torch.as_tensor(b, dtype=torch.float64, device=c.device)
        return torch.where(c, a, b)
    return np.where(c, a, b)


def _isnan(x: Any) -> Any:
    return torch.isnan(x) if _is_torch(x) else np.isnan(x)


def _sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    if _is_torch(x):
        if axis is None:
            return x.sum()
        return x.sum(dim=axis, keepdim=keepdims)
    return np.sum(x, axis=axis, keepdims=keepdims)


def _count(mask: Any, axis: Any = -1) -> Any:
    """Number of True entries along ``axis`` as float64."""
    if _is_torch(mask):
        return mask.sum(dim=axis).to(torch.float64)
    return np.sum(mask, axis=axis).astype(np.float64)


def _broadcast(a: Any, b: Any) -> tuple[Any, Any]:
    if _is_torch(a):
        return torch.broadcast_tensors(a, b)
    return tuple(np.broadcast_arrays(a, b))  # type: ignore[return-value]


def _prepare(forecast: Any, obs: Any, member_axis: int) -> tuple[Any, Any, Any]:
    """Return (members-last float64 forecast, float64 obs broadcast to the point shape, out dtype)."""
    dtype = _out_dtype(forecast)
    f = _f64(forecast)
    if f.ndim == 0:
        raise UserError("forecast must have a member axis")
    f = _moveaxis(f, member_axis, -1)
    y = _f64(_as_backend(obs, f))
    point_shape = tuple(np.broadcast_shapes(tuple(f.shape[:-1]), tuple(y.shape)))
    if _is_torch(f):
        f = f.expand(*point_shape, f.shape[-1])
        y = y.expand(*point_shape)
    else:
        f = np.broadcast_to(f, (*point_shape, f.shape[-1]))
        y = np.broadcast_to(y, point_shape)
    return f, y, dtype


# ----------------------------------------------------------------------------------------------------
# CRPS
# ----------------------------------------------------------------------------------------------------

#: Points are processed in blocks of about this many member values, so the float64 temporaries of the
#: sorted-form CRPS stay bounded (about 50 MB) whatever the field size.
CHUNK_ELEMENTS = 2**20


def _flatten_points(forecast: Any, obs: Any, member_axis: int) -> tuple[Any, Any, tuple[int, ...]]:
    """``(f (P, M), y (P,), point_shape)`` in the input dtype (broadcast, members last)."""
    if _is_torch(forecast):
        f = forecast
    else:
        f = np.asarray(forecast)
        if not np.issubdtype(f.dtype, np.floating):
            f = f.astype(np.float64)
    if f.ndim == 0:
        raise UserError("forecast must have a member axis")
    f = _moveaxis(f, member_axis, -1)
    y = _as_backend(obs, f)
    if _is_torch(y) and not y.is_floating_point():
        y = y.to(torch.float64)
    point_shape = tuple(np.broadcast_shapes(tuple(f.shape[:-1]), tuple(y.shape)))
    m = int(f.shape[-1])
    if _is_torch(f):
        return f.expand(*point_shape, m).reshape(-1, m), y.expand(*point_shape).reshape(-1), point_shape
    f2 = np.broadcast_to(f, (*point_shape, m)).reshape(-1, m)
    return f2, np.broadcast_to(y, point_shape).reshape(-1), point_shape


def _concat(parts: list[Any], like: Any) -> Any:
    if _is_torch(like):
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=like.device)
    return np.concatenate(parts) if parts else np.zeros(0)


def _crps_sums(f: Any, y: Any) -> tuple[Any, Any, Any]:
    """Per point: (effective member count m, sum_i |x_i - y|, sum_{i<j} |x_j - x_i|).

    ``f`` has members last (any floating dtype; the sums are float64), ``y`` the point shape (float64).
    NaN members are dropped per point. The pair sum uses the sorted values:
    ``sum_{i<j} |x_(j) - x_(i)| = sum_i (2i - m - 1) x_(i)`` (1-indexed ranks), computed on ``x - y`` to
    limit cancellation (the sum is translation invariant).
    """
    if not bool(_isnan(f).any()):
        return _crps_sums_complete(f, y)
    d = _f64(f) - y[..., None]
    valid = ~_isnan(d)
    m = _count(valid)
    d0 = _where(valid, d, 0.0)
    skill_sum = _sum(abs(d0), axis=-1)
    s = _sort(d, axis=-1)  # NaN last: the first m entries of each point are its valid members
    svalid = ~_isnan(s)
    s0 = _where(svalid, s, 0.0)
    rank = _arange(s.shape[-1], s) + 1.0  # 1-indexed
    coef = 2.0 * rank - m[..., None] - 1.0
    pair_sum = _sum(_where(svalid, coef * s0, 0.0), axis=-1)
    return m, skill_sum, pair_sum


def _crps_sums_complete(f: Any, y: Any) -> tuple[Any, Any, Any]:
    """:func:`_crps_sums` without NaN members: the members are sorted in their own dtype (the order of
    ``x - y`` is that of ``x``; float64 conversion and the subtraction are monotone), then the pair sum
    is one matrix-vector product of the sorted rows with ``2i - m - 1``."""
    n = int(f.shape[-1])
    d = _f64(_sort(f, axis=-1)) - y[..., None]
    coef = 2.0 * (_arange(n, d) + 1.0) - n - 1.0
    m: torch.Tensor | np.ndarray
    if _is_torch(d):
        m = torch.full(d.shape[:-1], float(n), dtype=d.dtype, device=d.device)
    else:
        m = np.full(d.shape[:-1], float(n), dtype=d.dtype)
    return m, _sum(abs(d), axis=-1), d @ coef


def crps_components(
    forecast: Array, obs: Array | float, member_axis: int = 0, fair: bool = True
) -> tuple[Array, Array]:
    """Skill and spread terms of the ensemble CRPS, ``crps = skill - 0.5 * spread``.

    ``skill = (1/m) sum_i |x_i - y|`` estimates ``E|X - y|``; ``spread`` estimates ``E|X - X'|``:
    fair (Ferro 2014): over distinct pairs, ``spread = 2 S / (m (m - 1))``; standard (empirical CDF):
    ``spread = 2 S / m^2``, with ``S = sum_{i<j} |x_j - x_i| = sum_i (2i - m - 1) x_(i)`` over the sorted
    members (1-indexed). ``m`` is the number of non-NaN members at each point. The CRPS spread/skill
    ratio ``0.5 * spread / skill`` then comes for free.

    Returns NaN where the observation is NaN, where every member is NaN, and (fair only) where ``m < 2``.
    """
    dtype = _out_dtype(forecast)
    f, y, point_shape = _flatten_points(forecast, obs, member_axis)
    n_points, n_members = int(f.shape[0]), int(f.shape[-1])
    rows = max(1, CHUNK_ELEMENTS // max(1, n_members))
    skill_parts, spread_parts = [], []
    for start in range(0, n_points, rows):
        fc, yc = f[start : start + rows], _f64(y[start : start + rows])
        sk, sp = _crps_terms(fc, yc, fair)
        skill_parts.append(sk)
        spread_parts.append(sp)
    skill = _concat(skill_parts, like=f).reshape(point_shape)
    spread = _concat(spread_parts, like=f).reshape(point_shape)
    return _cast(skill, dtype), _cast(spread, dtype)


def _crps_terms(f: Any, y: Any, fair: bool) -> tuple[Any, Any]:
    """(skill, spread) in float64 for members-last ``f`` and point-shaped ``y``."""
    m, skill_sum, pair_sum = _crps_sums(f, y)
    nan = float("nan")
    skill = _where((m > 0) & ~_isnan(y), skill_sum / _where(m > 0, m, 1.0), nan)
    if fair:
        denom = m * (m - 1.0)
        spread = _where(m > 1, 2.0 * pair_sum / _where(m > 1, denom, 1.0), nan)
    else:
        spread = _where(m > 0, 2.0 * pair_sum / _where(m > 0, m * m, 1.0), nan)
    spread = _where(_isnan(y), nan, spread)
    return skill, spread


def crps_ensemble(forecast: Array, obs: Array | float, member_axis: int = 0, fair: bool = True) -> Array:
    """Continuous ranked probability score of an ensemble, per point (lower is better).

    ``CRPS = E|X - y| - 0.5 E|X - X'|`` (Gneiting & Raftery 2007), estimated from the ``m`` non-NaN
    members at each point in sorted (rank) form, ``O(m log m)`` time and ``O(m)`` memory:

    * skill ``= (1/m) sum_i |x_i - y|``,
    * ``S = sum_{i<j} |x_j - x_i| = sum_i (2i - m - 1) x_(i)`` with ``x_(1) <= ... <= x_(m)``,
    * standard (empirical CDF, equals ``properscoring.crps_ensemble``): ``CRPS = skill - S / m^2``,
    * fair (Ferro 2014; Zamo & Naveau 2018), unbiased for the CRPS of the distribution the members
      are drawn from: ``CRPS_fair = skill - S / (m (m - 1))``.

    Parameters
    ----------
    forecast : array or tensor with the members along ``member_axis``.
    obs : observations broadcastable to ``forecast`` without its member axis.
    member_axis : axis of the members.
    fair : fair (default) or standard estimator.

    Returns NaN where ``obs`` is NaN or all members are NaN (fair: also where fewer than 2 members).
    """
    skill, spread = crps_components(forecast, obs, member_axis=member_axis, fair=fair)
    return skill - 0.5 * spread


def crps_between_groups(forecast: Array, obs: Array | float, groups: Any, member_axis: int = 0) -> Array:
    """Fair CRPS of a clustered ensemble, the spread term over pairs of members from *different* groups.

    For ensembles built as groups x members (HENS: checkpoints x perturbations) the members are not
    exchangeable, and the fair estimator of :func:`crps_ensemble` counts the small within-group
    distances in its spread term. If the groups are independent draws (independently trained
    checkpoints), two independent draws of the ensemble's distribution come from different groups, so
    ``E|X - X'|`` is estimated without bias by the mean over cross-group pairs only:

    ``CRPS = (1/m) sum_i |x_i - y| - (S - sum_g S_g) / (m^2 - sum_g m_g^2)``

    with ``S`` (``S_g``) the pair sum ``sum_{i<j} |x_i - x_j|`` over all members (over group ``g``) and
    ``m`` (``m_g``) the non-NaN member counts. With one member per group it equals the fair CRPS.
    ``groups``: one label per member. NaN where fewer than two groups have a member.
    """
    dtype = _out_dtype(forecast)
    f, y, point_shape = _flatten_points(forecast, obs, member_axis)
    labels = np.asarray(groups)
    if labels.shape != (int(f.shape[-1]),):
        raise UserError(
            f"groups must have one label per member ({int(f.shape[-1])}), got shape {labels.shape}"
        )
    uniq = np.unique(labels)
    rows = max(1, CHUNK_ELEMENTS // max(1, int(f.shape[-1])))
    parts = []
    for start in range(0, int(f.shape[0]), rows):
        fc, yc = f[start : start + rows], _f64(y[start : start + rows])
        m, skill_sum, pair_sum = _crps_sums(fc, yc)
        within_pairs, within_sum, groups_with_members = 0.0 * m, 0.0 * m, 0.0 * m
        for g in uniq:
            idx = np.flatnonzero(labels == g)
            cols = torch.as_tensor(idx, device=fc.device) if _is_torch(fc) else idx
            mg, _, sg = _crps_sums(fc[:, cols], yc)
            within_pairs = within_pairs + mg * mg
            within_sum = within_sum + sg
            groups_with_members = groups_with_members + (mg > 0)
        cross = m * m - within_pairs
        ok = (groups_with_members > 1) & ~_isnan(yc)
        crps = skill_sum / _where(m > 0, m, 1.0) - (pair_sum - within_sum) / _where(ok, cross, 1.0)
        parts.append(_where(ok, crps, float("nan")))
    return _cast(_concat(parts, like=f).reshape(point_shape), dtype)


# ----------------------------------------------------------------------------------------------------
# ensemble mean, spread, spread/skill
# ----------------------------------------------------------------------------------------------------


def _norm_axes(axes: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    return tuple(sorted({a % ndim for a in axes}))


def weighted_mean(
    x: Array, weights: Array | np.ndarray | None = None, axis: int | Sequence[int] | None = (-2, -1)
) -> Array:
    """NaN-aware weighted mean ``sum w x / sum w`` over ``axis`` (NaN points carry no weight).

    ``weights`` broadcasts against ``x`` (e.g. ``area_weights(lat)[:, None]`` for ``(..., lat, lon)``).
    """
    dtype = _out_dtype(x)
    xx = _f64(x)
    w = _f64(_as_backend(1.0 if weights is None else weights, xx))
    xx, w = _broadcast(xx, w)
    ax = _norm_axes(axis, xx.ndim)
    ok = ~_isnan(xx)
    num = _sum(_where(ok, w * _where(ok, xx, 0.0), 0.0), axis=ax)
    den = _sum(_where(ok, w, 0.0), axis=ax)
    return _cast(num / den, dtype)


def _nanmean_members(f: Any) -> Any:
    ok = ~_isnan(f)
    n = _count(ok)
    return _sum(_where(ok, f, 0.0), axis=-1) / _where(n > 0, n, float("nan"))


def _nanvar_members(f: Any, ddof: int = 1) -> Any:
    ok = ~_isnan(f)
    n = _count(ok)
    mu = _sum(_where(ok, f, 0.0), axis=-1) / _where(n > 0, n, float("nan"))
    dev = _where(ok, f - mu[..., None], 0.0)
    return _sum(dev * dev, axis=-1) / _where(n > ddof, n - ddof, float("nan"))


def ensemble_mean_rmse(
    forecast: Array,
    obs: Array,
    weights: Array | np.ndarray | None = None,
    member_axis: int = 0,
    reduce_axes: int | Sequence[int] | None = (-2, -1),
) -> Array:
    """Root of the (area-)weighted mean squared error of the ensemble mean.

    ``RMSE = sqrt( sum_p w_p (xbar_p - y_p)^2 / sum_p w_p )`` over ``reduce_axes`` of the point shape
    (the forecast shape without its member axis; default the last two, ``(lat, lon)``); ``xbar`` is the
    mean over non-NaN members. Use ``data_catalog.grid.area_weights(latitude)[:, None]`` as weights.
    Average squared errors over time *before* the root by including the time axis in ``reduce_axes``.
    """
    f, y, dtype = _prepare(forecast, obs, member_axis)
    err = _nanmean_members(f) - y
    mse = weighted_mean(err * err, weights, reduce_axes)
    return _cast(mse**0.5, dtype)


def ensemble_spread(
    forecast: Array,
    weights: Array | np.ndarray | None = None,
    member_axis: int = 0,
    reduce_axes: int | Sequence[int] | None = (-2, -1),
) -> Array:
    """Ensemble spread ``sqrt( area-mean of the unbiased member variance )``.

    ``var_p = sum_i (x_ip - xbar_p)^2 / (m_p - 1)`` over the ``m_p`` non-NaN members, then the
    ``weights``-weighted mean over ``reduce_axes`` (axes of the point shape), then the square root.
    """
    dtype = _out_dtype(forecast)
    f = _moveaxis(_f64(forecast), member_axis, -1)
    var = _nanvar_members(f, ddof=1)
    return _cast(weighted_mean(var, weights, reduce_axes) ** 0.5, dtype)


def spread_skill_ratio(spread: Array | float, rmse: Array | float, n_members: int) -> Array | float:
    """Spread/skill ratio with the finite-ensemble correction: ``sqrt((M + 1) / M) * spread / rmse``.

    For a perfect (statistically indistinguishable) ensemble of ``M`` members,
    ``E[(xbar - y)^2] = (1 + 1/M) sigma^2`` while the unbiased spread estimates ``sigma^2``, so the
    corrected ratio is 1 (Fortin et al. 2014). (earth2studio's ratio omits the factor and scores a
    perfect ensemble ``sqrt(M / (M + 1))``.)
    """
    if n_members < 1:
        raise UserError(f"spread_skill_ratio needs n_members >= 1, got {n_members}")
    return math.sqrt((n_members + 1.0) / n_members) * spread / rmse  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# rank histogram
# ----------------------------------------------------------------------------------------------------


def _rank_counts(f: Any, y: Any) -> tuple[Any, Any]:
    """Per point: number of members strictly below the observation, and number tied with it."""
    less = _count(f < y[..., None])
    eq = _count(f == y[..., None])
    return less, eq


def _tiebreak(less: Any, eq: Any, rng: np.random.Generator | torch.Generator) -> Any:
    """Rank = less + U{0, ..., eq} (random tie-breaking, Hamill 2001)."""
    u: Any
    if _is_torch(less):
        if isinstance(rng, torch.Generator):
            u = torch.rand(less.shape, generator=rng, device=rng.device, dtype=torch.float64)
            u = u.to(less.device)
        else:
            u = torch.as_tensor(rng.random(tuple(less.shape)), device=less.device)
        return less + torch.floor(u * (eq + 1))
    if isinstance(rng, torch.Generator):
        u = torch.rand(tuple(less.shape), generator=rng, dtype=torch.float64).numpy()
    else:
        u = rng.random(less.shape)
    return less + np.floor(u * (eq + 1))


def rank_histogram(
    forecast: Array,
    obs: Array,
    member_axis: int = 0,
    rng: np.random.Generator | torch.Generator | None = None,
) -> Any:
    """Counts of the observation's rank among the members (Talagrand diagram), length ``M + 1``.

    The rank is the number of members below the observation; ties are broken at random (uniformly among
    the tied positions) with ``rng``, which is required when the data can tie. Points with a NaN
    observation or any NaN member are skipped. A perfect ensemble gives a flat histogram.
    """
    f, y, _ = _prepare(forecast, obs, member_axis)
    m = f.shape[-1]
    ok = ~(_isnan(y) | (_sum(_isnan(f), axis=-1) > 0))
    less, eq = _rank_counts(f, y)
    if rng is None:
        if bool(_sum(eq[ok]) > 0):
            raise UserError("rank_histogram: ties between members and observation need an rng")
        rank = less
    else:
        rank = _tiebreak(less, eq, rng)
    rank = rank[ok]
    if _is_torch(rank):
        return torch.bincount(rank.reshape(-1).long(), minlength=m + 1)
    return np.bincount(np.asarray(rank).reshape(-1).astype(np.int64), minlength=m + 1)


# ----------------------------------------------------------------------------------------------------
# probabilistic event scores
# ----------------------------------------------------------------------------------------------------


def _event(x: Any, threshold: Any, greater: bool) -> Any:
    """1.0 where the event happens, 0.0 where not, NaN where ``x`` is NaN."""
    t = _f64(_as_backend(threshold, x))
    e = (x > t) if greater else (x < t)
    e = e.to(torch.float64) if _is_torch(e) else e.astype(np.float64)
    return _where(_isnan(x), float("nan"), e)


def event_probability(
    forecast: Array, threshold: Array | float, member_axis: int = 0, greater: bool = True
) -> tuple[Array, Array]:
    """Ensemble event probability ``p = k / m`` and member count ``m`` per point.

    ``k`` counts non-NaN members with ``x > threshold`` (``x < threshold`` if ``greater=False``);
    ``threshold`` broadcasts per point (fixed values or climatological percentiles).
    """
    f = _moveaxis(_f64(forecast), member_axis, -1)
    t = _f64(_as_backend(threshold, f))
    if t.ndim:
        t = t[..., None]
    ok = ~_isnan(f)
    e = (f > t) if greater else (f < t)
    k = _count(e & ok)
    m = _count(ok)
    return k / _where(m > 0, m, float("nan")), m


def brier_score(
    prob_or_forecast: Array,
    obs_event: Array,
    threshold: Array | float | None = None,
    member_axis: int | None = None,
    fair: bool = False,
    greater: bool = True,
) -> Array:
    """Brier score per point, ``(p - o)^2`` (Brier 1950), standard or fair for ensembles.

    Inputs:

    * ``threshold is None`` and ``member_axis is None``: ``prob_or_forecast`` is a probability, and
      ``obs_event`` the 0/1 outcome.
    * ``threshold is None`` and an integer ``member_axis``: ``prob_or_forecast`` holds per-member 0/1
      event indicators, ``obs_event`` the 0/1 outcome.
    * ``threshold`` given: ``prob_or_forecast`` is an ensemble of values (``member_axis`` defaults to 0)
      and ``obs_event`` the observed values; events are ``value > threshold`` (``<`` if
      ``greater=False``), ``threshold`` broadcasting per point (e.g. climatological percentiles).

    ``fair=True`` (ensembles only; Ferro 2014) removes the finite-ensemble bias:
    ``BS_fair = (k/m - o)^2 - (k/m)(1 - k/m) / (m - 1)``, whose expectation equals the Brier score of
    the probability the members are drawn with.
    """
    if threshold is None and member_axis is None:
        if fair:
            raise UserError(
                "fair Brier score needs an ensemble (member_axis or threshold), not probabilities"
            )
        dtype = _out_dtype(prob_or_forecast)
        p = _f64(prob_or_forecast)
        o = _f64(_as_backend(obs_event, p))
        return _cast((p - o) ** 2, dtype)
    ax = 0 if member_axis is None else member_axis
    dtype = _out_dtype(prob_or_forecast)
    x = _f64(prob_or_forecast)
    if threshold is None:
        p, m = event_probability(x, 0.5, member_axis=ax, greater=True)
        o = _f64(_as_backend(obs_event, x))
    else:
        p, m = event_probability(x, threshold, member_axis=ax, greater=greater)
        o = _event(_f64(_as_backend(obs_event, x)), threshold, greater)
    bs = (p - o) ** 2
    if fair:
        bs = bs - _where(m > 1, p * (1.0 - p) / _where(m > 1, m - 1.0, 1.0), float("nan"))
    return _cast(bs, dtype)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Reliability-diagram data: per probability bin, the mean forecast probability, the observed
    relative frequency and the number of cases (NaN where a bin is empty)."""

    bin_edges: np.ndarray
    forecast_probability: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray


def _np(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def reliability_curve(
    prob: Array, obs_event: Array, bins: int | Sequence[float] | np.ndarray = 10
) -> ReliabilityCurve:
    """Reliability diagram data (Wilks 2011, ch. 8) from probabilities and 0/1 outcomes.

    ``bins`` is a number of equal-width bins on [0, 1] or explicit edges; the last bin is closed.
    For an ``M``-member ensemble use ``bins = np.linspace(-0.5, M + 0.5, M + 2) / M`` to get one bin per
    ``k / M``. NaN probabilities or outcomes are skipped.
    """
    p = _np(prob).astype(np.float64).ravel()
    o = np.broadcast_to(_np(obs_event).astype(np.float64), _np(prob).shape).ravel()
    ok = ~(np.isnan(p) | np.isnan(o))
    p, o = p[ok], o[ok]
    edges = (
        np.linspace(0.0, 1.0, int(bins) + 1)
        if isinstance(bins, int | np.integer)
        else np.asarray(bins, float)
    )
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    counts = np.bincount(idx, minlength=nb).astype(np.int64)
    psum = np.bincount(idx, weights=p, minlength=nb)
    osum = np.bincount(idx, weights=o, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        fp = np.where(counts > 0, psum / counts, np.nan)
        of = np.where(counts > 0, osum / counts, np.nan)
    return ReliabilityCurve(edges, fp, of, counts)


@dataclass(frozen=True)
class RocCurve:
    """ROC curve data: hit rate and false-alarm rate for the decision ``p >= threshold``, ordered by
    decreasing threshold (so from (0, 0) to (1, 1))."""

    thresholds: np.ndarray
    hit_rate: np.ndarray
    false_alarm_rate: np.ndarray


def roc_curve(
    prob: Array,
    obs_event: Array,
    thresholds: Sequence[float] | np.ndarray | None = None,
    n_members: int | None = None,
) -> RocCurve:
    """Relative operating characteristic (Mason 1982): ``HR(t) = P(p >= t | o=1)``,
    ``FAR(t) = P(p >= t | o=0)``.

    Thresholds default to ``k / M`` for ``k = 0..M`` plus one above 1 (giving the (0, 0) end point) when
    ``n_members`` is given, else to the distinct forecast probabilities. NaN cases are skipped.
    """
    p = _np(prob).astype(np.float64).ravel()
    o = np.broadcast_to(_np(obs_event).astype(np.float64), _np(prob).shape).ravel()
    ok = ~(np.isnan(p) | np.isnan(o))
    p, ev = p[ok], o[ok] > 0.5
    if thresholds is None:
        base = np.arange(n_members + 1) / n_members if n_members else np.unique(p)
        thresholds = np.concatenate([base, [np.inf]])
    t = np.sort(np.asarray(thresholds, dtype=np.float64))[::-1]
    # p >= t with a small tolerance so that k/M computed two ways compares equal
    tol = 1e-9
    ps = np.sort(p[ev])
    pn = np.sort(p[~ev])
    n1, n0 = max(len(ps), 1), max(len(pn), 1)
    hits = len(ps) - np.searchsorted(ps, t - tol, side="left")
    fas = len(pn) - np.searchsorted(pn, t - tol, side="left")
    return RocCurve(t, hits / n1, fas / n0)


def roc_auc(curve: RocCurve) -> float:
    """Area under the ROC curve (trapezoidal; 0.5 for no skill, 1 for perfect discrimination)."""
    far = np.concatenate([[0.0], curve.false_alarm_rate, [1.0]])
    hr = np.concatenate([[0.0], curve.hit_rate, [1.0]])
    return float(np.sum(np.diff(far) * 0.5 * (hr[1:] + hr[:-1])))


# ----------------------------------------------------------------------------------------------------
# energy score
# ----------------------------------------------------------------------------------------------------


def energy_score(
    forecast: Array, obs: Array, member_axis: int = 0, channel_axis: int = 1, fair: bool = True
) -> Array:
    """Multivariate energy score over ``channel_axis`` (Gneiting & Raftery 2007), per point.

    ``ES = (1/m) sum_i ||x_i - y|| - 1/(2 m (m - 1)) sum_{i != j} ||x_i - x_j||`` (fair) or with
    ``1/(2 m^2)`` (standard). Reduces to the CRPS for one channel. ``channel_axis`` indexes the forecast
    (the obs has the same layout without the member axis). Loops over members (``O(m^2)`` time,
    ``O(m)`` memory per point). Channels should be comparable (standardise them first).
    """
    dtype = _out_dtype(forecast)
    nd = _f64(forecast).ndim
    ma, ca = member_axis % nd, channel_axis % nd
    f = _moveaxis(_moveaxis(_f64(forecast), ma, -1), ca - (ca > ma), -2)  # (..., C, M)
    oca = ca - (ca > ma)
    y = _moveaxis(_f64(_as_backend(obs, f)), oca, -1)  # (..., C)
    m = f.shape[-1]
    skill = 0.0
    for i in range(m):
        d = f[..., i] - y
        skill = skill + _sum(d * d, axis=-1) ** 0.5
    pair = 0.0
    for i in range(m):
        d = f[..., i : i + 1] - f[..., i + 1 :]
        pair = pair + _sum(_sum(d * d, axis=-2) ** 0.5, axis=-1)
    denom = m * (m - 1) if fair else m * m
    return _cast(skill / m - pair / denom, dtype)


# ----------------------------------------------------------------------------------------------------
# mergeable accumulator for inline scoring
# ----------------------------------------------------------------------------------------------------


def _from_finite_members(
    members: Any, obs: Any, member_axis: int, thresholds: Any, keep_sorted: bool
) -> tuple | None:
    """:meth:`EnsembleAccumulator.from_members` for members without NaN and without thresholds or
    sorted members (the inline scorer's case), reducing over the leading member axis of a contiguous
    copy instead of a strided last axis with a ``where`` per statistic: same statistics (to float64
    rounding: the sums run in another order), several times faster (docs/benchmarks.md "GPU"). NumPy
    or torch (both inputs tensors: on their device, e.g. a GPU). None when the general path is needed."""
    if thresholds is not None or keep_sorted or _is_torch(members) != _is_torch(obs):
        return None
    f: Any
    y: Any
    if _is_torch(members):
        f = torch.movedim(members, member_axis, 0).to(torch.float64).contiguous()
        y = obs.to(device=f.device, dtype=torch.float64)
    else:
        f = np.moveaxis(np.asarray(members), member_axis, 0)
        y = np.asarray(obs, dtype=np.float64)
    if f.ndim == 0 or f.shape[0] == 0 or tuple(y.shape) != tuple(f.shape[1:]):
        return None
    if not _is_torch(f):
        f = np.ascontiguousarray(f, dtype=np.float64)
    if not bool(np.isfinite(float(f.sum()))):  # a NaN or inf anywhere (one cheap pass): general path
        return None
    m = f.shape[0]
    mean = f.sum(0) / m
    dev = f - mean
    err = abs(f - y)
    n: Any
    if _is_torch(f):
        n = torch.full(y.shape, float(m), dtype=torch.float64, device=f.device)
        m2 = torch.einsum("i...,i...->...", dev, dev)
        min_abs_err = err.amin(0)
        less = (f < y).sum(0, dtype=torch.float64)
        eq = (f == y).sum(0, dtype=torch.float64)
    else:
        n = np.full(y.shape, float(m))
        m2 = np.einsum("i...,i...->...", dev, dev)
        min_abs_err = err.min(axis=0)
        less = np.count_nonzero(f < y, axis=0).astype(np.float64)
        eq = np.count_nonzero(f == y, axis=0).astype(np.float64)
    return (y, n, mean, m2, err.sum(0), min_abs_err, less, eq, None, None, None)


@dataclass
class EnsembleAccumulator:
    """Mergeable per-point partial sums of an ensemble against fixed observations.

    Build one per member block with :meth:`from_members`, combine with :meth:`merge` (associative and
    commutative, exact up to float rounding), and read the metrics off the merged result. Holds per point
    (shape ``point_shape``):

    * ``count`` (non-NaN members), ``mean`` and ``m2`` (sum of squared deviations; Chan et al. 1979
      parallel Welford merge),
    * ``abs_err_sum = sum_i |x_i - y|``, ``min_abs_err`` (best member),
    * ``n_less``/``n_equal`` (members below / tied with ``y``; rank histogram),
    * ``exceed`` (members ``> thresholds[k]``; shape ``(K, *point_shape)``) if thresholds were given,
    * ``sorted_members`` (members last, sorted, NaN-padded) if ``keep_sorted``: needed for the exact CRPS
      spread term; merged by sorting the concatenation.

    Everything is float64 (torch or numpy, following the input).
    """

    obs: Any
    count: Any
    mean: Any
    m2: Any
    abs_err_sum: Any
    min_abs_err: Any
    n_less: Any
    n_equal: Any
    exceed: Any = None
    thresholds: Any = None
    sorted_members: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_members(
        cls,
        members: Array,
        obs: Array,
        member_axis: int = 0,
        thresholds: Array | Sequence[float] | None = None,
        keep_sorted: bool = True,
    ) -> EnsembleAccumulator:
        """Partial sums of one block of members. ``thresholds`` has shape ``(K,)`` or ``(K, *point)``."""
        fast = _from_finite_members(members, obs, member_axis, thresholds, keep_sorted)
        if fast is not None:
            return cls(*fast)
        f, y, _ = _prepare(members, obs, member_axis)
        ok = ~_isnan(f)
        n = _count(ok)
        s = _sum(_where(ok, f, 0.0), axis=-1)
        mean = s / _where(n > 0, n, 1.0)
        dev = _where(ok, f - mean[..., None], 0.0)
        m2 = _sum(dev * dev, axis=-1)
        ae = abs(f - y[..., None])
        abs_err_sum = _sum(_where(ok, ae, 0.0), axis=-1)
        inf = float("inf")
        ae_inf = _where(ok, ae, inf)
        min_abs_err = ae_inf.min(dim=-1).values if _is_torch(ae_inf) else ae_inf.min(axis=-1)
        less, eq = _rank_counts(_where(ok, f, float("nan")), y)
        exceed = None
        th = None
        if thresholds is not None:
            th = _f64(_as_backend(thresholds, f))
            tt = th.reshape(th.shape[0], *([1] * (f.ndim - 1))) if th.ndim == 1 else th
            exceed = _count((f[None] > tt[..., None]) & ok[None])
        srt = _sort(f, axis=-1) if keep_sorted else None
        return cls(y, n, mean, m2, abs_err_sum, min_abs_err, less, eq, exceed, th, srt)

    def merge(self, other: EnsembleAccumulator) -> EnsembleAccumulator:
        """Combine two partial results (Chan et al. 1979 for mean and M2; sums add; sorted merge)."""
        na, nb = self.count, other.count
        n = na + nb
        nz = _where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * nb / nz
        m2 = self.m2 + other.m2 + delta * delta * na * nb / nz
        if _is_torch(self.min_abs_err):
            mn = torch.minimum(self.min_abs_err, other.min_abs_err)
        else:
            mn = np.minimum(self.min_abs_err, other.min_abs_err)
        exceed = None
        if self.exceed is not None and other.exceed is not None:
            exceed = self.exceed + other.exceed
        srt = None
        if self.sorted_members is not None and other.sorted_members is not None:
            cat: Any
            if _is_torch(self.sorted_members):
                cat = torch.cat([self.sorted_members, other.sorted_members], dim=-1)
            else:
                cat = np.concatenate([self.sorted_members, other.sorted_members], axis=-1)
            srt = _sort(cat, axis=-1)
        return EnsembleAccumulator(
            self.obs,
            n,
            mean,
            m2,
            self.abs_err_sum + other.abs_err_sum,
            mn,
            self.n_less + other.n_less,
            self.n_equal + other.n_equal,
            exceed,
            self.thresholds,
            srt,
        )

    __add__ = merge

    # --- metrics -----------------------------------------------------------------------------------

    @property
    def variance(self) -> Any:
        """Unbiased member variance ``M2 / (m - 1)`` (NaN where ``m < 2``)."""
        return _where(self.count > 1, self.m2 / _where(self.count > 1, self.count - 1.0, 1.0), float("nan"))

    @property
    def ensemble_mean(self) -> Any:
        return _where(self.count > 0, self.mean, float("nan"))

    @property
    def squared_error(self) -> Any:
        """``(xbar - y)^2`` of the ensemble mean, per point."""
        d = self.ensemble_mean - self.obs
        return d * d

    @property
    def best_member_error(self) -> Any:
        """``min_i |x_i - y|`` per point."""
        return _where(self.count > 0, self.min_abs_err, float("nan"))

    def crps(self, fair: bool = True) -> Any:
        """CRPS per point from the merged sorted members; equals :func:`crps_ensemble` on all members."""
        if self.sorted_members is None:
            raise UserError("EnsembleAccumulator built with keep_sorted=False cannot give the CRPS")
        return crps_ensemble(self.sorted_members, self.obs, member_axis=-1, fair=fair)

    def crps_components(self, fair: bool = True) -> tuple[Any, Any]:
        """(skill, spread) with ``crps = skill - 0.5 spread``; skill from the running ``sum |x - y|``."""
        if self.sorted_members is None:
            raise UserError("EnsembleAccumulator built with keep_sorted=False cannot give the CRPS")
        _, spread = crps_components(self.sorted_members, self.obs, member_axis=-1, fair=fair)
        skill = _where(self.count > 0, self.abs_err_sum / _where(self.count > 0, self.count, 1.0), np.nan)
        return skill, spread

    def rank_histogram(self, rng: np.random.Generator | torch.Generator) -> Any:
        """Rank-histogram counts (length ``M + 1``) over points with all members present."""
        m = int(self.count.max())
        ok = (self.count == m) & ~_isnan(self.obs)
        rank = _tiebreak(self.n_less, self.n_equal, rng)[ok]
        if _is_torch(rank):
            return torch.bincount(rank.reshape(-1).long(), minlength=m + 1)
        return np.bincount(np.asarray(rank).reshape(-1).astype(np.int64), minlength=m + 1)

    def exceedance_probability(self) -> Any:
        """``k / m`` per threshold, shape ``(K, *point_shape)``."""
        if self.exceed is None:
            raise UserError("EnsembleAccumulator built without thresholds")
        return self.exceed / _where(self.count > 0, self.count, float("nan"))
