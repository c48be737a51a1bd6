"""Inline scores (merged over member blocks, checkpoints and shards) equal the offline evaluation of
the stored members."""

from __future__ import annotations

import numpy as np
import xarray as xr

from data_catalog.grid import area_weights
from evaluation.metrics import crps_between_groups, crps_ensemble
from pipeline import open_forecast, run_forecast
from tests.pipeline.conftest import base_config

CH = ["z500", "u500", "v500", "vo500"]


def offline(run_dir, analysis):
    ds = open_forecast(run_dir, channels=True).load()
    ana = xr.open_zarr(analysis)
    x = np.stack([ds[c].values for c in CH], axis=3).astype(np.float64)  # (t, n, lead, C, y, x)
    valid = ds.time.values[:, None] + ds.prediction_timedelta.values[None, :]
    y = np.stack([np.stack([ana[c].sel(time=v).values for c in CH], 1) for v in valid]).astype(np.float64)
    return ds, x, y


def brute_fair_crps(x, y):
    """(1/M) sum|x_i - y| - 1/(2 M (M-1)) sum_{i,j} |x_i - x_j|, members on axis 1."""
    m = x.shape[1]
    skill = np.abs(x - y[:, None]).mean(1)
    pair = np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2))
    return skill - pair / (2 * m * (m - 1))


def test_inline_equals_offline(reference_run, world):
    run_dir = reference_run["run_dir"]
    sc = xr.open_zarr(run_dir / "scores.zarr").load()
    ds, x, y = offline(run_dir, world["analysis"])
    mean = x.mean(1)
    np.testing.assert_allclose(sc["ensemble_mean"].values, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sc["variance"].values, x.var(1, ddof=1), rtol=1e-4, atol=1e-14)
    crps_off = crps_ensemble(x, y, member_axis=1, fair=True)
    np.testing.assert_allclose(sc["crps"].values, crps_off, rtol=1e-5, atol=1e-12)
    t = 1  # one init time, brute force O(M^2)
    np.testing.assert_allclose(
        sc["crps"].values[t], brute_fair_crps(x[t][None], y[t][None])[0], rtol=1e-5, atol=1e-12
    )
    np.testing.assert_allclose(
        sc["best_member_abs_error"].values, np.abs(x - y[:, None]).min(1), rtol=1e-6, atol=1e-12
    )
    # rank histogram: exact where no member ties the truth; the few float32 ties are broken at random
    less = (x < y[:, None]).sum(1)
    tied = (x == y[:, None]).any(1)
    m = x.shape[1]
    flat = less.reshape(*less.shape[:3], -1)
    hist = np.apply_along_axis(lambda r: np.bincount(r, minlength=m + 1), -1, flat)
    n_tied = tied.reshape(*tied.shape[:3], -1).sum(-1)
    assert n_tied.sum() < 0.001 * tied.size
    diff = np.abs(sc["rank_histogram"].values - hist).sum(-1)
    assert np.all(diff <= 2 * n_tied)
    assert np.all(sc["rank_histogram"].values.sum(-1) == hist.sum(-1))
    # exceedance probabilities
    for k, thr in enumerate([54000.0, 54500.0]):
        np.testing.assert_allclose(
            sc["exceedance_probability_z500"].values[:, :, k], (x[:, :, :, 0] > thr).mean(1), atol=1e-6
        )
    # per-member errors and area-weighted aggregates
    w = area_weights(ds.latitude.values)
    rmse = np.sqrt((((x - y[:, None]) ** 2).mean(-1) * w).mean(-1))
    np.testing.assert_allclose(sc["member_rmse"].values, rmse, rtol=1e-5)
    crps_g = (crps_off.mean(-1) * w).mean(-1)
    np.testing.assert_allclose(sc["crps_global"].values, crps_g, rtol=1e-5)
    # the checkpoint-stratified fair CRPS (spread over pairs of members of different checkpoints)
    ckpt = ds["checkpoint"].values
    assert len(np.unique(ckpt)) > 1
    between = crps_between_groups(x, y, ckpt, member_axis=1)
    np.testing.assert_allclose(
        sc["crps_between_checkpoints_global"].values, (between.mean(-1) * w).mean(-1), rtol=1e-5
    )
    skill = np.sqrt((((mean - y) ** 2).mean(-1) * w).mean(-1))
    spread = np.sqrt((x.var(1, ddof=1).mean(-1) * w).mean(-1))
    np.testing.assert_allclose(
        sc["spread_skill_ratio"].values[:, 1:], (np.sqrt((m + 1) / m) * spread / skill)[:, 1:], rtol=1e-4
    )


def test_inline_spectra_and_keep_none(world, tmp_path):
    from evaluation.spectra import power_spectrum

    cfg = base_config(
        world,
        init_times=["2008-01-02T00"],
        checkpoints=world["checkpoints"][:1],
        perturbation={"method": "spherical", "n_pairs": 2},
        batch_size=2,
        lead_steps=2,
        inline={"enabled": True, "spectra": True, "crps": True, "memory_mb": 0.05},
    )
    run_forecast(cfg, tmp_path / "members")
    sc = xr.open_zarr(tmp_path / "members" / "scores.zarr").load()
    ds, x, y = offline(tmp_path / "members", world["analysis"])
    ps = power_spectrum(x, ds.latitude.values).power  # (t, n, lead, C, l)
    np.testing.assert_allclose(sc["power_spectrum_members"].values, ps.mean(1), rtol=1e-6)
    np.testing.assert_allclose(
        sc["power_spectrum_mean"].values, power_spectrum(x.mean(1), ds.latitude.values).power, rtol=1e-5
    )
    # tiny memory budget -> many latitude bands; same CRPS
    np.testing.assert_allclose(sc["crps"].values, crps_ensemble(x, y, member_axis=1), rtol=1e-5, atol=1e-12)
    # keep: none writes no member fields, only scores, and the scores are the same
    cfg["output"] = {"keep": "none"}
    run_forecast(cfg, tmp_path / "none")
    dn = open_forecast(tmp_path / "none", channels=True)
    assert not any(v in dn for v in CH)
    sn = xr.open_zarr(tmp_path / "none" / "scores.zarr").load()
    assert "ensemble_mean" not in sn
    np.testing.assert_array_equal(sn["crps"].values, sc["crps"].values)


def _scores_by_path(world, tmp_path, monkeypatch, **over):
    """Scores of the same run through the NumPy path, the device path (forced on the CPU) and the
    device path on the scorer thread."""
    import torch

    from pipeline import engine

    chosen: list[object] = []

    def forced(cfg, device):
        dev = torch.device("cpu") if cfg.inline.on_device else None
        chosen.append(dev)
        return dev

    monkeypatch.setattr(engine, "score_device", forced)
    inline = {"enabled": True, "spectra": True, "thresholds": {"z500": [54000.0, 54500.0]}, "memory_mb": 0.05}
    common = dict(init_times=["2008-01-02T00", "2008-01-02T12"], lead_steps=2, inline=inline, **over)
    runs = {}
    for name, o in {
        "numpy": {"inline": {**inline, "on_device": False}, "io_threads": 0},
        "device": {"io_threads": 0},
        "device_thread": {"io_threads": 1},
    }.items():
        chosen.clear()
        run_forecast(base_config(world, **{**common, **o}), tmp_path / name)
        assert chosen and all((d is None) == (name == "numpy") for d in chosen)
        runs[name] = xr.open_zarr(tmp_path / name / "scores.zarr").load()
    ref = runs["numpy"]
    for name in ("device", "device_thread"):
        got = runs[name]
        assert set(got.data_vars) == set(ref.data_vars)
        for v in ref.data_vars:
            a, b = got[v].values, ref[v].values
            if np.issubdtype(b.dtype, np.integer):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {v}")
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12, err_msg=f"{name} {v}")
        # the stored members are the same bytes: only where the scores are reduced changed
        for c in CH:
            np.testing.assert_array_equal(
                open_forecast(tmp_path / name, channels=True)[c].values,
                open_forecast(tmp_path / "numpy", channels=True)[c].values,
            )
    return ref


def test_inline_on_device_path_equals_numpy(world, tmp_path, monkeypatch):
    """The device path of the inline scorer (torch reductions, spectra and CRPS sort where the model
    runs; on a GPU run by default), forced here on the CPU, gives the NumPy path's scores to float64
    rounding, synchronously and on the scorer thread; ``inline.on_device: false`` keeps NumPy."""
    ref = _scores_by_path(world, tmp_path, monkeypatch)
    ds, x, y = offline(tmp_path / "numpy", world["analysis"])
    np.testing.assert_allclose(ref["crps"].values, crps_ensemble(x, y, member_axis=1), rtol=1e-5, atol=1e-12)


def test_inline_on_device_path_with_nonfinite_members(world, tmp_path, monkeypatch):
    """Members that blow up (NaN from the second lead) take the general torch path; same scores."""
    import torch

    from pipeline.testing import MEANS, STDS, ToyModel, write_toy_checkpoint

    ana = xr.open_zarr(world["analysis"]).sel(time="2008-01-02T00")
    a = torch.tensor(np.stack([ana[c].values for c in CH]))[None]
    control = ToyModel(seed=5).step(a)[0, 0, 0, 0].item()
    ck = str(
        write_toy_checkpoint(tmp_path / "blowup", seed=5, nan_above=(control - MEANS["z500"]) / STDS["z500"])
    )
    pert = {"method": "gaussian", "n_pairs": 4, "alpha": 1.0}
    ref = _scores_by_path(world, tmp_path, monkeypatch, checkpoints=[ck], perturbation=pert)
    n = ref["n_members"].values
    assert 1 <= n.min() < n[:, 0].max()  # some members dropped out, others scored
