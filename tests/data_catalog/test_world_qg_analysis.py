"""Cycled analyses of the QG world (data_catalog.world.qg_analysis): perfect observations with full
gain give back the truth, no observations give a free run that drifts away, the default assimilation
settles in between; the recorded error matches one computed from the stores; the command's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.qg_analysis import CycledAnalysisSpec, cycled_analysis, main
from data_catalog.world.qg_store import QGWorldSpec, build_qg_world
from tests.data_catalog.test_world_qg_store import assert_cached_once

pytestmark = pytest.mark.xdist_group("qg-analysis")


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qga")
    return build_qg_world(root / "qg.zarr", QGWorldSpec(years=2, days=6, spinup_days=30.0))


def _z500_rms(a: xr.Dataset, b: xr.Dataset) -> np.ndarray:
    """Area-weighted RMS difference of z500 per time, on the store grid."""
    d = a["geopotential"].sel(level=500) - b["geopotential"].sel(level=500)
    w = np.cos(np.deg2rad(a["latitude"]))
    return np.sqrt(((d**2) * w).sum(("latitude", "longitude")) / (w.sum() * a.sizes["longitude"])).values


def test_perfect_observations_give_the_truth_and_none_give_a_drift(truth: Path) -> None:
    t = xr.open_zarr(truth).load()
    exact = cycled_analysis(t, CycledAnalysisSpec(obs_error=0.0, gain=1.0, obs_lmax=22))
    assert set(exact.data_vars) == set(t.data_vars) and exact["geopotential"].dims == t["geopotential"].dims
    np.testing.assert_array_equal(exact["time"].values, t["time"].values)
    for v in ("geopotential", "u_component_of_wind", "vorticity"):
        scale = float(np.abs(t[v]).max())
        assert float(np.abs(exact[v] - t[v]).max()) < 1e-5 * scale, v
    free = _z500_rms(cycled_analysis(t, CycledAnalysisSpec(obs_error=0.0, gain=0.0)), t)
    cycled = cycled_analysis(t, CycledAnalysisSpec(), years=(2001, 2001))
    assert pd_years(cycled) == {2001}
    err = _z500_rms(cycled, t.sel(time=cycled["time"]))
    n = cycled.sizes["time"]
    assert free[-1] > 2 * err[-4:].mean()  # observations hold the analysis near the truth
    assert 0.1 * 150 < err[-4:].mean() < 2 * 150  # of the order of the observation error
    rec = json.loads(cycled.attrs["analysis_rms_error"])
    assert rec["levels"] == [200, 500, 800] and rec["background"][1] > rec["analysis"][1] > 0
    # the recorded error (transform grid, every cycle) agrees with the stores' (output grid)
    assert abs(rec["analysis"][1] / np.sqrt((err[1:] ** 2).mean()) - 1) < 0.1, (rec, n)


def pd_years(ds: xr.Dataset) -> set[int]:
    return {int(y) for y in ds["time"].dt.year.values}


def test_bad_settings_and_command_errors(truth: Path, tmp_path: Path) -> None:
    t = xr.open_zarr(truth)
    for spec, msg in (
        (CycledAnalysisSpec(gain=1.5), "gain"),
        (CycledAnalysisSpec(obs_lmax=40), "obs_lmax"),
        (CycledAnalysisSpec(model={"u_tpo": 1.0}), "u_tpo"),
    ):
        with pytest.raises(UserError, match=msg):
            cycled_analysis(t, spec)
    with pytest.raises(UserError, match="no times of 1990"):
        cycled_analysis(t, years=(1990, 1991))
    out = tmp_path / "a.zarr"
    assert main([str(out), "--truth", str(truth), "--years", "2000", "--set", "u_top=58"]) == 0
    a = xr.open_zarr(out)
    assert pd_years(a) == {2000} and json.loads(a.attrs["analysis_spec"])["model"] == {"u_top": 58.0}
    with pytest.raises(UserError, match="exists"):
        main([str(out), "--truth", str(truth)])
    with pytest.raises(UserError, match="--years"):
        main([str(tmp_path / "b.zarr"), "--truth", str(truth), "--years", "20x0"])
    with pytest.raises(UserError, match="gain"):
        main(
            [
                str(tmp_path / "d.zarr"),
                "--truth",
                str(truth),
                "--obs-error",
                "100",
                "--obs-lmax",
                "12",
                "--gain",
                "2",
            ]
        )
    with pytest.raises(UserError, match="no zarr store"):
        main([str(tmp_path / "c.zarr"), "--truth", str(tmp_path / "nothing")])


def test_builtin_qg3_analysis_is_cached_and_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``qg_analysis_store`` builds the world (if needed) and its analyses once into ``$WXENS_CACHE``,
    then reuses them; the store equals ``cycled_analysis`` of that world; ``build=False`` on a missing
    store names ``builtin:qg3-analysis``; another spec is another store; ``builtin:qg3-analysis`` and
    the catalog entry ``qg3-analysis`` open it as 12 level channels."""
    from data_catalog.readers import open_reanalysis
    from data_catalog.world import qg_analysis

    monkeypatch.setenv("WXENS_CACHE", str(tmp_path / "cache"))
    world = QGWorldSpec(years=1, days=1, spinup_days=1.0)
    path = assert_cached_once(
        lambda build: qg_analysis.qg_analysis_store(build=build, world=world),
        "qg3-analysis",
        "qg3-analysis-v1-",
        tmp_path / "cache",
    )
    from data_catalog.world.qg_store import qg_world_store

    expected = cycled_analysis(xr.open_zarr(qg_world_store(build=False, spec=world)))
    got = xr.open_zarr(path)
    for v in ("geopotential", "vorticity"):
        np.testing.assert_array_equal(got[v].values, expected[v].values)
    assert got.attrs["analysis_spec"] == expected.attrs["analysis_spec"]
    other = qg_analysis.qg_analysis_store(spec=CycledAnalysisSpec(gain=0.2), world=world)
    assert other != path and not np.array_equal(
        xr.open_zarr(other)["geopotential"].values, got["geopotential"].values
    )
    monkeypatch.setattr(qg_analysis, "qg_analysis_store", lambda build=True, spec=None, world=None: path)
    for source in ("builtin:qg3-analysis", "qg3-analysis"):
        ds = open_reanalysis(source)
        assert "z500" in ds and "vo800" in ds and ds.sizes["time"] == 4
    with pytest.raises(UserError, match="builtin:qg3-analysis"):
        open_reanalysis("builtin:qg3-analyses")
