"""`wxens catalog ...` through workflows.cli.main: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.data_catalog.dc_stores import wb2_dataset, write
from workflows.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "catalog", "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("(")}
    assert "sphere-swe" in lines and "local" in lines["sphere-swe"]
    assert "remote" in lines["era5-wb2-64x32"] and "1959-01-01T00 .. 2023-01-10T18" in lines["era5-wb2-64x32"]
    code, out, _ = run(capsys, "catalog", "list", "--json")
    names = [e["name"] for e in json.loads(out)]
    assert code == 0 and "arco-era5" in names


def test_show_remote_entry_is_not_opened(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "catalog", "show", "era5-wb2-64x32")
    assert code == 0, err
    assert "remote entry (catalog metadata only; not opened)" in out
    assert "gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32_equiangular_conservative.zarr" in out
    assert "time: 1959-01-01T00 .. 2023-01-10T18 every 6h" in out


def test_show_local_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(wb2_dataset(), tmp_path / "s.zarr", zarr_format=2)
    code, out, err = run(capsys, "catalog", "show", str(path))
    assert code == 0, err
    assert "format: zarr v2, layout: reanalysis" in out
    assert "dims: time=4, latitude=32, longitude=64" in out
    assert "time: 2000-01-01T00:00:00 .. 2000-01-01T18:00:00 (4 times, every 6h)" in out
    assert "grid: 64x32 equiangular without poles, 5.625 x 5.625 deg, global" in out
    assert "channels (7):" in out and "z850" in out and "(from geopotential)" in out
    assert "static fields: lsm" in out
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    code, out, _ = run(capsys, "catalog", "show", str(path), "--json")
    info = json.loads(out)
    assert info["size_bytes"] == size and info["grid"]["global"] is True
    assert [c["name"] for c in info["channels"]] == ["z500", "z700", "z850", "t500", "t700", "t850", "t2m"]


def test_show_realdata_forecast(realdata: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "catalog", "show", str(realdata / "ifs_ens_z500_europe_1deg.zarr"))
    assert code == 0, err
    assert "layout: forecast" in out and "members: 51" in out and "leads: 96h" in out
    assert "regional" in out and "longitude 310..20" in out


def test_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(wb2_dataset(levels=(500,)), tmp_path / "s.zarr")
    code, out, err = run(
        capsys, "catalog", "stats", str(path), "-V", "z500", "--end", "2000-01-01T12", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["provenance"]["n_times"] == 3
    # analytic fixture: z500 grows by exactly 1000 per 6 h step, so the tendency has no spread
    assert doc["channels"]["z500"]["tendency_std"] == pytest.approx(0.0, abs=1e-6)


def _one_line_error(code: int, err: str, text: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and text in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").mkdir()
    code, _, err = run(capsys, "catalog", "show", str(tmp_path / "plain"))
    _one_line_error(code, err, "is not a zarr store (no zarr.json, .zgroup or .zmetadata)")

    xr.Dataset().to_zarr(tmp_path / "empty.zarr")
    code, _, err = run(capsys, "catalog", "show", str(tmp_path / "empty.zarr"))
    _one_line_error(code, err, "is empty (no data variables)")

    code, _, err = run(capsys, "catalog", "show", "no-such-entry")
    _one_line_error(code, err, "no catalog entry of that name (catalog entries: arco-era5,")

    times = pd.DatetimeIndex(["2000-01-01T00", "2000-01-01T00"])
    dup = write(wb2_dataset(times=times, levels=(500,)), tmp_path / "dup.zarr")
    code, _, err = run(capsys, "catalog", "show", str(dup))
    _one_line_error(code, err, "1 duplicate time(s) in the store, first 2000-01-01T00:00:00")

    good = write(wb2_dataset(levels=(500,)), tmp_path / "good.zarr")
    code, _, err = run(capsys, "catalog", "stats", str(good), "-V", "q700")
    _one_line_error(code, err, "unknown variable 'q700' (the store has: z500, t500, t2m)")
    code, _, err = run(capsys, "catalog", "check", str(good), "-V", "t850")
    _one_line_error(code, err, "variable t850 needs level 850 hPa, not in the store (t levels: 500 hPa)")
    code, _, err = run(capsys, "catalog", "stats", str(good), "--start", "2031-01-01")
    _one_line_error(code, err, "no data for time from 2031-01-01 (store covers 2000-01-01T00:00:00")

    nan = wb2_dataset(levels=(500,))
    nan["2m_temperature"][1, 2, 3] = np.nan
    code, _, err = run(capsys, "catalog", "stats", str(write(nan, tmp_path / "nan.zarr")))
    _one_line_error(code, err, "1 NaN/infinite value(s) in t2m")

    bad_cat = tmp_path / "cat" / "catalog.yaml"
    bad_cat.parent.mkdir()
    bad_cat.write_text("entries:\n  evil:\n    location: ../../etc/passwd\n")
    code, _, err = run(capsys, "catalog", "list", "--catalog", str(bad_cat))
    _one_line_error(code, err, "escapes the catalog folder")


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(wb2_dataset(levels=(500,)), tmp_path / "good.zarr")
    code, out, err = run(capsys, "catalog", "check", str(good))
    assert code == 0, err
    assert out.startswith("ok: 3 channels, 4 times, 64x32 equiangular without poles")

    regional = write(wb2_dataset(levels=(500,)).isel(latitude=slice(16, 28)), tmp_path / "reg.zarr")
    code, _, err = run(capsys, "catalog", "check", str(regional))
    _one_line_error(code, err, "grid is not global (latitude 2.8125..64.6875, longitude 0..354.375, 12x64)")
    code, out, err = run(capsys, "catalog", "check", str(regional), "--regional")
    assert code == 0 and "regional" in out, err

    uneven = write(
        wb2_dataset(levels=(500,)).isel(longitude=[0, 1, 2, 4, 8, 16, 32, 63]), tmp_path / "u.zarr"
    )
    code, _, err = run(capsys, "catalog", "check", str(uneven))
    _one_line_error(code, err, "non-uniform longitude spacing")

    nan = wb2_dataset(levels=(500,))
    nan["geopotential"][3, 0, 31, 0] = np.nan
    code, _, err = run(capsys, "catalog", "check", str(write(nan, tmp_path / "nan.zarr")))
    _one_line_error(
        code,
        err,
        "1 NaN/infinite value(s) in the selected data (z500: 1); first at z500 time=2000-01-01T18:00, "
        "latitude=87.1875, longitude=0",
    )
    # a selection that avoids the bad time passes
    code, out, err = run(capsys, "catalog", "check", str(tmp_path / "nan.zarr"), "--end", "2000-01-01T12")
    assert code == 0 and out.startswith("ok: 3 channels, 3 times"), err
