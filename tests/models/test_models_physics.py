"""Physics checkpoints (models.physics): the QG equations as a ForecastModel, checked against the
world's own solver and store, loaded by the engine through ``model_loader``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.qg import ThreeLevelQG, attractor_state
from data_catalog.world.qg_store import QGWorldSpec, build_qg_world
from models.base import ForecastModel
from models.physics import CHANNELS, QGForecastModel, load_qg_model, write_qg_checkpoint

pytestmark = pytest.mark.xdist_group("qg-physics")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qgphys")
    return build_qg_world(root / "qg.zarr", QGWorldSpec(years=2, days=4, spinup_days=20.0))


def test_state_round_trip_and_one_step_equal_the_world_solver() -> None:
    """Fields of a state on the attractor go through the grid and back to the same streamfunction
    (least-squares projection, exact for T21 fields), and one 6 h step equals 12 steps of
    :class:`ThreeLevelQG` itself, to float32 rounding."""
    torch.set_num_threads(1)
    m = QGForecastModel()
    assert isinstance(m, ForecastModel) and m.channels == CHANNELS and m.latitude[0] > m.latitude[-1]
    qg: ThreeLevelQG = m.qg
    q, t = attractor_state(qg, spinup_days=10.0, day=0.0)
    psi = qg.psi_from_q(q)
    x = m.fields(psi)
    assert float((m.psi(x) - psi).abs().max() / psi.abs().max()) < 1e-6
    when = np.datetime64("1970-01-01T00", "s") + np.timedelta64(int(t[0]), "s")
    y = m.step(x.repeat(3, 1, 1, 1), when)
    ref, _ = qg.run(q, t, 12, rk_start=True)
    want = m.fields(qg.psi_from_q(ref))[0]
    for i in range(3):
        rel = (y[i] - want).abs().amax(dim=(-2, -1)) / want.abs().amax(dim=(-2, -1))
        assert float(rel.max()) < 2e-5
    assert float((y[0] - x[0]).abs().max()) > 1.0  # it moved
    with pytest.raises(UserError, match="CPU"):
        m.to("cuda")
    with pytest.raises(UserError, match="valid time"):
        m.step(x)


def test_checkpoint_skill_and_loader(world: Path, tmp_path: Path) -> None:
    """The world's own parameters forecast the world's store with a small error (the restarted time
    scheme: 3.3 m2 s-2 at 48 h; 23 with an Euler restart); changed parameters have a larger, growing
    error; the loader refuses what is not a physics checkpoint."""
    ds = xr.open_zarr(world)
    perfect = write_qg_checkpoint(
        tmp_path / "perfect", {}, world, (2001, 2001), (2000, 2000), inits=2, lead_steps=8
    )
    wrong = write_qg_checkpoint(
        tmp_path / "wrong", {"tau_relax_days": 12.0, "u_top": 57.0}, world, (2001, 2001), (2000, 2000), 2, 8
    )
    z = float(ds["geopotential"].sel(level=500).std())
    assert perfect.rmse_at(48)["z500"] < 1e-3 * z
    assert wrong.rmse_at(48)["z500"] > 3 * perfect.rmse_at(48)["z500"]
    assert wrong.skill["rmse"]["z500"][-1] > wrong.skill["rmse"]["z500"][0]
    loaded = load_qg_model(tmp_path / "wrong")
    assert loaded.params.u_top == 57.0 and loaded.rmse_at(48) == wrong.rmse_at(48)
    assert loaded.rmse_at(6)["u500"] == wrong.skill["rmse"]["u500"][0]
    with pytest.raises(UserError, match="no validation RMSE at 72 h"):
        loaded.rmse_at(72)  # the skill file has 8 leads (6-48 h)
    with pytest.raises(UserError, match="no skill.json"):
        QGForecastModel().rmse_at(48)
    (tmp_path / "bad").mkdir()
    with pytest.raises(UserError, match="not a physics checkpoint"):
        load_qg_model(tmp_path / "bad")
    (tmp_path / "bad" / "model.json").write_text(json.dumps({"kind": "qg3-physics", "params": {"u_tpo": 5}}))
    with pytest.raises(UserError, match="u_tpo"):
        load_qg_model(tmp_path / "bad")


def test_engine_runs_physics_checkpoints(world: Path, tmp_path: Path) -> None:
    """Through the engine (``model_loader: models.physics:load_qg_model``): the control member of the
    world's own equations follows the world's store (exactly at lead 0, then within the restarted time
    scheme's small error); bred members are centred on it."""
    from pipeline import open_forecast, run_forecast

    write_qg_checkpoint(
        tmp_path / "ck" / "perfect", {}, world, (2001, 2001), (2000, 2000), inits=2, lead_steps=8
    )
    base = {
        "analysis": str(world),
        "checkpoints": [str(tmp_path / "ck" / "perfect")],
        "model_loader": "models.physics:load_qg_model",
        "init_times": ["2001-01-02T00"],
        "lead_steps": 4,
        "inline": {"enabled": False},
        "progress": False,
    }
    run_forecast({**base, "perturbation": {"method": "none", "n_pairs": 1}}, tmp_path / "ctl")
    run_forecast({**base, "perturbation": {"method": "bred", "n_pairs": 2, "cycles": 2}}, tmp_path / "bred")
    ctl = open_forecast(tmp_path / "ctl", channels=True)
    raw = open_forecast(tmp_path / "ctl")
    assert raw["geopotential"].sizes["level"] == 3  # the levels of the qg world, stored as such
    truth = xr.open_zarr(world)["geopotential"].sel(level=500).sortby("latitude", ascending=False)
    t0 = np.datetime64("2001-01-02T00")
    z0 = truth.sel(time=t0).values
    for k in range(5):
        want = truth.sel(time=t0 + np.timedelta64(6 * k, "h")).values
        got = ctl["z500"].isel(time=0, number=0, prediction_timedelta=k).values
        if k == 0:
            assert np.abs(got - want).max() < 1e-6 * np.abs(want).max()
        else:  # within 3 % of how far the flow moved
            assert np.abs(got - want).max() < 0.03 * np.abs(want - z0).max()
    bred = open_forecast(tmp_path / "bred", channels=True)["z500"].isel(time=0).values  # (member, lead, ...)
    assert bred.shape[0] == 4 and np.abs(bred[0, 1] - bred[1, 1]).max() > 1.0
    ctl1 = ctl["z500"].isel(time=0, number=0, prediction_timedelta=0).values
    np.testing.assert_allclose(
        0.5 * (bred[0::2, 0] + bred[1::2, 0]), np.broadcast_to(ctl1, (2, 32, 64)), atol=0.05
    )


def test_command_writes_a_checkpoint_and_refuses_bad_settings(world: Path, tmp_path: Path) -> None:
    """``python -m models.physics OUT --dataset D --set NAME=VALUE``; a bad setting is one error line."""
    import subprocess
    import sys

    from models.physics import main

    out = tmp_path / "ck"
    args = ["--dataset", str(world), "--valid-years", "2001", "--clim-years", "2000", "--inits", "2"]
    assert (
        main([str(out), *args, "--set", "u_top=57", "--set", "tau_relax_days=12", "--lead-steps", "8"]) == 0
    )
    assert json.loads((out / "model.json").read_text())["params"] == {"u_top": 57.0, "tau_relax_days": 12.0}
    assert load_qg_model(out).params.tau_relax_days == 12.0
    for bad, msg in ((["--set", "u_top"], "NAME=NUMBER"), (["--set", "mountains=1"], "unknown QG parameter")):
        with pytest.raises(UserError, match=msg):
            main([str(tmp_path / "x"), *args, *bad])
    r = subprocess.run(
        [sys.executable, "-m", "models.physics", str(tmp_path / "y"), "--set", "bogus=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = r.stderr.strip().splitlines()
    assert (
        r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: unknown QG parameter(s) bogus")
    )
    assert not (tmp_path / "y").exists()
