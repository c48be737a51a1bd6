"""The NaN-free fast paths of the CRPS kernel and the in-memory truth alignment against their
references (pairwise CRPS definition in float64; the lazy per-lead alignment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from evaluation import metrics
from evaluation.score import align_truth


def _pairwise(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS from its definition, members on the last axis, float64."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    m = x.shape[-1]
    skill = np.abs(x - y[..., None]).mean(-1)
    pair = np.abs(x[..., :, None] - x[..., None, :]).sum((-2, -1))
    return skill - pair / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.parametrize("fair", [True, False])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float32_members_without_nan_equal_the_pairwise_definition(fair: bool, backend: str) -> None:
    """Members sorted in float32 (the fast path) give the float64 CRPS of those float32 values."""
    rng = np.random.default_rng(3)
    x = (54000.0 + 50.0 * rng.standard_normal((40, 7, 33))).astype(np.float32)
    x[0, 0, :3] = x[0, 0, 3]  # ties
    y = (54000.0 + 60.0 * rng.standard_normal((40, 7))).astype(np.float32)
    ref = _pairwise(x, y, fair)
    if backend == "torch":
        got = metrics.crps_ensemble(torch.from_numpy(x), torch.from_numpy(y), member_axis=-1, fair=fair)
        assert got.dtype == torch.float32
        got = got.double().numpy()
    else:
        got = metrics.crps_ensemble(x, y, member_axis=-1, fair=fair)
        assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=2e-6, atol=1e-3)
    # float64 components (before the cast to the input dtype) are exact to float64 rounding
    skill, spread = metrics.crps_components(x.astype(np.float64), y, member_axis=-1, fair=fair)
    np.testing.assert_allclose(skill - 0.5 * spread, ref, rtol=1e-9)


def test_nan_members_still_take_the_nan_aware_path() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 9)).astype(np.float32)
    y = rng.standard_normal(5).astype(np.float32)
    x[2, 4] = np.nan
    got = metrics.crps_ensemble(x, y, member_axis=-1)
    keep = np.delete(x[2], 4)
    np.testing.assert_allclose(got[2], _pairwise(keep[None], y[2:3], True)[0], rtol=1e-5)
    np.testing.assert_allclose(
        np.delete(got, 2), _pairwise(np.delete(x, 2, 0), np.delete(y, 2), True), rtol=1e-5
    )


def test_loaded_truth_alignment_equals_lazy_alignment(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    times = pd.date_range("2020-01-01", periods=14, freq="6h")
    lat, lon = np.linspace(80, -80, 5), np.arange(8) * 45.0
    truth = xr.Dataset(
        {v: (("time", "latitude", "longitude"), rng.standard_normal((14, 5, 8)).astype("f4")) for v in "ab"},
        coords={"time": times, "latitude": lat, "longitude": lon},
    )
    truth.chunk({"time": 3}).to_zarr(tmp_path / "t.zarr", mode="w", consolidated=False)
    truth = xr.open_zarr(tmp_path / "t.zarr", consolidated=False)
    leads = pd.to_timedelta([0, 6, 12, 24], unit="h").to_numpy()
    fc = xr.Dataset(coords={"time": times[[0, 2, 3]], "prediction_timedelta": leads})
    lazy = align_truth(fc, truth, ["a", "b"])
    loaded = align_truth(fc, truth, ["a", "b"], load_max_bytes=2**20)
    assert isinstance(loaded["a"].data, np.ndarray)
    xr.testing.assert_identical(loaded, lazy.load())
    # a limit below the size keeps it lazy
    small = align_truth(fc, truth, ["a", "b"], load_max_bytes=10)
    assert small.chunks
    # spot check: init 2 (times[3]) + 24 h = times[7]
    np.testing.assert_array_equal(loaded["b"].values[2, 3], truth["b"].values[7])
