"""Ensemble metric kernels against independent references: the pairwise CRPS definition, properscoring,
scoringrules (estimators named explicitly), analytic properties of perfect ensembles, real ensembles."""

from __future__ import annotations

import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from evaluation import metrics as M


def pairwise_crps(f: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """Reference: O(M^2) loop over member pairs, NaN members dropped per point (members on axis 0)."""
    out = np.full(y.shape, np.nan)
    for idx in np.ndindex(y.shape):
        x = f[(slice(None), *idx)]
        x = x[~np.isnan(x)]
        m = len(x)
        if m == 0 or np.isnan(y[idx]) or (fair and m < 2):
            continue
        skill = np.mean(np.abs(x - y[idx]))
        pair = sum(abs(x[i] - x[j]) for i in range(m) for j in range(m))
        out[idx] = skill - pair / (2 * m * (m - 1) if fair else 2 * m * m)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def test_crps_matches_pairwise_and_properscoring(rng: np.random.Generator) -> None:
    f = rng.gamma(2.0, 3.0, size=(13, 6, 5))
    y = rng.gamma(2.0, 3.0, size=(6, 5))
    fair = M.crps_ensemble(f, y, fair=True)
    std = M.crps_ensemble(f, y, fair=False)
    np.testing.assert_allclose(fair, pairwise_crps(f, y, True), rtol=1e-6)
    np.testing.assert_allclose(std, pairwise_crps(f, y, False), rtol=1e-6)
    np.testing.assert_allclose(std, ps.crps_ensemble(y, np.moveaxis(f, 0, -1)), rtol=1e-6)
    # fair = standard + S/m^2 - S/(m(m-1)) < standard
    assert np.all(fair < std)


@pytest.mark.parametrize(
    ("estimator", "fair"), [("fair", True), ("pwm", True), ("nrg", False), ("qd", False)]
)
def test_crps_matches_scoringrules_named_estimators(
    rng: np.random.Generator, estimator: str, fair: bool
) -> None:
    # scoringrules 0.10: "fair" and "pwm" are the fair (Ferro 2014) estimator; "nrg" (energy form)
    # and "qd" (quantile decomposition) are the standard empirical-CDF CRPS.
    f = rng.normal(size=(20, 40))
    y = rng.normal(size=40)
    ref = sr.crps_ensemble(y, f, m_axis=0, estimator=estimator)
    np.testing.assert_allclose(M.crps_ensemble(f, y, fair=fair), ref, rtol=1e-6, atol=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    members=st.lists(
        st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3), st.just(float("nan"))),
        min_size=1,
        max_size=9,
    ),
    obs=st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3)),
)
def test_crps_property_pairwise_with_ties_and_nans(members: list[float], obs: float) -> None:
    f = np.asarray(members, dtype=np.float64)[:, None]
    y = np.asarray([obs])
    for fair in (True, False):
        got = M.crps_ensemble(f, y, fair=fair)
        ref = pairwise_crps(f, y, fair)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    std = M.crps_ensemble(f, y, fair=False)[0]
    if not np.isnan(std):  # the standard CRPS is a proper score of a distribution: never negative
        assert std >= -1e-9 * (1.0 + abs(obs) + np.nanmax(np.abs(f)))


def test_crps_member_axis_and_broadcast(rng: np.random.Generator) -> None:
    f = rng.normal(size=(4, 9, 7))
    y = rng.normal(size=(4, 1))  # broadcasts over the last point axis
    a = M.crps_ensemble(f, y, member_axis=1)
    b = M.crps_ensemble(np.moveaxis(f, 1, 0), np.broadcast_to(y, (4, 7)))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_crps_nan_members_use_effective_m(rng: np.random.Generator) -> None:
    f = rng.normal(size=(8, 30))
    y = rng.normal(size=30)
    f[rng.random(f.shape) < 0.3] = np.nan
    f[:, 0] = np.nan  # all members missing
    f[1:, 1] = np.nan  # a single member
    y[2] = np.nan  # missing observation
    for fair in (True, False):
        got = M.crps_ensemble(f, y, fair=fair)
        ref = pairwise_crps(f, y, fair)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        assert np.isnan(got[0]) and np.isnan(got[2])
        # per-point equality with the metric on the non-NaN subset
        for j in (3, 7, 11):
            x = f[:, j][~np.isnan(f[:, j])]
            np.testing.assert_allclose(got[j], M.crps_ensemble(x, y[j], fair=fair), rtol=1e-12)
    assert np.isnan(M.crps_ensemble(f, y, fair=True)[1])
    np.testing.assert_allclose(M.crps_ensemble(f, y, fair=False)[1], abs(f[0, 1] - y[1]))


def test_crps_torch_numpy_agree(rng: np.random.Generator) -> None:
    f = rng.normal(size=(16, 3, 8)).astype(np.float32)
    y = rng.normal(size=(3, 8)).astype(np.float32)
    f[2, 0, 0] = np.nan
    for fair in (True, False):
        n = M.crps_ensemble(f, y, fair=fair)
        t = M.crps_ensemble(torch.from_numpy(f), torch.from_numpy(y), fair=fair)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
        assert n.dtype == np.float32
        np.testing.assert_allclose(t.numpy(), n, rtol=1e-6)


def test_crps_point_blocks_join_exactly(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    f = rng.normal(size=(7, 5, 11)).astype(np.float32)
    y = rng.normal(size=(5, 11)).astype(np.float32)
    whole = M.crps_ensemble(f, y)
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 20)  # blocks of 2 points
    np.testing.assert_array_equal(M.crps_ensemble(f, y), whole)
    np.testing.assert_allclose(
        M.crps_ensemble(torch.from_numpy(f), torch.from_numpy(y)).numpy(), whole, rtol=1e-6
    )


def test_crps_components(rng: np.random.Generator) -> None:
    f = rng.normal(size=(10, 50))
    y = rng.normal(size=50)
    skill, spread = M.crps_components(f, y)
    np.testing.assert_allclose(skill, np.mean(np.abs(f - y), axis=0))
    pairs = np.abs(f[:, None] - f[None]).sum(axis=(0, 1)) / (10 * 9)
    np.testing.assert_allclose(spread, pairs, rtol=1e-10)
    np.testing.assert_allclose(skill - 0.5 * spread, M.crps_ensemble(f, y), rtol=1e-12)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("store", "var", "stride"),
    [("ifs_ens_z500_europe_1deg.zarr", "geopotential", 3), ("era5_eda_members_3deg.zarr", "temperature", 2)],
)
def test_crps_real_ensembles(realdata, store: str, var: str, stride: int) -> None:  # noqa: ANN001
    import xarray as xr

    da = xr.open_zarr(realdata / store)[var]
    da = da.isel({d: 0 for d in da.dims if d not in ("number", "latitude", "longitude")})
    arr = da.transpose("number", "latitude", "longitude").values.astype(np.float64)[:, ::stride, ::stride]
    # the first member (the IFS control, an EDA member) plays the observation for the others
    y, f = arr[0], arr[1:]
    assert f.shape[0] in (50, 9)
    np.testing.assert_allclose(
        M.crps_ensemble(f, y, fair=False), ps.crps_ensemble(y, np.moveaxis(f, 0, -1)), rtol=1e-6
    )
    np.testing.assert_allclose(
        M.crps_ensemble(f, y, fair=True), sr.crps_ensemble(y, f, m_axis=0, estimator="fair"), rtol=1e-6
    )
    np.testing.assert_allclose(
        M.crps_ensemble(
            torch.from_numpy(f.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
        ).numpy(),
        M.crps_ensemble(f, y),
        rtol=1e-4,
        atol=1e-6 * np.abs(y).max(),
    )


def test_spread_skill_ratio_perfect_ensemble_is_one(rng: np.random.Generator) -> None:
    m, n = 5, 200_000
    # member and truth drawn from the same point-dependent distribution
    mu = rng.normal(size=n) * 3
    sig = rng.uniform(0.5, 2.0, size=n)
    f = mu + sig * rng.normal(size=(m, n))
    y = mu + sig * rng.normal(size=n)
    rmse = M.ensemble_mean_rmse(f, y, reduce_axes=None)
    spread = M.ensemble_spread(f, reduce_axes=None)
    ratio = M.spread_skill_ratio(spread, rmse, m)
    # sampling sd of the ratio ~ 0.004 here; the uncorrected ratio would be sqrt(5/6) = 0.913
    assert abs(ratio - 1.0) < 0.02
    assert abs(spread / rmse - np.sqrt(m / (m + 1))) < 0.02


def test_rmse_and_spread_weighted(rng: np.random.Generator) -> None:
    lat = np.linspace(87.1875, -87.1875, 32)
    w = area_weights(lat)[:, None]
    f = rng.normal(size=(4, 3, 32, 64))
    y = rng.normal(size=(3, 32, 64))
    rmse = M.ensemble_mean_rmse(f, y, w)
    ref = np.sqrt(((f.mean(0) - y) ** 2 * w).sum(axis=(-2, -1)) / (w.sum() * 64))
    np.testing.assert_allclose(rmse, ref, rtol=1e-12)
    spread = M.ensemble_spread(f, w)
    ref_s = np.sqrt((f.var(0, ddof=1) * w).sum(axis=(-2, -1)) / (w.sum() * 64))
    np.testing.assert_allclose(spread, ref_s, rtol=1e-12)
    t = M.ensemble_mean_rmse(torch.from_numpy(f), torch.from_numpy(y), w)
    np.testing.assert_allclose(t.numpy(), rmse, rtol=1e-12)


def test_rank_histogram_flat_for_perfect_ensemble(rng: np.random.Generator) -> None:
    m, n = 9, 50_000
    f = rng.normal(size=(m, n))
    y = rng.normal(size=n)
    counts = M.rank_histogram(f, y, rng=rng)
    assert counts.shape == (m + 1,) and counts.sum() == n
    assert stats.chisquare(counts).pvalue > 1e-3
    # an under-dispersed ensemble is U-shaped and fails the test
    counts_u = M.rank_histogram(0.5 * f, y, rng=rng)
    assert stats.chisquare(counts_u).pvalue < 1e-10
    assert counts_u[0] > 2 * counts_u[m // 2]


def test_rank_histogram_ties_random_breaking(rng: np.random.Generator) -> None:
    # discrete data: ties everywhere; random tie breaking keeps a perfect ensemble flat
    m, n = 4, 40_000
    f = rng.integers(0, 3, size=(m, n)).astype(float)
    y = rng.integers(0, 3, size=n).astype(float)
    counts = M.rank_histogram(f, y, rng=np.random.default_rng(1))
    assert stats.chisquare(counts).pvalue > 1e-3
    with pytest.raises(UserError):
        M.rank_histogram(f, y)
    t = M.rank_histogram(torch.from_numpy(f), torch.from_numpy(y), rng=torch.Generator().manual_seed(3))
    assert int(t.sum()) == n and stats.chisquare(t.numpy()).pvalue > 1e-3


def test_brier_standard_and_fair(rng: np.random.Generator) -> None:
    m, n = 4, 400_000
    p_true = rng.uniform(size=n)
    members = (rng.random((m, n)) < p_true).astype(float)
    o = (rng.random(n) < p_true).astype(float)
    bs_true = M.brier_score(p_true, o)  # probability form
    bs_std = M.brier_score(members, o, member_axis=0)
    bs_fair = M.brier_score(members, o, member_axis=0, fair=True)
    # the fair ensemble Brier score is unbiased for the Brier score of p_true; the standard one is not:
    # E[BS_std] - E[BS(p)] = E[p(1-p)]/m = (1/6)/4
    se = bs_fair.std() / np.sqrt(n)
    assert abs(bs_fair.mean() - bs_true.mean()) < 5 * se
    np.testing.assert_allclose(bs_std.mean() - bs_true.mean(), 1 / 6 / m, atol=5 * se)
    # threshold form (continuous values) equals the indicator form
    vals = rng.normal(size=(6, 100))
    obs = rng.normal(size=100)
    thr = rng.normal(size=100) * 0.3  # per-point thresholds (e.g. climatological percentiles)
    a = M.brier_score(vals, obs, threshold=thr, fair=True)
    b = M.brier_score((vals > thr).astype(float), (obs > thr).astype(float), member_axis=0, fair=True)
    np.testing.assert_allclose(a, b)
    # reference for the standard form: properscoring's Brier score of the ensemble probability
    p = (vals > thr).mean(0)
    np.testing.assert_allclose(
        M.brier_score(vals, obs, threshold=thr), ps.brier_score((obs > thr).astype(float), p)
    )
    with pytest.raises(UserError):
        M.brier_score(p, obs > thr, fair=True)


def test_roc_auc_random_and_perfect(rng: np.random.Generator) -> None:
    m, n = 10, 100_000
    f = rng.normal(size=(m, n))
    y = rng.normal(size=n)
    p, _ = M.event_probability(f, 1.0)
    curve = M.roc_curve(p, y > 1.0, n_members=m)
    assert curve.hit_rate[0] == 0.0 and curve.hit_rate[-1] == 1.0
    assert np.all(np.diff(curve.hit_rate) >= 0) and np.all(np.diff(curve.false_alarm_rate) >= 0)
    assert abs(M.roc_auc(curve) - 0.5) < 0.01
    # perfect discrimination
    assert M.roc_auc(M.roc_curve((y > 1.0).astype(float), y > 1.0)) == pytest.approx(1.0)
    # against the Mann-Whitney statistic for a skilful forecast (ties counted half)
    p2 = np.clip(np.round((y + rng.normal(size=n)) * 2) / 10 + 0.5, 0, 1)
    ev = y > 0.5
    u = stats.mannwhitneyu(p2[ev], p2[~ev]).statistic / (ev.sum() * (~ev).sum())
    assert M.roc_auc(M.roc_curve(p2, ev)) == pytest.approx(u, rel=1e-9)


def test_reliability_curve_calibrated(rng: np.random.Generator) -> None:
    n = 200_000
    p = rng.uniform(size=n)
    o = rng.random(n) < p
    rc = M.reliability_curve(p, o, bins=10)
    assert rc.counts.sum() == n
    se = np.sqrt(rc.forecast_probability * (1 - rc.forecast_probability) / rc.counts)
    assert np.all(np.abs(rc.observed_frequency - rc.forecast_probability) < 5 * se + 1e-9)


def test_energy_score_reduces_to_crps_and_matches_scoringrules(rng: np.random.Generator) -> None:
    f = rng.normal(size=(7, 20, 1))  # member, point, channel
    y = rng.normal(size=(20, 1))
    es = M.energy_score(f, y, member_axis=0, channel_axis=2)
    np.testing.assert_allclose(es, M.crps_ensemble(f[..., 0], y[..., 0]), rtol=1e-10)
    f3 = rng.normal(size=(7, 20, 3))
    y3 = rng.normal(size=(20, 3))
    ref = sr.es_ensemble(y3, np.moveaxis(f3, 0, 1), m_axis=-2, v_axis=-1, estimator="fair")
    np.testing.assert_allclose(M.energy_score(f3, y3, 0, 2, fair=True), ref, rtol=1e-8)
    ref_nrg = sr.es_ensemble(y3, np.moveaxis(f3, 0, 1), m_axis=-2, v_axis=-1, estimator="nrg")
    np.testing.assert_allclose(M.energy_score(f3, y3, 0, 2, fair=False), ref_nrg, rtol=1e-8)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_accumulator_merge_equals_one_shot(rng: np.random.Generator, backend: str) -> None:
    m = 23
    f = rng.normal(size=(m, 4, 6))
    y = rng.normal(size=(4, 6))
    f[rng.random(f.shape) < 0.05] = np.nan
    thr = np.array([-0.5, 0.0, 1.0])
    conv = (lambda a: torch.from_numpy(a)) if backend == "torch" else (lambda a: a)
    blocks = [(0, 5), (5, 6), (6, 15), (15, 23)]
    parts = [M.EnsembleAccumulator.from_members(conv(f[a:b]), conv(y), thresholds=thr) for a, b in blocks]
    # merge in a tree, out of order: associativity and commutativity
    acc = (parts[2] + parts[0]) + (parts[3] + parts[1])
    tonp = (lambda a: a.numpy()) if backend == "torch" else (lambda a: a)
    for fair in (True, False):
        np.testing.assert_allclose(tonp(acc.crps(fair)), M.crps_ensemble(f, y, fair=fair), rtol=1e-12)
        skill, spread = acc.crps_components(fair)
        rs, rp = M.crps_components(f, y, fair=fair)
        np.testing.assert_allclose(tonp(skill), rs, rtol=1e-12)
        np.testing.assert_allclose(tonp(spread), rp, rtol=1e-12)
    np.testing.assert_allclose(tonp(acc.ensemble_mean), np.nanmean(f, 0), rtol=1e-12)
    np.testing.assert_allclose(tonp(acc.variance), np.nanvar(f, 0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(tonp(acc.best_member_error), np.nanmin(np.abs(f - y), 0))
    np.testing.assert_allclose(
        tonp(acc.exceedance_probability()),
        np.stack([M.event_probability(f, t)[0] for t in thr]),
    )
    full = M.EnsembleAccumulator.from_members(conv(f), conv(y))
    np.testing.assert_array_equal(tonp(acc.n_less), tonp(full.n_less))
    np.testing.assert_array_equal(tonp(acc.n_equal), tonp(full.n_equal))


def test_accumulator_finite_fast_path_equals_general_path(rng: np.random.Generator) -> None:
    """The inline scorer's case (no NaN, no thresholds, unsorted) takes a members-first fast path, on
    NumPy and on tensors: every statistic equals the general (torch, members-last) path; with a NaN it
    falls back."""
    f = rng.normal(size=(9, 3, 5, 7)) * 100 + 5000
    y = (rng.normal(size=(3, 5, 7)) * 100 + 5000).astype(np.float32).astype(np.float64)
    f[2, 0, 1, 1] = y[0, 1, 1]  # a tie for the rank counts
    for axis in (0, 2):
        fa = np.moveaxis(f, 0, axis).astype(np.float32)
        fast = M.EnsembleAccumulator.from_members(fa, y, member_axis=axis, keep_sorted=False)
        ref = M.EnsembleAccumulator.from_members(torch.from_numpy(fa), torch.from_numpy(y), member_axis=axis)
        for k in ("count", "mean", "m2", "abs_err_sum", "min_abs_err", "n_less", "n_equal"):
            got, want = getattr(fast, k), getattr(ref, k).numpy()
            assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=k)
        assert fast.n_equal[0, 1, 1] == 1 and fast.sorted_members is None
        # the same fast path on tensors (the inline scorer on a GPU), checked on the CPU
        fast_t = M.EnsembleAccumulator.from_members(
            torch.from_numpy(fa), torch.from_numpy(y), member_axis=axis, keep_sorted=False
        )
        assert (
            M._from_finite_members(torch.from_numpy(fa), torch.from_numpy(y), axis, None, False) is not None
        )
        for k in ("count", "mean", "m2", "abs_err_sum", "min_abs_err", "n_less", "n_equal"):
            got_t = getattr(fast_t, k)
            assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
            np.testing.assert_allclose(got_t.numpy(), getattr(ref, k).numpy(), rtol=1e-12, err_msg=k)
    fn = f.copy()
    fn[0, 0, 0, 0] = np.nan
    acc = M.EnsembleAccumulator.from_members(fn, y, keep_sorted=False)
    assert acc.count[0, 0, 0] == 8 and acc.count[1, 0, 0] == 9
    np.testing.assert_allclose(acc.mean[0, 0, 0], np.nanmean(fn[:, 0, 0, 0]), rtol=1e-12)


def test_accumulator_rank_histogram(rng: np.random.Generator) -> None:
    f = rng.normal(size=(6, 500))
    y = rng.normal(size=500)
    acc = M.EnsembleAccumulator.from_members(f[:2], y) + M.EnsembleAccumulator.from_members(f[2:], y)
    np.testing.assert_array_equal(acc.rank_histogram(rng), M.rank_histogram(f, y, rng=rng))


# --------------------------------------------------------------------------------------------------
# regions (evaluation/regions.py)
# --------------------------------------------------------------------------------------------------


def test_region_area_fractions_analytic() -> None:
    from evaluation.regions import region_mask, region_weights

    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    gw = region_weights(lat, lon, "global")
    np.testing.assert_allclose(gw, np.broadcast_to(area_weights(lat)[:, None], gw.shape))
    total = gw.sum()
    # area fraction of a latitude band [a, b] is (sin b - sin a) / 2
    for name, (a, b) in {
        "tropics": (-20, 20),
        "nhextratropics": (20, 90),
        "shextratropics": (-90, -20),
    }.items():
        frac = (gw * region_mask(lat, lon, name)).sum() / total
        exact = (np.sin(np.deg2rad(b)) - np.sin(np.deg2rad(a))) / 2
        assert abs(frac - exact) < 0.25 / 180 * np.pi  # within one row's width
    # a box's area: 60 degrees of longitude -> 1/6 of its band
    mask = region_mask(lat, lon, (30, 60, 330, 30))
    frac = (gw * mask).sum() / total
    exact = (np.sin(np.deg2rad(60)) - np.sin(np.deg2rad(30))) / 2 / 6
    assert abs(frac - exact) / exact < 0.02


def test_region_longitude_wrap_and_conventions() -> None:
    from evaluation.regions import Region, region_mask

    lat = np.array([50.0, 10.0])
    lon360 = np.arange(0, 360, 10.0)
    lon180 = np.where(lon360 >= 180, lon360 - 360, lon360)
    box = Region("atl", 0, 60, 340, 20)
    m360 = region_mask(lat, lon360, box)
    m180 = region_mask(lat, lon180, box)
    np.testing.assert_array_equal(m360, m180)
    expected = (lon360 >= 340) | (lon360 <= 20)
    np.testing.assert_array_equal(m360[0], expected)
    with pytest.raises(UserError):
        region_mask(lat, lon360, "atlantis")
    with pytest.raises(UserError):
        Region("bad", 50, 10)


def test_region_mean_numpy_torch(rng: np.random.Generator) -> None:
    from evaluation.regions import region_mean, region_weights

    lat = np.linspace(87.1875, -87.1875, 32)
    lon = np.arange(64) * 5.625
    x = rng.normal(size=(3, 32, 64))
    x[0, 3, 4] = np.nan
    got = region_mean(x, lat, lon, "nhextratropics")
    w = region_weights(lat, lon, "nhextratropics")
    ref = [np.nansum(x[i] * w) / np.sum(w * ~np.isnan(x[i])) for i in range(3)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(region_mean(torch.from_numpy(x), lat, lon, "nhextratropics").numpy(), got)
    # axis order does not matter
    np.testing.assert_allclose(
        region_mean(np.moveaxis(x, 0, -1), lat, lon, "tropics", 0, 1), region_mean(x, lat, lon, "tropics")
    )


def test_crps_between_groups_brute_force_and_limits() -> None:
    """``crps_between_groups`` equals the brute-force ``mean|x - y| - 0.5 mean_{g(i) != g(j)} |x_i - x_j|``
    (NaN members dropped, unequal groups, numpy and torch); with one member per group it is the fair
    CRPS; and for a clustered ensemble (4 groups x 4 members a hair apart) it equals the fair CRPS of one
    member per group, which the all-pairs fair CRPS of the 16 members overstates."""
    from evaluation.metrics import crps_between_groups, crps_ensemble

    rng = np.random.default_rng(8)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    x = rng.standard_normal((10, 5, 7)) * 2.0
    x[1, 0, 0] = np.nan
    x[[3, 4], 2, 3] = np.nan  # a whole group missing at one point
    x[:, 4, 6] = np.nan  # every member missing
    x[[0, 1, 2, 5, 6, 7, 8, 9], 1, 1] = np.nan  # only group 1 left: undefined
    y = rng.standard_normal((5, 7))
    got = crps_between_groups(x, y, groups)
    expect = np.full((5, 7), np.nan)
    for i in range(5):
        for j in range(7):
            v = x[:, i, j]
            ok = ~np.isnan(v)
            if len(set(groups[ok])) < 2:
                continue
            vv, gg = v[ok], groups[ok]
            cross = [
                abs(a - b)
                for a, ga in zip(vv, gg, strict=True)
                for b, gb in zip(vv, gg, strict=True)
                if ga != gb
            ]
            expect[i, j] = np.mean(np.abs(vv - y[i, j])) - 0.5 * np.mean(cross)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(got[1, 1]) and np.isnan(got[4, 6]) and np.isfinite(got[2, 3])
    torch_got = crps_between_groups(torch.from_numpy(x), torch.from_numpy(y), groups)
    np.testing.assert_allclose(torch_got.numpy(), expect, rtol=1e-12, atol=1e-12, equal_nan=True)
    one_each = x[[0, 3, 5, 9]]
    np.testing.assert_allclose(
        crps_between_groups(one_each, y, [0, 1, 2, 3]), crps_ensemble(one_each, y, fair=True), rtol=1e-12
    )
    centres = rng.standard_normal((4, 200)) * 3.0
    clustered = np.repeat(centres, 4, axis=0) + 1e-9 * rng.standard_normal((16, 200))
    obs = rng.standard_normal(200)
    ref = crps_ensemble(centres, obs, fair=True)
    np.testing.assert_allclose(
        crps_between_groups(clustered, obs, np.repeat(np.arange(4), 4)), ref, atol=1e-8
    )
    assert np.mean(crps_ensemble(clustered, obs, fair=True)) > np.mean(ref) + 0.1
    with pytest.raises(UserError, match="one label per member"):
        crps_between_groups(x, y, groups[:-1])
