"""Between-channel structure of perturbations (``pipeline.perturbations.structure``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from data_catalog.errors import UserError
from pipeline.perturbations.structure import channel_correlation, main, parse_designs, structure


def test_channel_correlation_analytical_cases():
    rng = np.random.default_rng(0)
    lat = np.linspace(-87.5, 87.5, 36)
    w = np.cos(np.deg2rad(lat))
    a = rng.standard_normal((5, 36, 72))
    x = np.stack(
        [a, -3.0 * a, rng.standard_normal((5, 36, 72)), np.zeros((5, 36, 72))], axis=1
    )  # (5, C, lat, lon)
    assert channel_correlation(x, 0, 1, w) == pytest.approx(-1.0, abs=1e-12)
    assert abs(channel_correlation(x, 0, 2, w)) < 0.02  # independent fields
    assert np.isnan(channel_correlation(x, 0, 3, w))
    # against an independent formula with the weights broadcast over the pooled samples
    y = x[:, 2] + 0.5 * x[:, 0] * np.sin(np.deg2rad(lat))[:, None]
    W = np.broadcast_to(w[:, None], y.shape)
    ref = np.average(x[:, 0] * y, weights=W) / np.sqrt(
        np.average(x[:, 0] ** 2, weights=W) * np.average(y**2, weights=W)
    )
    z = np.stack([x[:, 0], y], axis=1)
    assert channel_correlation(z, 0, 1, w) == pytest.approx(ref, rel=1e-12)


def test_parse_designs():
    got = parse_designs("z500:3, all:1,noise,z500+u500:2")
    assert [(s, c) for _, s, c in got] == [(["z500"], 3), (None, 1), (None, 0), (["z500", "u500"], 2)]
    for bad in ("z500", "z500:0", ":3", "all:x"):
        with pytest.raises(UserError, match="SEED:CYCLES"):
            parse_designs(bad)


def test_structure_recovers_a_known_analysis_error(world, tmp_path, capsys):
    """The truth is the analysis minus an error whose u500 is 2 x its z500 pattern and whose v500 is
    independent: the analysis-error row must give 1 and ~0; noise rows ~0."""
    ana = xr.open_zarr(world["analysis"]).load()
    rng = np.random.default_rng(1)
    shape = ana["z500"].shape
    e = rng.standard_normal(shape)
    truth = ana.copy()
    truth["z500"] = ana["z500"] - 10.0 * e
    truth["u500"] = ana["u500"] - 20.0 * e
    truth["v500"] = ana["v500"] - rng.standard_normal(shape)
    truth.to_zarr(tmp_path / "truth.zarr", zarr_format=3)
    kw = dict(
        inits=3, pairs=3, first="2008-01-02T00", last="2008-01-05T00", truth=str(tmp_path / "truth.zarr")
    )
    res = structure(world["analysis"], world["checkpoints"][0], "pipeline.testing:load_toy_checkpoint",
                    ["z500", "u500", "v500"], parse_designs("z500:1,all:1,noise"), **kw)  # fmt: skip
    rows = res["rows"]
    assert res["inits"] == 3 and list(rows)[0].startswith("analysis error")
    err = rows["analysis error (analysis - truth)"]
    assert err["z500-u500"] == pytest.approx(1.0, abs=1e-5)
    assert abs(err["z500-v500"]) < 0.05
    assert all(abs(r) < 0.15 for r in rows["spherical noise"].values())
    assert all(-1 <= r <= 1 for row in rows.values() for r in row.values())
    assert main(["--analysis", world["analysis"], "--checkpoint", world["checkpoints"][0], "--loader",
                 "pipeline.testing:load_toy_checkpoint", "--channels", "z500,u500", "--designs", "all:1,noise", "--truth", str(tmp_path / "truth.zarr"),
                 "--inits", "2", "--pairs", "2", "--first", "2008-01-02T00", "--last", "2008-01-04T00"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| z500-u500 |" in out and "| spherical noise |" in out
    with pytest.raises(UserError, match="not in the model: t850"):
        structure(world["analysis"], world["checkpoints"][0], "pipeline.testing:load_toy_checkpoint",
                  ["z500", "t850"], parse_designs("noise"), inits=1)  # fmt: skip
