"""The calibrated spectral filter (models.spectral_filter): exact action on spherical harmonics,
Parseval against the evaluation's independent spectrum, the calibration's analytical fixed point on an
oracle model, checkpoint files, loading errors and the command."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from data_catalog.errors import UserError
from models.checkpoint import load_checkpoint
from models.data import Block
from models.spectral_filter import (
    FILTER_FILE,
    CalibrationSettings,
    SpectralFilter,
    calibrate,
    degree_power,
    read_filter,
    write_filter,
)
from models.train import TrainConfig, train

NLAT, NLON, L = 32, 64, 16


def _grid() -> tuple[np.ndarray, np.ndarray]:
    lat = 90.0 - (np.arange(NLAT) + 0.5) * 180.0 / NLAT
    return lat, np.arange(NLON) * 360.0 / NLON


def _real_harmonic(lat: np.ndarray, lon: np.ndarray, ell: int, m: int) -> np.ndarray:
    """Re Y_l^m on the grid from scipy (an independent reference for the transforms)."""
    theta = np.deg2rad(90.0 - lat)[:, None]
    phi = np.deg2rad(lon)[None, :]
    return np.real(sph_harm_y(ell, m, theta, phi))


def test_zero_gain_is_the_identity_and_one_degree_is_scaled_exactly() -> None:
    lat, lon = _grid()
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.normal(size=(3, 2, NLAT, NLON)), dtype=torch.float32)
    assert torch.equal(SpectralFilter(lat, NLON, np.zeros((2, L)))(y), y)
    # channel 0: Y_5^2 + Y_9^4 + Y_20^3 (degree 20 lies beyond the filter's L = 16)
    a, b, c = (_real_harmonic(lat, lon, ell, m) for ell, m in ((5, 2), (9, 4), (20, 3)))
    x = torch.tensor(np.stack([a + b + c, a - b])[None], dtype=torch.float32)
    g = np.zeros((2, L))
    g[0, 5], g[1, 9] = math.log(1.3), math.log(0.6)
    out = SpectralFilter(lat, NLON, g)(x)[0].numpy()
    scale = np.abs(a).max()
    np.testing.assert_allclose(out[0], 1.3 * a + b + c, atol=2e-5 * scale)
    np.testing.assert_allclose(out[1], a - 0.6 * b, atol=2e-5 * scale)


def test_power_per_degree_scales_by_the_squared_gain() -> None:
    """Parseval: the filtered field's degree power (evaluation.spectra, another implementation) is
    exp(2 g_l) times the input's at every degree below the filter's truncation, and unchanged above
    (fields band-limited to the grid's exact truncation, 16, where both transforms are exact)."""
    from evaluation.spectra import power_spectrum
    from models.sht import GridInverseRealSHT, GridRealSHT

    lat, lon = _grid()
    rng = np.random.default_rng(1)
    lmax, lf = 16, 12
    coeffs = torch.complex(torch.randn(4, 1, lmax, lmax), torch.randn(4, 1, lmax, lmax))
    x = GridInverseRealSHT(lat, NLON, lmax, lmax)(coeffs)  # band-limited random fields
    g = rng.uniform(-0.3, 0.3, size=(1, lf))
    y = SpectralFilter(lat, NLON, g)(x)
    p_in = power_spectrum(x[:, 0].numpy(), lat, method="legendre").power
    p_out = power_spectrum(y[:, 0].numpy(), lat, method="legendre").power
    assert p_out.shape == (4, lmax)
    np.testing.assert_allclose(p_out[:, 1:lf] / p_in[:, 1:lf], np.exp(2 * g[:, 1:lf]).repeat(4, 0), rtol=1e-4)
    np.testing.assert_allclose(p_out[:, lf:], p_in[:, lf:], rtol=1e-4)
    # the module's own degree power is the evaluation's up to its 4 pi normalisation
    own = degree_power(y[:, 0], GridRealSHT(lat, NLON, lmax, lmax)).numpy()
    np.testing.assert_allclose(
        own / own.sum(-1, keepdims=True), p_out / p_out.sum(-1, keepdims=True), rtol=1e-4
    )


class OracleModel:
    """Returns the truth at the valid time with each degree's coefficients scaled by ``s[c, l]``
    (then the calibrated filter, as the SFNO wrapper): the roll-out's power ratio is ``(F s)^2``."""

    def __init__(self, block: Block, lat: np.ndarray, lon: np.ndarray, log_s: np.ndarray) -> None:
        self.block = block
        self.index = {np.datetime64(t, "s"): i for i, t in enumerate(block.times)}
        self.channels = ("a", "b")
        self.latitude, self.longitude = lat, lon
        self.time_step = dt.timedelta(hours=6)
        self.device = torch.device("cpu")
        self.net = SimpleNamespace(config=SimpleNamespace(lmax=L), eval=lambda: None)
        self.bias = SpectralFilter(lat, NLON, log_s)
        self.spectral_filter: SpectralFilter | None = None

    def set_spectral_filter(self, f: SpectralFilter | None) -> None:
        self.spectral_filter = f

    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor, times: list, noise: torch.Tensor | None = None) -> torch.Tensor:
        idx = [self.index[np.datetime64(t, "s") + np.timedelta64(6, "h")] for t in times]
        y = self.bias(self.block.data[idx])
        return y if self.spectral_filter is None else self.spectral_filter(y)


def _oracle_block() -> Block:
    from models.sht import GridInverseRealSHT

    lat, _ = _grid()
    gen = torch.Generator().manual_seed(4)
    n = 60
    coeffs = torch.complex(torch.randn(n, 2, 20, 20, generator=gen), torch.randn(n, 2, 20, 20, generator=gen))
    data = GridInverseRealSHT(lat, NLON, 20, 20)(coeffs).float()
    times = np.datetime64("2003-01-01T00", "ns") + np.arange(n) * np.timedelta64(6, "h")
    return Block(data, times, np.array([30]))  # two trajectories, as the world's years


@pytest.mark.parametrize("eta, iters", [(1.0, 1), (0.5, 3)])
def test_calibration_reaches_the_analytical_fixed_point(eta: float, iters: int) -> None:
    """With ratio (F s)^2 the update is log F <- (1 - eta) log F - eta log s, so after k rounds
    log F = -log s (1 - (1 - eta)^k): eta = 1 is exact after one round."""
    lat, lon = _grid()
    rng = np.random.default_rng(2)
    log_s = rng.uniform(-0.4, 0.4, size=(2, L))
    log_s[:, 0] = 0.0
    model = OracleModel(_oracle_block(), lat, lon, log_s)
    s = CalibrationSettings(
        years=(2003, 2003), n_inits=4, steps=10, window=5, iters=iters, eta=eta, max_change=10.0
    )
    g, history = calibrate(model, model.block, s)
    want = -log_s * (1 - (1 - eta) ** iters)
    np.testing.assert_allclose(g, want, atol=2e-5)
    assert len(history) == iters + 1 and history[0]["ratio_max"] == pytest.approx(
        math.exp(2 * log_s[:, 1:11].max()), rel=1e-4
    )
    if eta == 1.0:
        assert history[-1]["ratio_min"] == pytest.approx(1.0, abs=1e-4) and history[-1][
            "ratio_max"
        ] == pytest.approx(1.0, abs=1e-4)
    # the step limit holds every round
    g1, _ = calibrate(
        model,
        model.block,
        CalibrationSettings(n_inits=2, steps=6, window=3, iters=2, eta=1.0, max_change=0.05),
    )
    assert np.abs(g1).max() <= 0.1 + 1e-12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_world) -> tuple[Path, Path]:
    cfg = TrainConfig(dataset="synthetic", seed=1, embed_dim=8, num_layers=2, lmax=8, mmax=8, steps=4, batch_size=4,
                      warmup_steps=2, train_years=(2000, 2000), valid_years=(2001, 2001), skill_inits=2,
                      skill_lead_steps=8)  # fmt: skip
    root = tmp_path_factory.mktemp("sf")
    out = root / "ckpts" / "seed-1"
    train(cfg, out, dataset=tiny_world, progress=False)
    store = root / "world.zarr"
    tiny_world.to_zarr(store, mode="w", zarr_format=3)
    return out, store


def test_checkpoint_with_a_filter_loads_it_and_errors_are_one_line(ckpt, tmp_path: Path) -> None:
    path, _ = ckpt
    import shutil

    d = tmp_path / "c"
    shutil.copytree(path, d)
    plain = load_checkpoint(d)
    assert plain.spectral_filter is None
    g = np.zeros((4, 8))
    g[0, 2], g[3, 5] = 0.2, -0.3
    write_filter(d, list(plain.channels), g, {"note": "test"})
    m = load_checkpoint(d)
    assert m.spectral_filter is not None and load_checkpoint(d, spectral_filter=False).spectral_filter is None
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([5.5e4, 10.0, 0.0, 0.0]).view(1, 4, 1, 1) + torch.tensor([500.0, 5.0, 5.0, 1e-5]).view(
        1, 4, 1, 1
    ) * torch.randn(2, 4, 16, 32, generator=gen)
    t = np.datetime64("2001-03-01T00")
    want = SpectralFilter(plain.latitude, plain.longitude.size, g)(plain.step(x, t))
    torch.testing.assert_close(m.step(x, t), want, rtol=0, atol=0)
    doc = json.loads((d / FILTER_FILE).read_text())
    for change, msg in (
        ({"channels": ["a", "b", "c", "d"]}, "is for channels"),
        ({"log_gain": [[0.0] * 9] * 4}, "shape"),
        ({"log_gain": [[float("nan")] * 8] * 4}, "non-finite"),
    ):
        (d / FILTER_FILE).write_text(json.dumps({**doc, **change}))
        with pytest.raises(UserError, match=msg):
            load_checkpoint(d)
    (d / FILTER_FILE).write_text("{")
    with pytest.raises(UserError, match="unreadable spectral_filter.json"):
        load_checkpoint(d)
    write_filter(d, ["z500"], np.zeros((1, 8)), {})
    with pytest.raises(UserError, match="is for channels"):
        read_filter(d, plain.channels, 8)
    with pytest.raises(ValueError, match="another number of channels"):
        plain.set_spectral_filter(SpectralFilter(plain.latitude, plain.longitude.size, np.zeros((1, 8))))


def test_command_calibrates_and_rescores(ckpt, tmp_path: Path, capsys) -> None:
    import shutil

    from workflows.cli import main

    path, store = ckpt
    folder = tmp_path / "ens"
    shutil.copytree(path, folder / "seed-1")
    before = json.loads((folder / "seed-1" / "skill.json").read_text())
    argv = ["checkpoints", "calibrate-spectrum", str(folder), "--dataset", str(store), "--years", "2000-2000",
            "--inits", "3", "--steps", "12", "--window", "4", "--iters", "2", "--eta", "0.5", "--max-change", "0.05"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seed-1: power ratio" in out
    doc = json.loads((folder / "seed-1" / FILTER_FILE).read_text())
    assert doc["lmax"] == 8 and len(doc["history"]) == 3 and doc["settings"]["years"] == [2000, 2000]
    assert doc["skill_unfiltered"] == before
    g = np.asarray(doc["log_gain"])
    assert g.shape == (4, 8) and np.abs(g).max() <= 0.1 + 1e-12 and np.all(g[:, 0] == 0)
    after = json.loads((folder / "seed-1" / "skill.json").read_text())
    assert after["spectral_filter"] is True and after["init_times"] == before["init_times"]
    assert after["lead_hours"] == before["lead_hours"] and after["rmse"] != before["rmse"]
    # the rescored skill is the filtered model's: recompute one number independently
    from models.data import load_years, monthly_climatology, open_dataset
    from models.skill import skill_table

    ds = open_dataset(str(store))
    m = load_checkpoint(folder / "seed-1")
    ref = skill_table(m, load_years(ds, list(m.channels), (2001, 2001)),
                      monthly_climatology(load_years(ds, list(m.channels), (2000, 2000))), n_inits=2, lead_steps=8)  # fmt: skip
    assert after["rmse"]["z500"] == pytest.approx(ref["rmse"]["z500"], rel=1e-6)
    assert main(["checkpoints", "list", str(folder)]) == 0
    listed = capsys.readouterr().out
    assert "seed-1" in listed and "yes" in listed  # the filter column
    # --refine goes on from the present gains: one more round, history and unfiltered skill kept
    assert main([*argv[:-4], "--iters", "1", "--eta", "0.5", "--max-change", "0.05", "--refine"]) == 0
    capsys.readouterr()
    doc2 = json.loads((folder / "seed-1" / FILTER_FILE).read_text())
    assert [h["round"] for h in doc2["history"]] == [0, 1, 2, 3]
    assert doc2["history"][2] == pytest.approx(doc["history"][2], rel=1e-9)  # same gains, same ratio
    assert doc2["skill_unfiltered"] == before and doc2["earlier_settings"] == [doc["settings"]]
    g2 = np.asarray(doc2["log_gain"])
    assert 0 < np.abs(g2 - g).max() <= 0.05 + 1e-12
    assert main(["checkpoints", "calibrate-spectrum", str(folder), "--window", "0"]) == 2
    assert "1 <= window <= steps" in capsys.readouterr().err
    shutil.copytree(path, tmp_path / "bare" / "seed-1")
    assert (
        main(
            ["checkpoints", "calibrate-spectrum", str(tmp_path / "bare"), "--dataset", str(store), "--refine"]
        )
        == 2
    )
    assert "no spectral_filter.json to refine" in capsys.readouterr().err
