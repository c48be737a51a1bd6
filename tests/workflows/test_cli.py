"""``wxens run / status / info`` through the CLI entry point, with fake stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fakes import calls

from workflows.cli import main


def test_run_then_status(workflow_file: Path, fake_registry, capsys, tmp_path: Path) -> None:
    assert main(["run", str(workflow_file)]) == 0
    out, err = capsys.readouterr()
    run = tmp_path / "run"
    assert f"run directory: {run}" in out
    assert "[1/5] prepare ..." in err and "[5/5] report: done" in err
    assert main(["run", str(workflow_file)]) == 0
    assert "[3/5] forecast: skipped" in capsys.readouterr().err
    assert len(calls(run)) == 5

    assert main(["status", str(run), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    status = {row["stage"]: row["status"] for row in st["stages"]}
    assert status == {
        "prepare": "done",
        "train": "disabled",
        "skill": "done",
        "model_climate": "disabled",
        "forecast": "done",
        "score": "done",
        "report": "done",
    }
    fc = next(r for r in st["stages"] if r["stage"] == "forecast")
    assert fc["members"] == 8 and fc["member_forecasts_written"] == 16  # 8 members x 2 init times
    assert fc["member_steps_per_s"] > 0
    assert main(["status", str(run)]) == 0
    assert "member-steps/s" in capsys.readouterr().out


def test_status_shows_failed_and_pending_shards(workflow_file: Path, fake_registry, capsys, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["run", str(workflow_file), "--stage", "prepare", "--stage", "skill"]) == 0
    assert main(["run", str(workflow_file), "--stage", "forecast", "--shard", "0/2"]) == 0
    run.joinpath("FAIL_forecast").touch()
    assert main(["run", str(workflow_file), "--stage", "forecast", "--shard", "1/2"]) == 1
    err = capsys.readouterr().err
    assert "error: stage forecast shard 1/2 failed: RuntimeError: injected failure in forecast" in err
    assert "Traceback" not in err  # the traceback goes to the shard's log file only
    assert "Traceback" in (run / "logs" / "forecast-shard-1-of-2.log").read_text()
    assert main(["status", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    assert rows["forecast"]["status"] == "failed" and rows["forecast"]["shards"] == {
        "0/2": "done",
        "1/2": "failed",
    }
    assert rows["score"]["status"] == "pending"
    # a changed config makes the finished stages stale
    workflow_file.write_text(workflow_file.read_text().replace("lead_steps: 4", "lead_steps: 5"))
    assert main(["run", str(workflow_file), "--explain"]) == 0
    text = capsys.readouterr().out
    assert "lead: 5 steps" in text and "prepare" in text and "stale" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "missing.yaml"], "error: workflow file not found: missing.yaml"),
        (["run"], "error: missing WORKFLOW"),
        (["status", "nowhere"], "error: not a run directory (no config.yaml): nowhere"),
        (["info", "nowhere.zarr"], "error: store not found: nowhere.zarr"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == message or (err.startswith(message) and "\n" not in err)


def test_bad_shard_and_stage(workflow_file: Path, fake_registry, capsys) -> None:
    assert main(["run", str(workflow_file), "--stage", "forecast", "--shard", "3/2"]) == 2
    assert "need 0 <= i < N" in capsys.readouterr().err
    assert main(["run", str(workflow_file), "--stage", "forcast"]) == 2
    assert "unknown stage 'forcast'" in capsys.readouterr().err
    bad = workflow_file.parent / "bad.yaml"
    bad.write_text("forecast: {members: 3, init_times: [2008-01-01], lead_steps: 1}\n")
    assert main(["run", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bad}: forecast: members must be even for bred perturbations (+/- pairs), got 3"
    )


def test_explain_without_workflow(capsys) -> None:
    assert main(["run", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "forecast.perturbation.method" in out and "score.dask.mode" in out


def test_info_of_a_forecast_store(tmp_path: Path, capsys) -> None:
    store = tmp_path / "f.zarr"
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "z500": (
                ("time", "number", "prediction_timedelta", "latitude", "longitude"),
                rng.standard_normal((2, 4, 3, 4, 8)).astype("float32"),
                {"units": "m2 s-2"},
            )
        },
        coords={
            "time": np.array(["2008-01-01", "2008-01-02"], dtype="datetime64[ns]"),
            "number": np.arange(4),
            "checkpoint": ("number", np.array([0, 0, 1, 1])),
            "pair": ("number", np.array([0, 0, 0, 0])),
            "prediction_timedelta": np.array([0, 6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]"),
            "latitude": np.array([67.5, 22.5, -22.5, -67.5]),
            "longitude": np.arange(8) * 45.0,
        },
        attrs={"wxens_seed": 7, "code_version": "0.1.0+gabc"},
    )
    ds.to_zarr(store, consolidated=False)
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"] == {"time": 2, "number": 4, "prediction_timedelta": 3, "latitude": 4, "longitude": 8}
    assert info["members"] == {"count": 4, "checkpoints": 2, "pairs": 1}
    assert info["lead_hours"] == {"first": 0, "last": 12, "count": 3}
    assert info["time"]["first"].startswith("2008-01-01") and info["time"]["count"] == 2
    assert info["variables"]["z500"]["units"] == "m2 s-2"
    assert info["attrs"] == {"wxens_seed": 7, "code_version": "0.1.0+gabc"}
    assert main(["info", str(store)]) == 0
    text = capsys.readouterr().out
    assert "members: count=4, checkpoints=2, pairs=1" in text and "z500 [m2 s-2]" in text
    (tmp_path / "junk").mkdir()
    assert main(["info", str(tmp_path / "junk")]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_info_of_real_stores(realdata: Path, capsys) -> None:
    """`wxens info` on real ECMWF/ERA5 samples agrees with what xarray reads from them directly."""
    for name in ("ifs_ens_z500_europe_1deg.zarr", "era5_eda_members_3deg.zarr"):
        path = realdata / name
        if not path.exists():
            pytest.skip(f"{name} not in the real data folder")
        ref = xr.open_zarr(path, consolidated=None)
        assert main(["info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["dims"] == {str(k): int(v) for k, v in ref.sizes.items()}
        assert set(info["variables"]) == set(ref.data_vars)
        assert info["members"]["count"] == ref.sizes["number"]
        assert info["time"]["count"] == ref.sizes["time"]
        assert info["levels"] == [float(v) for v in np.atleast_1d(ref["level"].values)]
        if "prediction_timedelta" in ref.dims:
            hours = ref["prediction_timedelta"].values.astype("timedelta64[h]").astype(int)
            assert info["lead_hours"]["first"] == hours.min()
