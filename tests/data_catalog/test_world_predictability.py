"""The driver-unknown predictability measurement of the embedded world (data_catalog.world.predictability)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_catalog.world.model import WorldParams
from data_catalog.world.predictability import driver_bound, format_table


def _run(params: WorldParams) -> dict:
    return driver_bound(
        None,
        n_states=3,
        n_drivers=2,
        leads_days=(0.25, 0.5),
        spinup_days=2.0,
        spacing_days=20.0,
        params=params,
    )


def test_without_stirring_the_driver_does_not_matter() -> None:
    """With the rings switched off the "wrong driver" runs are the truth: zero error, exactly."""
    res = _run(dataclasses.replace(WorldParams(), stir_amp=0.0))
    assert np.all(np.asarray(res["driver_mean"]) == 0.0)
    assert np.all(np.asarray(res["driver_member"]) == 0.0)
    assert np.all(np.asarray(res["persistence"]) > 0.0)  # the flow itself moves


def test_wrong_driver_error_grows_and_mean_beats_members() -> None:
    res = _run(WorldParams())
    mean, member = np.asarray(res["driver_mean"]), np.asarray(res["driver_member"])  # (lead, channel)
    assert res["channels"] == ["z500", "u500", "v500", "vo500"] and mean.shape == (2, 4)
    assert np.all(mean > 0) and np.all(mean[1] > mean[0])  # grows with lead
    # Jensen: the RMSE of the mean of the runs never exceeds the RMS of their RMSEs
    assert np.all(mean <= member * (1 + 1e-12))
    assert "climatology" not in res
    assert "| z500 | 0.25 |" in format_table(res)
    with pytest.raises(ValueError, match="n_drivers"):
        driver_bound(None, n_states=2, n_drivers=2)
