"""Report and CLI: `wxens score` / `wxens report` through workflows.cli.main, HTML escaping."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation import open_scores, score_forecast, write_report
from workflows.cli import main

LAT = np.linspace(-84.375, 84.375, 16)
LON = np.arange(32) * 11.25


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(7)
    times = pd.date_range("2020-01-01", periods=10, freq="6h")
    truth = xr.Dataset(
        {
            "z500": (
                ("time", "latitude", "longitude"),
                54000 + 400 * rng.standard_normal((10, 16, 32)),
                {"units": "m2 s-2"},
            ),
            "t850": (
                ("time", "latitude", "longitude"),
                270 + 5 * rng.standard_normal((10, 16, 32)),
                {"units": "K"},
            ),
        },
        coords={"time": times, "latitude": LAT, "longitude": LON},
    ).astype("f4")
    inits, leads = times[:2], pd.to_timedelta([0, 6, 12], unit="h")
    data = {}
    for v, sd in (("z500", 400.0), ("t850", 5.0)):
        x = np.stack(
            [np.stack([truth[v].sel(time=t + dt).values for dt in leads]) for t in inits]
        )  # (t, l, y, x)
        x = x[:, None] + 0.5 * sd * rng.standard_normal((2, 8, 3, 16, 32))
        data[v] = (
            ("time", "number", "prediction_timedelta", "latitude", "longitude"),
            x.astype("f4"),
            truth[v].attrs,
        )
    fc = xr.Dataset(
        data,
        coords={
            "time": inits,
            "number": np.arange(8),
            "prediction_timedelta": leads,
            "latitude": LAT,
            "longitude": LON,
        },
    )
    fpath, tpath = root / "fc.zarr", root / "truth.zarr"
    fc.chunk({"time": 1, "number": 4, "prediction_timedelta": 1}).to_zarr(fpath, consolidated=False)
    truth.chunk({"time": 1}).to_zarr(tpath, consolidated=False)
    return fpath, tpath


def test_cli_score_and_report(stores: tuple[Path, Path], tmp_path: Path) -> None:
    fpath, tpath = stores
    out = tmp_path / "scores.nc"
    rc = main(
        [
            "score",
            str(fpath),
            "--truth",
            str(tpath),
            "--out",
            str(out),
            "--baseline",
            "persistence",
            "--variables",
            "z500,t850",
            "--threshold",
            "t850=270",
            "--scheduler",
            "sync",
        ]
    )
    assert rc == 0
    s = open_scores(out)
    direct = score_forecast(fpath, tpath, baselines=["persistence"], thresholds={"t850": [270.0]})
    xr.testing.assert_allclose(s.crps, direct.crps, rtol=1e-12)
    table = pd.read_csv(out.with_suffix(".csv"))
    assert set(table["forecast"]) == {"forecast", "persistence"}
    rep = tmp_path / "rep"
    rc = main(
        [
            "report",
            str(out),
            "--out",
            str(rep),
            "--forecast",
            str(fpath),
            "--truth",
            str(tpath),
            "--variables",
            "t850",
        ]
    )
    assert rc == 0
    page = (rep / "report.html").read_text()
    pngs = sorted(p.name for p in rep.glob("*.png"))
    referenced = sorted(set(re.findall(r"src='([^']+\.png)'", page)))
    assert pngs == referenced
    for kind in (
        "scorecard_crps",
        "crps_t850",
        "rank_t850",
        "reliability_t850_0",
        "maps_t850",
        "plume_t850",
        "spectra_t850",
        "efi_t850",
    ):
        assert f"{kind}.png" in pngs, kind
    assert not any("z500" in n for n in pngs)
    for name in pngs:
        data = (rep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_report_escapes_text(stores: tuple[Path, Path], tmp_path: Path) -> None:
    fpath, tpath = stores
    s = score_forecast(fpath, tpath, variables=["t850"], regions=["global"], baselines=["persistence"])
    s = s.assign_coords(variable=["<b>t&850"], forecast=["my 'fc' <x>", "persistence"])
    page = write_report(s, tmp_path / "r", title="<script>alert(1)</script>").read_text()
    assert "<script>" not in page and "<b>t&850" not in page and "<x>" not in page
    assert "&lt;b&gt;t&amp;850" in page and "&lt;script&gt;" in page
    assert all((tmp_path / "r" / n).stat().st_size > 0 for n in re.findall(r"src='([^']+)'", page))


def test_cli_user_errors(
    stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fpath, tpath = stores
    cases = [
        ["score", str(fpath), "--truth", str(tpath), "--out", str(tmp_path / "s.txt")],
        ["score", str(tmp_path / "missing.zarr"), "--truth", str(tpath), "--out", str(tmp_path / "s.nc")],
        [
            "score",
            str(fpath),
            "--truth",
            str(tpath),
            "--out",
            str(tmp_path / "s.nc"),
            "--baseline",
            "analogues",
        ],
        ["score", str(fpath), "--truth", str(tpath), "--out", str(tmp_path / "s.nc"), "--threshold", "t850"],
        ["report", str(tmp_path / "nothing.nc"), "--out", str(tmp_path / "r")],
    ]
    for argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "s.nc").exists()
