"""Scorecard arithmetic on hand-made score datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data_catalog.errors import UserError
from evaluation.scorecard import relative_score, scorecard


def _scores(values: np.ndarray, labels: list[str]) -> xr.Dataset:
    leads = pd.to_timedelta([24, 48, 72], unit="h")
    return xr.Dataset(
        {
            "crps": (("forecast", "variable", "prediction_timedelta", "region"), values),
            "rmse": (("forecast", "variable", "prediction_timedelta", "region"), 2 * values),
        },
        coords={
            "forecast": labels,
            "variable": ["z500", "t850"],
            "prediction_timedelta": leads,
            "region": ["global", "tropics"],
        },
    )


def test_skill_and_percent() -> None:
    rng = np.random.default_rng(0)
    v = rng.uniform(1, 2, size=(2, 2, 3, 2))
    s = _scores(v, ["forecast", "climatology"])
    card = scorecard(s, baseline="climatology", metric="crps")
    assert list(card.index) == ["z500", "t850"]
    assert list(card.columns) == [24.0, 48.0, 72.0]
    np.testing.assert_allclose(card.values, 1 - v[0, :, :, 0] / v[1, :, :, 0], rtol=1e-12)
    pct = scorecard(s, baseline="climatology", metric="rmse", region="tropics", kind="percent")
    np.testing.assert_allclose(pct.values, 100 * (v[0, :, :, 1] - v[1, :, :, 1]) / v[1, :, :, 1], rtol=1e-12)
    # identical forecast and baseline: zero skill; baseline from another scores dataset, leads intersected
    other = _scores(v[:1], ["other"]).isel(prediction_timedelta=[1, 2])
    rel = relative_score(s, baseline=other, metric="crps")
    assert rel.sizes["prediction_timedelta"] == 2
    np.testing.assert_allclose(rel.values, 0.0, atol=1e-15)


def test_errors() -> None:
    s = _scores(np.ones((2, 2, 3, 2)), ["forecast", "persistence"])
    with pytest.raises(UserError, match="climatology"):
        scorecard(s, baseline="climatology")
    with pytest.raises(UserError, match="lower is better"):
        scorecard(s, baseline="persistence", metric="spread_skill_ratio")
    with pytest.raises(UserError, match="region"):
        scorecard(s, baseline="persistence", region="europe")
