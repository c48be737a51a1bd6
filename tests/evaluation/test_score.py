"""Front-end scorer: values against direct numpy references, schedulers, chunking, I/O, real data."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import properscoring as ps
import pytest
import scoringrules as sr
import xarray as xr
from dask.callbacks import Callback

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from evaluation import open_scores, score_forecast, write_scores
from evaluation.regions import region_mask

VARS = ("z500", "t850")
M = 16
LAT = np.linspace(-87.1875, 87.1875, 32)  # stored ascending, as WeatherBench2 does
LON = np.arange(64) * 5.625
LEADS = pd.to_timedelta([0, 6, 12], unit="h")


def make_stores(root: Path, seed: int = 0, members: int = M) -> tuple[Path, Path]:
    """Synthetic truth (6-hourly, 3 days) and a WB2-layout forecast store (3 inits x 3 leads) on disk."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2020-01-01", periods=12, freq="6h")
    scale = {"z500": 500.0, "t850": 5.0}
    base = {"z500": 54000.0, "t850": 270.0}
    truth = xr.Dataset(
        {
            v: (
                ("time", "latitude", "longitude"),
                (base[v] + scale[v] * rng.standard_normal((12, 32, 64))).astype("f4"),
            )
            for v in VARS
        },
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )
    inits = times[:3]
    data = {}
    for v in VARS:
        arr = np.empty((3, members, 3, 32, 64), "f4")
        for i, t0 in enumerate(inits):
            for j, lead in enumerate(LEADS):
                y = truth[v].sel(time=t0 + lead).values
                noise = rng.standard_normal((members, 32, 64)) * scale[v] * 0.3 * (1 + j)
                arr[i, :, j] = y + 0.1 * scale[v] * j + noise
        data[v] = (("time", "number", "prediction_timedelta", "latitude", "longitude"), arr, {"units": "K"})
    fc = xr.Dataset(
        data,
        coords={
            "time": inits,
            "number": np.arange(members),
            "prediction_timedelta": LEADS,
            "latitude": LAT,
            "longitude": LON,
        },
    )
    tpath, fpath = root / "truth.zarr", root / "forecast.zarr"
    truth.chunk({"time": 1}).to_zarr(tpath, mode="w", consolidated=False)
    fc.chunk({"time": 1, "number": 4, "prediction_timedelta": 1}).to_zarr(fpath, mode="w", consolidated=False)
    return fpath, tpath


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_stores(tmp_path_factory.mktemp("score"))


def _loaded(fpath: Path, tpath: Path) -> tuple[xr.Dataset, xr.Dataset]:
    fc = xr.open_zarr(fpath, consolidated=False).load().isel(latitude=slice(None, None, -1))
    tr = xr.open_zarr(tpath, consolidated=False).load().isel(latitude=slice(None, None, -1))
    return fc, tr


def _truth_at_valid(fc: xr.Dataset, tr: xr.Dataset, v: str) -> np.ndarray:
    out = np.empty((fc.sizes["time"], fc.sizes["prediction_timedelta"], 32, 64))
    for i, t0 in enumerate(fc.time.values):
        for j, lead in enumerate(fc.prediction_timedelta.values):
            out[i, j] = tr[v].sel(time=t0 + lead).values
    return out


def _fair_crps_pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fair CRPS from its pairwise definition, members on axis 0 (Ferro 2014)."""
    m = x.shape[0]
    skill = np.abs(x - y[None]).mean(0)
    pair = np.abs(x[:, None] - x[None, :]).sum((0, 1))
    return skill - pair / (2 * m * (m - 1))


def test_values_match_direct_numpy(stores: tuple[Path, Path]) -> None:
    fpath, tpath = stores
    th = {"z500": [54000.0, 54500.0]}
    s = score_forecast(fpath, tpath, thresholds=th).sel(forecast="forecast")
    fc, tr = _loaded(fpath, tpath)
    lat = fc.latitude.values
    w2 = area_weights(lat)[:, None] * np.ones(64)
    for v in VARS:
        x = fc[v].values.astype(np.float64)  # (t, M, l, y, x)
        y = _truth_at_valid(fc, tr, v)
        crps = np.stack([_fair_crps_pairwise(x[:, :, j].transpose(1, 0, 2, 3), y[:, j]) for j in range(3)], 1)
        xbar = x.mean(1)
        se = (xbar - y) ** 2
        var = x.var(1, ddof=1)
        for region in ("global", "nhextratropics", "tropics"):
            w = w2 * region_mask(lat, fc.longitude.values, region)
            amean = lambda a, w=w: (a * w).sum((-2, -1)).mean(0) / w.sum()  # noqa: E731
            got = s.sel(variable=v, region=region)
            np.testing.assert_allclose(got.crps.values, amean(crps), rtol=1e-5)
            np.testing.assert_allclose(got.rmse.values, np.sqrt(amean(se)), rtol=1e-5)
            np.testing.assert_allclose(got.spread.values, np.sqrt(amean(var)), rtol=1e-5)
            ssr = np.sqrt((M + 1) / M) * np.sqrt(amean(var)) / np.sqrt(amean(se))
            np.testing.assert_allclose(got.spread_skill_ratio.values, ssr, rtol=1e-5)
            skill = np.abs(x - y[:, None]).mean(1)
            np.testing.assert_allclose(got.crps_skill.values, amean(skill), rtol=1e-5)
            np.testing.assert_allclose(
                got.crps_skill.values - got.crps_spread.values, got.crps.values, rtol=1e-9
            )
            # rank histogram: every point of the region counted once per init; float32 ties (member ==
            # truth) are broken at random, so only tied points may move between neighbouring ranks
            rank = (x < y[:, None]).sum(1)
            ties = (x == y[:, None]).any(1)
            mask = region_mask(lat, fc.longitude.values, region)
            for j in range(3):
                ref = np.bincount(rank[:, j][:, mask].ravel(), minlength=M + 1)
                hist = got.rank_histogram.isel(prediction_timedelta=j).values[: M + 1]
                assert hist.sum() == ref.sum() == 3 * mask.sum()
                assert np.abs(hist - ref).sum() <= 2 * ties[:, j][:, mask].sum()
    # Brier (fair) and ROC AUC for z500 > 54500, global, area-weighted
    x = fc["z500"].values.astype(np.float64)
    y = _truth_at_valid(fc, tr, "z500")
    p = (x > 54500.0).mean(1)
    o = (y > 54500.0).astype(float)
    bs = (p - o) ** 2 - p * (1 - p) / (M - 1)
    got = s.sel(variable="z500", region="global", threshold=1)
    wb = np.broadcast_to(w2, p.shape)
    np.testing.assert_allclose(got.brier.values, (bs * wb).sum((0, 2, 3)) / wb.sum((0, 2, 3)), rtol=1e-5)
    for j in range(3):
        pj, oj, wj = p[:, j].ravel(), o[:, j].ravel(), wb[:, j].ravel()
        levels = np.arange(M + 2) / M  # p >= k/M, plus one above 1
        hr = [(wj * oj * (pj >= t - 1e-9)).sum() / (wj * oj).sum() for t in levels]
        far = [(wj * (1 - oj) * (pj >= t - 1e-9)).sum() / (wj * (1 - oj)).sum() for t in levels]
        auc = np.trapezoid(hr[::-1], far[::-1])
        np.testing.assert_allclose(got.roc_auc.values[j], auc, rtol=1e-6)
        # reliability: observed frequency in the bin p == k/M
        k = 8
        sel = np.isclose(pj, k / M)
        if sel.any():
            np.testing.assert_allclose(
                got.reliability_observed_frequency.values[j, k],
                (wj * oj)[sel].sum() / wj[sel].sum(),
                rtol=1e-6,
            )


def test_standard_crps_matches_properscoring_and_scoringrules(stores: tuple[Path, Path]) -> None:
    fpath, tpath = stores
    s = score_forecast(fpath, tpath, variables=["t850"], regions=["global"], fair=False).sel(
        forecast="forecast"
    )
    fc, tr = _loaded(fpath, tpath)
    x = fc["t850"].values.astype(np.float64)
    y = _truth_at_valid(fc, tr, "t850")
    w = area_weights(fc.latitude.values)[:, None]
    ref_ps = ps.crps_ensemble(y, np.moveaxis(x, 1, -1))  # (t, l, y, x)
    ref_sr = sr.crps_ensemble(y, np.moveaxis(x, 1, -1), m_axis=-1, estimator="nrg", backend="numpy")
    np.testing.assert_allclose(ref_ps, ref_sr, rtol=1e-8)
    exp = (ref_ps * w).sum((-2, -1)).mean(0) / (w.sum() * 64)
    np.testing.assert_allclose(s.crps.sel(variable="t850", region="global").values, exp, rtol=1e-5)


def test_same_result_on_local_cluster(stores: tuple[Path, Path]) -> None:
    from dask.distributed import Client, LocalCluster

    fpath, tpath = stores
    threaded = score_forecast(fpath, tpath, regions=["global", "tropics"], thresholds=[54000.0])
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            dist = score_forecast(fpath, tpath, regions=["global", "tropics"], thresholds=[54000.0])
    xr.testing.assert_allclose(threaded, dist, rtol=1e-12)


class _MaxBytes(Callback):
    """Records the largest numpy result of any task."""

    def __init__(self) -> None:
        super().__init__()
        self.max_bytes = 0

    def _posttask(self, key, result, dsk, state, id):  # noqa: ANN001, A002
        if isinstance(result, np.ndarray):
            self.max_bytes = max(self.max_bytes, result.nbytes)


def test_chunk_by_chunk(stores: tuple[Path, Path]) -> None:
    fpath, tpath = stores
    with dask.config.set(scheduler="threads"), _MaxBytes() as cb:
        tiny = score_forecast(fpath, tpath, lat_chunk=4, thresholds=[270.0])
    full_ensemble = 3 * M * 3 * 32 * 64 * 4  # one variable, all inits, members, leads (float32)
    assert 0 < cb.max_bytes <= full_ensemble / 8
    big = score_forecast(fpath, tpath, lat_chunk=32, time_chunk=3, thresholds=[270.0])
    xr.testing.assert_allclose(tiny, big, rtol=1e-10)


def test_per_init_and_io_roundtrip(stores: tuple[Path, Path], tmp_path: Path) -> None:
    fpath, tpath = stores
    per = score_forecast(fpath, tpath, per_init=True, regions=["global"], thresholds={"z500": [54000.0]})
    avg = score_forecast(fpath, tpath, regions=["global"], thresholds={"z500": [54000.0]})
    assert per.sizes["time"] == 3
    np.testing.assert_allclose(per.crps.mean("time").values, avg.crps.values, rtol=1e-10)
    for suffix in (".nc", ".zarr"):
        out = write_scores(avg, tmp_path / f"scores{suffix}")
        back = open_scores(out)
        xr.testing.assert_allclose(back[list(avg.data_vars)], avg, rtol=1e-12)
        table = pd.read_csv(out.with_suffix(".csv"))
        assert {"variable", "lead_hours", "metric", "region", "value"} <= set(table.columns)
        row = table.query(
            "metric == 'crps' and variable == 't850' and lead_hours == 6 and region == 'global'"
        )
        assert len(row) == 1
        exp = avg.crps.sel(forecast="forecast", variable="t850", region="global").isel(prediction_timedelta=1)
        np.testing.assert_allclose(row["value"].iloc[0], float(exp), rtol=1e-9)
        assert set(table.query("metric == 'brier'")["threshold"]) == {54000.0}


def test_user_errors(stores: tuple[Path, Path], tmp_path: Path) -> None:
    fpath, tpath = stores
    tr = xr.open_zarr(tpath, consolidated=False).isel(time=slice(0, 4))
    with pytest.raises(UserError, match="valid times"):
        score_forecast(fpath, tr)
    with pytest.raises(UserError, match="forecast lacks variable"):
        score_forecast(fpath, tpath, variables=["q700"])
    with pytest.raises(UserError, match="not found"):
        score_forecast(tmp_path / "nope.zarr", tpath)
    with pytest.raises(UserError, match="unknown region"):
        score_forecast(fpath, tpath, regions=["atlantis"])


def test_deterministic_forecast_crps_is_mae(stores: tuple[Path, Path]) -> None:
    fpath, tpath = stores
    one = xr.open_zarr(fpath, consolidated=False).isel(number=0, drop=True)  # no member dim at all
    s = score_forecast(one, tpath, regions=["global"]).sel(forecast="forecast", region="global")
    assert int(s.n_members) == 1
    np.testing.assert_allclose(s.crps.values, s.mae.values, rtol=1e-12)
    fc, tr = _loaded(fpath, tpath)
    x = fc["z500"].values[:, 0].astype(np.float64)
    y = _truth_at_valid(fc, tr, "z500")
    w = area_weights(fc.latitude.values)[:, None]
    exp = (np.abs(x - y) * w).sum((-2, -1)).mean(0) / (w.sum() * 64)
    np.testing.assert_allclose(s.crps.sel(variable="z500").values, exp, rtol=1e-5)


@pytest.mark.realdata
def test_real_era5_eda_members(realdata: Path) -> None:
    """ERA5 EDA: members 1-9 as a lead-0 'forecast' of member 0, against properscoring/scoringrules."""
    eda = xr.open_zarr(realdata / "era5_eda_members_3deg.zarr")
    fc = eda.sel(number=slice(1, 9)).expand_dims(prediction_timedelta=[np.timedelta64(0, "ns")])
    truth = eda.sel(number=0, drop=True)
    s = score_forecast(
        fc, truth, variables=["z500", "t850"], regions=["global", "tropics"], thresholds={"t850": [273.15]}
    )
    s_std = score_forecast(fc, truth, variables=["z500"], regions=["global"], fair=False)
    x = eda.geopotential.sel(level=500).values.astype(np.float64)  # (t, number, y, x)
    y, ens = x[:, 0], np.moveaxis(x[:, 1:], 1, -1)
    w = area_weights(eda.latitude.values)[:, None] * np.ones(eda.sizes["longitude"])
    amean = lambda a: float((a * w).sum() / (w.sum() * a.shape[0]))  # noqa: E731
    np.testing.assert_allclose(
        float(s_std.crps.sel(forecast="forecast", variable="z500", region="global").squeeze()),
        amean(ps.crps_ensemble(y, ens)),
        rtol=1e-5,
    )
    fair = sr.crps_ensemble(y, ens, m_axis=-1, estimator="fair", backend="numpy")
    np.testing.assert_allclose(
        float(s.crps.sel(forecast="forecast", variable="z500", region="global").squeeze()),
        amean(fair),
        rtol=1e-5,
    )
    assert int(s.n_members.sel(forecast="forecast")) == 9
    # member 0 is the unperturbed EDA control, nearer the member mean than a random member would be:
    # the corrected spread/skill ratio of the other nine against it is above 1
    ssr = float(s.spread_skill_ratio.sel(forecast="forecast", variable="t850", region="global").squeeze())
    assert 1.0 < ssr < 2.0


@pytest.mark.realdata
def test_real_ifs_forecast_deterministic(realdata: Path) -> None:
    """IFS 10 deg: the 0 h step verifies perfectly against itself; the 6 h step has no analysis."""
    ifs = xr.open_zarr(realdata / "ifs_forecast_10deg.zarr")
    truth = ifs.sel(prediction_timedelta=np.timedelta64(0, "ns"), drop=True)
    s = score_forecast(ifs.isel(prediction_timedelta=[0]), truth, variables=["z500", "t850"])
    np.testing.assert_array_equal(s.crps.values, 0.0)
    np.testing.assert_array_equal(s.rmse.values, 0.0)
    with pytest.raises(UserError, match="valid times"):
        score_forecast(ifs, truth, variables=["z500"])


def test_nan_members_use_the_members_present() -> None:
    """Missing members count per point (the fair CRPS uses the m present, not M; WB2 issue #302)."""
    rng = np.random.default_rng(11)
    lat, lon = np.linspace(78.75, -78.75, 8), np.arange(16) * 22.5
    times = pd.date_range("2021-03-01", periods=2, freq="6h")
    y = rng.standard_normal((2, 8, 16))
    x = rng.standard_normal((1, 6, 2, 8, 16))
    x[0, :2, 1, :3] = np.nan  # two members missing over three latitude rows at lead 6 h
    fc = xr.Dataset(
        {"t850": (("time", "number", "prediction_timedelta", "latitude", "longitude"), x)},
        coords={
            "time": times[:1],
            "number": np.arange(6),
            "prediction_timedelta": LEADS[:2],
            "latitude": lat,
            "longitude": lon,
        },
    )
    tr = xr.Dataset(
        {"t850": (("time", "latitude", "longitude"), y)},
        coords={"time": times, "latitude": lat, "longitude": lon},
    )
    s = score_forecast(fc, tr, regions=["global"]).sel(forecast="forecast", variable="t850", region="global")
    w = area_weights(lat)[:, None] * np.ones(16)
    crps = np.empty((8, 16))
    for i in range(8):
        for k in range(16):
            mem = x[0, :, 1, i, k]
            crps[i, k] = _fair_crps_pairwise(mem[np.isfinite(mem)][:, None], y[1, i, k][None])[0]
    np.testing.assert_allclose(s.crps.values[1], (crps * w).sum() / w.sum(), rtol=1e-10)
    assert s.rank_histogram.values[1].sum() == 8 * 16 - 3 * 16
    assert s.rank_histogram.values[0].sum() == 8 * 16


def test_named_box_region(stores: tuple[Path, Path]) -> None:
    fpath, tpath = stores
    s = score_forecast(fpath, tpath, variables=["t850"], regions=["europe", "global"]).sel(
        forecast="forecast"
    )
    fc, tr = _loaded(fpath, tpath)
    mask = region_mask(fc.latitude.values, fc.longitude.values, "europe")
    x = fc["t850"].values.astype(np.float64)
    y = _truth_at_valid(fc, tr, "t850")
    w = area_weights(fc.latitude.values)[:, None] * mask
    se = (x.mean(1) - y) ** 2
    np.testing.assert_allclose(
        s.rmse.sel(variable="t850", region="europe").values,
        np.sqrt((se * w).sum((-2, -1)).mean(0) / w.sum()),
        rtol=1e-5,
    )


@pytest.mark.parametrize("bias", [0.0, 1e3])
def test_block_kernel_terms_against_references(bias: float) -> None:
    """The scoring kernel's per-point terms (matrix-vector reductions, one-pass variance about the
    observation) against properscoring, numpy's two-pass variance and plain counts, also when the
    ensemble mean misses the observation by 1000x the spread (z500-sized values, float32 members)."""
    from evaluation.score import _complete_block_terms

    rng = np.random.default_rng(3)
    y = 54000.0 + 100.0 * rng.normal(size=(4, 33))
    x = (y[..., None] + bias + rng.normal(size=(4, 33, 64))).astype(np.float32)
    x[0, 0, 5] = np.float32(y[0, 0])  # an exact tie, as far as float32 allows
    y[0, 0] = float(x[0, 0, 5])
    x64 = x.astype(np.float64)
    for fair in (False, True):
        skill, spread, mean_d, var, less, eq = _complete_block_terms(x, y, fair)
        if not fair:
            np.testing.assert_allclose(skill - 0.5 * spread, ps.crps_ensemble(y, x64), rtol=1e-10)
        else:
            ref = sr.crps_ensemble(y, x64, m_axis=-1, estimator="fair", backend="numpy")
            np.testing.assert_allclose(skill - 0.5 * spread, ref, rtol=1e-10)
        np.testing.assert_allclose(mean_d, x64.mean(-1) - y, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(var, x64.var(-1, ddof=1), rtol=1e-7)
        np.testing.assert_array_equal(less, (x64 < y[..., None]).sum(-1))
        np.testing.assert_array_equal(eq, (x64 == y[..., None]).sum(-1))
        assert eq[0, 0] == 1 and eq.sum() == 1
