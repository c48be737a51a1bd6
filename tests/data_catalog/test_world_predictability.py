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


def test_driver_error_scales_the_loss() -> None:
    """``driver_error`` 0 reruns the true driver (zero error, exactly); 0.3 loses less than 1."""
    exact = driver_bound(None, n_states=3, n_drivers=2, leads_days=(0.5,), spinup_days=2.0, driver_error=0.0)
    assert np.all(np.asarray(exact["driver_mean"]) == 0.0)
    part = driver_bound(None, n_states=3, n_drivers=2, leads_days=(1.0,), spinup_days=2.0, driver_error=0.3)
    full = driver_bound(None, n_states=3, n_drivers=2, leads_days=(1.0,), spinup_days=2.0)
    assert np.all(0 < np.asarray(part["driver_mean"])) and np.all(
        np.asarray(part["driver_mean"]) < np.asarray(full["driver_mean"])
    )


def test_module_entry_point_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m data_catalog.world.predictability`` on the shipped world, reduced to a quick case."""
    from data_catalog.world.predictability import main

    main(["--states", "3", "--drivers", "2", "--leads", "0.5", "--driver-error", "0.3"])
    out = capsys.readouterr().out
    assert "driver error 0.3" in out and "vo500" in out
