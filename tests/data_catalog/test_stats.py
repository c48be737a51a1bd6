"""Channel statistics against a plain numpy computation; cache validity and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import data_catalog.stats as stats_mod
from data_catalog import UserError, channel_statistics, compute_statistics, open_reanalysis
from tests.data_catalog.dc_stores import wb2_dataset, write

# 6-hourly with a gap: pairs 6 h apart are (00, 06), (06, 12), (1 00, 1 06) only
TIMES = pd.DatetimeIndex(
    ["2000-01-01T00", "2000-01-01T06", "2000-01-01T12", "2000-01-02T00", "2000-01-02T06"]
)


def _random_store(path: Path, seed: int, zarr_format: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    ds = wb2_dataset(times=TIMES, levels=(500, 850))
    for v in ("geopotential", "2m_temperature"):
        ds[v] = ds[v] + rng.normal(0.0, 50.0, ds[v].shape).astype(np.float32)
    return write(ds, path, zarr_format)


def _numpy_stats(x: np.ndarray, lat_deg: np.ndarray) -> tuple[float, float]:
    """Area-weighted mean and std over (time, lat, lon): weights = sin(upper) - sin(lower) of
    cells whose edges are the midpoints of an equiangular grid without poles (independent of
    data_catalog.grid)."""
    d = np.deg2rad(abs(lat_deg[1] - lat_deg[0]))
    phi = np.deg2rad(lat_deg)
    w = np.sin(phi + d / 2) - np.sin(phi - d / 2)
    wfull = np.broadcast_to(w[None, :, None], x.shape)
    mean = np.sum(wfull * x) / np.sum(wfull)
    var = np.sum(wfull * (x - mean) ** 2) / np.sum(wfull)
    return float(mean), float(np.sqrt(var))


def test_against_numpy(tmp_path: Path) -> None:
    path = _random_store(tmp_path / "r.zarr", seed=1)
    ds = open_reanalysis(path, variables=["z500", "z850", "t2m"])
    got = compute_statistics(ds)
    lat = ds["latitude"].values
    for ch in ("z500", "z850", "t2m"):
        x = ds[ch].values.astype(np.float64)
        mean, std = _numpy_stats(x, lat)
        tend = np.concatenate([x[1:3] - x[0:2], x[4:5] - x[3:4]])
        _, tstd = _numpy_stats(tend, lat)
        assert got[ch]["mean"] == pytest.approx(mean, rel=1e-10)
        assert got[ch]["std"] == pytest.approx(std, rel=1e-7)
        assert got[ch]["tendency_std"] == pytest.approx(tstd, rel=1e-7)
        assert got[ch]["count"] == x.size and got[ch]["tendency_count"] == tend.size


def test_nan_is_refused(tmp_path: Path) -> None:
    ds = wb2_dataset(levels=(500,))
    ds["geopotential"][0, 0, 3, 5] = np.nan
    with pytest.raises(UserError, match="1 NaN/infinite value"):
        compute_statistics(open_reanalysis(ds, variables=["z500"]))


def test_cache_provenance_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _random_store(tmp_path / "c.zarr", seed=2)
    doc = channel_statistics(path, time=slice("2000-01-01", "2000-01-01T12"), variables=["z500"])
    prov = doc["provenance"]
    assert prov["time_range"] == ["2000-01-01T00:00:00", "2000-01-01T12:00:00"] and prov["n_times"] == 3
    assert prov["source"] == str(path) and len(prov["fingerprint"]) == 64
    files = list((tmp_path / "cache" / "stats").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == doc

    # a second call is served from the cache
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("recomputed although the cache is valid")

    monkeypatch.setattr(stats_mod, "compute_statistics", boom)
    assert channel_statistics(path, time=slice("2000-01-01", "2000-01-01T12"), variables=["z500"]) == doc
    monkeypatch.undo()
    monkeypatch.setenv("WXENS_CACHE", str(tmp_path / "cache"))

    # rewriting the store with other data changes its fingerprint: statistics are recomputed
    _random_store(path, seed=3)
    new = channel_statistics(path, time=slice("2000-01-01", "2000-01-01T12"), variables=["z500"])
    assert new["provenance"]["fingerprint"] != prov["fingerprint"]
    x = (
        xr.open_zarr(path, consolidated=False)["geopotential"]
        .sel(level=500)
        .isel(time=slice(0, 3))
        .values.astype(np.float64)
    )
    mean, std = _numpy_stats(x, xr.open_zarr(path, consolidated=False)["latitude"].values)
    assert new["channels"]["z500"]["mean"] == pytest.approx(mean, rel=1e-10)
    assert new["channels"]["z500"]["std"] == pytest.approx(std, rel=1e-7)
    assert new["channels"]["z500"]["std"] != doc["channels"]["z500"]["std"]


def test_no_six_hour_pairs(tmp_path: Path) -> None:
    times = pd.date_range("2000-01-01", periods=3, freq="12h")
    ds = open_reanalysis(wb2_dataset(times=times, levels=(500,)), variables=["z500"])
    assert compute_statistics(ds)["z500"]["tendency_std"] is None
    # the fixture grows by exactly 1000 m2 s-2 per time step: a constant tendency has zero spread
    assert compute_statistics(ds, tendency_hours=12)["z500"]["tendency_std"] == pytest.approx(0.0, abs=1e-6)
