"""The engine end to end: layout, reproducibility of single members, kill -9 resume, shards, locks,
verification, non-finite members, config errors."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from data_catalog.errors import UserError
from pipeline import open_forecast, regenerate_members, run_forecast, verify
from pipeline.manifest import UnitLock
from tests.pipeline.conftest import base_config, digest, spawn


def test_store_layout_and_coords(reference_run):
    raw = open_forecast(reference_run["run_dir"])  # as stored: WeatherBench2 names, a level dim
    assert set(raw.data_vars) == {
        "geopotential", "u_component_of_wind", "v_component_of_wind", "vorticity", "nonfinite_step", "nonfinite"
    }  # fmt: skip
    g = raw["geopotential"]
    assert g.dims == ("time", "number", "prediction_timedelta", "level", "latitude", "longitude")
    assert raw["level"].values.tolist() == [500] and raw["level"].attrs["units"] == "hPa"
    assert g.encoding["chunks"] == (1, 4, 1, 1, 32, 64)
    assert (
        g.attrs["units"] == "m2 s-2"
        and g.attrs["long_name"] == "Geopotential"
        and g.attrs["wxens_levels"] == [500]
    )
    ds = open_forecast(reference_run["run_dir"], channels=True)
    assert ds.attrs["wxens_complete"]
    assert ds["z500"].dims == ("time", "number", "prediction_timedelta", "latitude", "longitude")
    assert ds.sizes["number"] == 16 and ds.sizes["prediction_timedelta"] == 4
    assert (
        ds["z500"].attrs["units"] == "m2 s-2" and ds["z500"].attrs["long_name"] == "Geopotential at 500 hPa"
    )
    np.testing.assert_array_equal(ds["z500"].values, g.sel(level=500).values)
    assert ds["latitude"].attrs["units"] == "degrees_north"
    np.testing.assert_array_equal(ds["checkpoint"].values, np.repeat([0, 1], 8))
    np.testing.assert_array_equal(ds["pair"].values, np.tile(np.repeat(np.arange(4), 2), 2))
    np.testing.assert_array_equal(ds["sign"].values, np.tile([1, -1], 8))
    assert ds.attrs["wxens_config"]["seed"] == 11
    assert not bool(ds["nonfinite"].any())
    # members are centred +/- pairs around the analysis at lead 0
    ana = xr.open_zarr(reference_run["config"]["analysis"])
    z0 = ds["z500"].isel(time=0, prediction_timedelta=0).values
    a0 = ana["z500"].sel(time=ds.time.values[0]).values
    np.testing.assert_allclose(0.5 * (z0[0::2] + z0[1::2]), np.broadcast_to(a0, (8, 32, 64)), atol=0.01)
    assert np.abs(z0 - a0).max() > 10.0
    import wxens

    assert wxens.open_forecast(reference_run["run_dir"]).sizes == raw.sizes
    # the data catalog's forecast reader (what the evaluation uses) sees the same channels
    from data_catalog import open_forecast_store

    fs = open_forecast_store(reference_run["run_dir"] / "forecast.zarr")
    assert {"u500", "v500", "vo500", "z500"} <= set(fs.data_vars)
    np.testing.assert_array_equal(fs["u500"].values, ds["u500"].values)


def test_regenerated_members_bitwise(world):
    cfg = base_config(
        world,
        checkpoints=world["checkpoints"][:3],
        perturbation={"method": "bred", "n_pairs": 8},
        init_times=["2008-01-02T00"],
        lead_steps=2,
        inline={"enabled": False},
    )
    run_dir = world["root"] / "regen"
    run_forecast(cfg, run_dir)
    ds = open_forecast(run_dir, channels=True)
    assert ds.sizes["number"] == 48
    again = regenerate_members(run_dir, [17, 40])
    for v in ("z500", "vo500"):
        stored = ds[v].sel(number=[17, 40]).values
        assert np.array_equal(stored, again[v].values)  # bitwise, NaN-free
    assert int(ds["checkpoint"].sel(number=40)) == 2 and int(ds["pair"].sel(number=17)) == 0


def test_killed_runs_resume_to_identical_output(world, reference_run, tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(reference_run["config"]))
    run_dir = tmp_path / "killed"
    rng = random.Random(2024)
    kills = 0
    for attempt in range(3):
        done_before = len(list((run_dir / "manifest").glob("*.json")))
        p = spawn(cfg_path, run_dir)
        if attempt == 0:
            time.sleep(rng.uniform(2.0, 4.0))  # during start-up or store creation
        else:  # once this process has finished a unit: mid-unit, mid-write or mid-manifest
            t0 = time.time()
            while len(list((run_dir / "manifest").glob("*.json"))) <= done_before and time.time() - t0 < 60:
                if p.poll() is not None:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
        if p.poll() is None:
            p.kill()  # SIGKILL
            kills += 1
        p.wait()
    assert kills >= 2
    summary = run_forecast(reference_run["config"], run_dir)
    assert summary["complete"]
    assert digest(run_dir) == reference_run["digest"]
    assert verify(run_dir)["corrupted"] == {}


def test_two_shards_write_the_same_store(reference_run, tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(reference_run["config"]))
    run_dir = tmp_path / "sharded"
    procs = [spawn(cfg_path, run_dir, f"{i}/2") for i in range(2)]
    errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (run_dir / "COMPLETE").is_file()
    assert digest(run_dir) == reference_run["digest"]
    # whichever shard recorded an init's last unit finalised it: no partial or spill is left
    assert not list((run_dir / "inline").rglob("*.npy")) and not list((run_dir / "inline").glob("t0*"))
    assert len(list((run_dir / "inline" / "final").glob("*.npz"))) == 3


def test_locked_unit_is_refused_stale_lock_taken_over(reference_run, tmp_path):
    run_dir = tmp_path / "locked"
    units = json.loads((reference_run["run_dir"] / "units.json").read_text())
    (run_dir / "locks").mkdir(parents=True)
    live = UnitLock(run_dir, units[0])
    assert live.acquire()  # held by this (live) process
    assert not UnitLock(run_dir, units[0]).acquire()
    stale = run_dir / "locks" / f"{units[1]}.lock"
    import socket

    stale.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "time": 0}))
    s = run_forecast(reference_run["config"], run_dir)
    assert s["units_skipped_locked"] == [units[0]] and not s["complete"]
    live.release()
    s = run_forecast(reference_run["config"], run_dir)
    assert s["units_computed"] == 1 and s["complete"]
    assert digest(run_dir) == reference_run["digest"]


def test_verify_detects_corruption_and_rerun_repairs(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "corrupt"
    shutil.copytree(reference_run["run_dir"], run_dir)
    chunk = run_dir / "forecast.zarr" / "u_component_of_wind" / "c" / "1" / "1" / "2" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    rep = verify(run_dir)
    assert list(rep["corrupted"]) == ["t00001-c000-b00001"]
    rep = verify(run_dir, delete=True)
    assert not (run_dir / "COMPLETE").exists()
    s = run_forecast(reference_run["config"], run_dir)
    assert s["units_computed"] == 1 and s["complete"]
    assert digest(run_dir) == reference_run["digest"]


def test_nonfinite_members_flagged_run_continues(world, tmp_path, caplog):
    import torch

    from pipeline.testing import MEANS, STDS, ToyModel, write_toy_checkpoint

    ana = xr.open_zarr(world["analysis"]).sel(time="2008-01-02T00")
    a = torch.tensor(np.stack([ana[c].values for c in ("z500", "u500", "v500", "vo500")]))[None]
    control = ToyModel(seed=5).step(a)[0, 0, 0, 0].item()
    # members whose z500 at the first grid point rises above the control's after one step blow up
    ck = str(
        write_toy_checkpoint(tmp_path / "blowup", seed=5, nan_above=(control - MEANS["z500"]) / STDS["z500"])
    )
    cfg = base_config(world, checkpoints=[ck], init_times=["2008-01-02T00"], lead_steps=3)
    cfg["perturbation"] = {"method": "gaussian", "n_pairs": 4, "alpha": 1.0}
    s = run_forecast(cfg, tmp_path / "nan")
    assert s["complete"]
    ds = open_forecast(tmp_path / "nan", channels=True)
    z = ds["z500"].isel(time=0).values
    has_nan = np.isnan(z).reshape(8, 4, -1).any(-1)  # (member, lead)
    first = np.where(has_nan.any(1), has_nan.argmax(1), -1)
    np.testing.assert_array_equal(ds["nonfinite_step"].isel(time=0).values, first)
    assert 0 < (first >= 0).sum() < 8  # some blew up, others kept going
    assert sorted(s["nonfinite_members"]) == np.flatnonzero(first >= 0).tolist()
    assert "non-finite" in caplog.text
    sc = xr.open_zarr(tmp_path / "nan" / "scores.zarr")
    assert int(sc["n_members"].isel(time=0, prediction_timedelta=3)) == int((first < 0).sum())


def test_config_errors_are_one_line(world, reference_run, tmp_path):
    with pytest.raises(UserError, match="different config"):
        run_forecast(base_config(world, seed=12), reference_run["run_dir"])
    with pytest.raises(UserError, match="invalid forecast config"):
        run_forecast(base_config(world, bogus=1), tmp_path / "x")
    with pytest.raises(UserError, match="float16"):
        run_forecast(base_config(world, output={"dtype": "float16"}), tmp_path / "f16")
    with pytest.raises(UserError, match="no data"):  # the last init lacks its breeding analyses
        run_forecast(base_config(world, init_times=["2008-01-02T00", "2008-01-01T06"]), tmp_path / "early")
    # refused before anything was computed or written: the corrected config runs in the same dir
    assert (
        not (tmp_path / "early" / "plan.json").exists()
        and not (tmp_path / "early" / "forecast.zarr").exists()
    )
    ok = base_config(world, init_times=["2008-01-02T00"], lead_steps=1, inline={"enabled": False})
    assert run_forecast(ok, tmp_path / "early")["complete"]
    mixed = {"method": "spherical", "noise_fraction": 0.5}
    with pytest.raises(UserError, match="noise_fraction mixes noise into bred vectors"):
        run_forecast(base_config(world, perturbation=mixed), tmp_path / "mixed")
    with pytest.raises(UserError, match="noise_fraction"):
        run_forecast(base_config(world, perturbation={"noise_fraction": 1.2}), tmp_path / "mixed2")
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "mixed2").exists()
    with pytest.raises(UserError, match="distinct channels"):
        run_forecast(base_config(world, perturbation={"seed_channel": ["z500", "z500"]}), tmp_path / "s2")
    with pytest.raises(UserError, match=r"seed channel\(s\) 'z850' are not model channels"):
        run_forecast(base_config(world, perturbation={"seed_channel": ["z500", "z850"]}), tmp_path / "s3")


def test_float16_refuses_tiny_channels(world, tmp_path):
    cfg = base_config(world, output={"dtype": "float16", "variables": ["vo500"]})
    with pytest.raises(UserError, match="float16 cannot hold vo500"):
        run_forecast(cfg, tmp_path / "f16")
    cfg = base_config(world, output={"dtype": "float16", "variables": ["u500"]}, init_times=["2008-01-02T00"])
    cfg["inline"] = {"enabled": False}
    run_forecast(cfg, tmp_path / "f16u")
    ds = open_forecast(tmp_path / "f16u", channels=True)
    assert ds["u500"].dtype == np.float16 and "z500" not in ds


def test_real_sfno_checkpoints_default_loader(world, tmp_path):
    """Integration with models: random tiny SFNO checkpoints, loaded by models.checkpoint."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.wrapper import build_model
    from pipeline.testing import CHANNELS, MEANS, STDS, grid

    lat, lon = grid()
    stats = {
        "mean": [MEANS[c] for c in CHANNELS],
        "std": [STDS[c] for c in CHANNELS],
        "tendency_std": [0.1 * STDS[c] for c in CHANNELS],
    }
    arch = {"in_chans": 4, "out_chans": 4, "embed_dim": 8, "num_layers": 1, "lmax": 16, "mmax": 16}
    skill = {"lead_hours": [24, 48], "rmse": {c: [0.3 * STDS[c], 0.5 * STDS[c]] for c in CHANNELS}}
    ckpts = []
    for s in range(2):
        m = build_model(arch, list(CHANNELS), lat, lon, stats, (), generator=torch.Generator().manual_seed(s))
        ckpts.append(str(save_checkpoint(m, tmp_path / "sfno" / f"seed-{s}", skill=skill)))
    cfg = base_config(
        world, init_times=["2008-01-02T00"], lead_steps=2, batch_size=2, inline={"enabled": False}
    )
    cfg.pop("model_loader")
    cfg["checkpoints"] = str(tmp_path / "sfno")  # a folder of checkpoints
    cfg["perturbation"] = {"method": "bred", "n_pairs": 2}
    s = run_forecast(cfg, tmp_path / "run")
    assert s["complete"] and s["block"] == 2
    ds = open_forecast(tmp_path / "run", channels=True)
    assert ds.sizes["number"] == 8 and np.isfinite(ds["z500"].values).all()
    again = regenerate_members(tmp_path / "run", [3, 6])
    assert np.array_equal(again["u500"].values, ds["u500"].sel(number=[3, 6]).values)
    # bred amplitude: alpha x the checkpoint's 48 h RMSE from skill.json, at lead 0
    z0 = ds["z500"].isel(time=0, prediction_timedelta=0).values
    ana = xr.open_zarr(world["analysis"])["z500"].sel(time="2008-01-02T00").values
    w = np.cos(np.deg2rad(ds.latitude.values))[:, None]
    north = ds.latitude.values >= 20
    rms = np.sqrt(((z0[0] - ana)[north] ** 2 * w[north]).sum() / (w[north].sum() * 64))
    assert abs(rms / (0.35 * 0.5 * STDS["z500"]) - 1) < 0.05


def test_member_and_variable_subsets(world, reference_run, tmp_path):
    cfg = dict(reference_run["config"])
    cfg["output"] = {"members": [13, 2, 5], "variables": ["u500"], "dtype": "bfloat16"}
    cfg["inline"] = {"enabled": False}
    s = run_forecast(cfg, tmp_path / "subset")
    assert s["complete"]
    ds = open_forecast(tmp_path / "subset", channels=True)
    assert ds["number"].values.tolist() == [2, 5, 13] and list(ds.data_vars) == [
        "nonfinite_step",
        "u500",
        "nonfinite",
    ]
    assert ds["u500"].encoding["chunks"][1] == 1
    ref = open_forecast(reference_run["run_dir"], channels=True)["u500"].sel(number=[2, 5, 13]).values
    import torch

    want = torch.from_numpy(ref).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(ds["u500"].values, want)
    np.testing.assert_array_equal(ds["checkpoint"].values, [0, 0, 1])
    np.testing.assert_array_equal(ds["sign"].values, [1, -1, -1])


LOADS: list[str] = []


def counting_loader(path):
    from pipeline.testing import load_toy_checkpoint

    LOADS.append(str(path))
    return load_toy_checkpoint(path)


def test_each_checkpoint_loaded_once_per_shard(world, tmp_path):
    cfg = base_config(world, model_loader="tests.pipeline.test_engine:counting_loader", batch_size=2)
    cfg.update(inline={"enabled": False}, init_times=["2008-01-02T00", "2008-01-02T06"], lead_steps=1)
    LOADS.clear()
    s = run_forecast(cfg, tmp_path / "loads")
    assert s["units_computed"] == 2 * 2 * 4  # inits x checkpoints x blocks
    assert LOADS == world["checkpoints"][:2]  # checkpoint-major units: one load each


def test_stochastic_forcing_members_reproducible_and_sized(world):
    """``perturbation.stochastic``: members still regenerate bitwise alone; the forcing spreads even
    unperturbed members; each draw has the requested area-mean RMS per channel."""
    import torch

    from pipeline import seeds
    from pipeline.rollout import StochasticForcing

    cfg = base_config(
        world,
        checkpoints=world["checkpoints"][:2],
        perturbation={"method": "bred", "n_pairs": 4, "stochastic": 0.5},
        init_times=["2008-01-02T00"],
        lead_steps=2,
        inline={"enabled": False},
    )
    run_dir = world["root"] / "stoch"
    run_forecast(cfg, run_dir)
    ds = open_forecast(run_dir, channels=True)
    again = regenerate_members(run_dir, [3, 12])
    for v in ("z500", "vo500"):
        assert np.array_equal(ds[v].sel(number=[3, 12]).values, again[v].values)
    # the same members without forcing are identical at lead 0 and differ afterwards
    plain = base_config(world, checkpoints=world["checkpoints"][:2], perturbation={"method": "bred", "n_pairs": 4},
                        init_times=["2008-01-02T00"], lead_steps=2, inline={"enabled": False})  # fmt: skip
    run_forecast(plain, world["root"] / "stoch-plain")
    dp = open_forecast(world["root"] / "stoch-plain", channels=True)
    z, zp = ds["z500"].values, dp["z500"].values
    assert np.array_equal(z[:, :, 0], zp[:, :, 0]) and not np.allclose(z[:, :, 1], zp[:, :, 1])
    # control members (no initial perturbation) spread under forcing alone
    ctl = base_config(world, checkpoints=world["checkpoints"][:1], perturbation={"method": "none", "stochastic": 1.0},
                      init_times=["2008-01-02T00"], lead_steps=2, inline={"enabled": False})  # fmt: skip
    run_forecast(ctl, world["root"] / "stoch-ctl")
    ctl0 = {**ctl, "perturbation": {"method": "none"}}
    run_forecast(ctl0, world["root"] / "stoch-ctl0")
    a, b = (
        open_forecast(world["root"] / "stoch-ctl", channels=True)["z500"],
        open_forecast(world["root"] / "stoch-ctl0", channels=True)["z500"],
    )
    assert a.sizes["number"] == 1
    assert np.array_equal(a.values[:, :, 0], b.values[:, :, 0]) and not np.allclose(
        a.values[:, :, 1], b.values[:, :, 1]
    )
    # the draw's RMS per channel equals the requested amplitude (area-weighted, many draws)
    lat, lon = ds["latitude"].values, ds["longitude"].values
    amp = torch.tensor([2.0, 0.5], dtype=torch.float64)
    f = StochasticForcing(amp, lat, lon, 1000.0)
    gens = [
        seeds.generator(1, np.datetime64("2008-01-02T00"), 0, k, purpose=seeds.PURPOSE_STOCHASTIC)
        for k in range(200)
    ]
    x = f.draw(gens).double()  # (200, 2, lat, lon)
    w = np.cos(np.deg2rad(lat))[None, None, :, None]
    rms = np.sqrt(((x.numpy() ** 2) * w).mean(axis=(0, 2, 3)) / w.mean())
    np.testing.assert_allclose(rms, amp.numpy(), rtol=0.05)
    # a member's draw does not depend on the other members of its block
    g1 = seeds.generator(1, np.datetime64("2008-01-02T00"), 0, 5, purpose=seeds.PURPOSE_STOCHASTIC)
    g2 = [
        seeds.generator(1, np.datetime64("2008-01-02T00"), 0, k, purpose=seeds.PURPOSE_STOCHASTIC)
        for k in (4, 5, 6)
    ]
    assert torch.equal(f.draw([g1])[0], f.draw(g2)[1])


def test_stochastic_forcing_per_channel(world):
    """``stochastic: {channel: factor}`` forces only the named channels, each with its own factor: after
    the first step an unperturbed member differs from the control in z500 only, by exactly what the
    same factor for every channel gives z500, twice what half the factor gives, and four times what a
    24-hour ramp gives (6 h steps); per-channel ramps scale each channel by its own ramp; a channel the
    model lacks is a one-line error."""
    kw = dict(checkpoints=world["checkpoints"][:1], init_times=["2008-01-02T00"], lead_steps=1,
              inline={"enabled": False})  # fmt: skip
    out = {}
    runs = (("ch", {"z500": 2.0}, 0.0), ("half", {"z500": 1.0}, 0.0), ("all", 2.0, 0.0), ("none", 0.0, 0.0),
            ("ramp", {"z500": 2.0}, 24.0), ("pramp", 2.0, {"z500": 24.0, "vo500": 12.0}),
            ("sched", 2.0, [[0.0, 0.3], [12.0, 0.3], [24.0, 1.0]]),
            ("psched", 2.0, {"sched": {"z500": [[0.0, 0.5]], "vo500": [[0.0, 0.2], [12.0, 1.0]]}}))  # fmt: skip
    for name, st, ramp in runs:
        key = "stochastic_schedule" if isinstance(ramp, list) else "stochastic_ramp_hours"
        if isinstance(ramp, dict) and "sched" in ramp:
            key, ramp = "stochastic_schedule", ramp["sched"]
        pert = {"method": "none", "stochastic": st, key: ramp}
        run_forecast(base_config(world, perturbation=pert, **kw), world["root"] / f"stoch-{name}")
        out[name] = open_forecast(world["root"] / f"stoch-{name}", channels=True).isel(
            time=0, number=0, prediction_timedelta=1
        )
    assert np.array_equal(out["ch"]["vo500"].values, out["none"]["vo500"].values)
    assert not np.allclose(out["all"]["vo500"].values, out["none"]["vo500"].values)
    d = (out["ch"]["z500"] - out["none"]["z500"]).values
    assert np.abs(d).max() > 0
    np.testing.assert_allclose(d, (out["all"]["z500"] - out["none"]["z500"]).values, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        d, 2 * (out["half"]["z500"] - out["none"]["z500"]).values, rtol=1e-4, atol=1e-2
    )
    # a 24 h ramp with 6 h steps: a quarter of the forcing at the first step, the same draw
    np.testing.assert_allclose(
        4 * (out["ramp"]["z500"] - out["none"]["z500"]).values, d, rtol=1e-4, atol=4e-2
    )
    # per-channel ramps: a quarter (24 h), a half (12 h) and all (not named) of the same draws
    # and a schedule: 0.3 of the same draws at the first (6 h) step
    for run, c, frac in (("pramp", "z500", 0.25), ("pramp", "vo500", 0.5), ("pramp", "u500", 1.0),
                         ("sched", "z500", 0.3), ("sched", "v500", 0.3),
                         ("psched", "z500", 0.5), ("psched", "vo500", 0.6), ("psched", "u500", 1.0)):  # fmt: skip
        np.testing.assert_allclose(
            (out[run][c] - out["none"][c]).values,
            frac * (out["all"][c] - out["none"][c]).values,
            rtol=1e-4,
            atol=float(4e-5 * np.abs(out["none"][c]).max()),
        )
    bad = base_config(world, perturbation={"method": "none", "stochastic": {"t850": 1.0}}, **kw)
    with pytest.raises(UserError, match="t850"):
        run_forecast(bad, world["root"] / "stoch-bad")
    bad = base_config(
        world, perturbation={"method": "none", "stochastic": 1.0, "stochastic_ramp_hours": {"t2m": 6}}, **kw
    )
    with pytest.raises(UserError, match="stochastic_ramp_hours.*t2m"):
        run_forecast(bad, world["root"] / "stoch-bad-ramp")
    pert = {"method": "none", "stochastic": 1.0, "stochastic_schedule": {"t2m": [[0, 1]]}}
    with pytest.raises(UserError, match="stochastic_schedule.*t2m"):
        run_forecast(base_config(world, perturbation=pert, **kw), world["root"] / "stoch-bad-sched")


def test_finalize_removes_temporary_chunk_files_of_killed_writers(world, tmp_path):
    """A process killed inside zarr's atomic write leaves ``<chunk>.<uuid>.partial`` behind; once every
    unit is done the run deletes such files (and nothing else), so a resumed store equals an uninterrupted
    one file for file."""
    from pipeline.engine import remove_orphan_temp_files

    for rel in ("a/c/0.0123456789abcdef0123456789abcdef.partial", "keep/scores.partial.zarr/zarr.json",
                "keep/b.partial", "keep/c/0.0123.partial"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert remove_orphan_temp_files(tmp_path) == 1
    assert not (tmp_path / "a/c/0.0123456789abcdef0123456789abcdef.partial").exists()
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 3

    cfg = base_config(world, checkpoints=world["checkpoints"][:2], init_times=["2008-01-02T00"], lead_steps=1,
                      inline={"enabled": False})  # fmt: skip
    run_dir = world["root"] / "orphans"
    first = run_forecast(cfg, run_dir, shard=(0, 2))
    assert not first["complete"]
    orphan = run_dir / "forecast.zarr" / "z500" / "c" / "0.fedcba9876543210fedcba9876543210.partial"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a chunk")
    assert run_forecast(cfg, run_dir, shard=(1, 2))["complete"]
    assert not orphan.exists()
    assert not list(run_dir.rglob("*.partial"))


@pytest.mark.parametrize("threads", [0, 3])
def test_output_threads_give_the_same_store_and_manifest(world, reference_run, tmp_path, threads):
    """Writing leads on worker threads (or synchronously, io_threads 0) leaves the store, the scores
    and the manifest checksums of the reference run (io_threads auto), and is not part of the identity."""
    from pipeline.manifest import read_entry

    cfg = dict(reference_run["config"], io_threads=threads)
    run_dir = tmp_path / f"threads-{threads}"
    assert run_forecast(cfg, run_dir)["complete"]
    mine_d, ref_d = digest(run_dir), dict(reference_run["digest"])
    mine_d.pop("attrs"), ref_d.pop("attrs")  # the stored config records io_threads
    assert mine_d == ref_d
    assert open_forecast(run_dir, channels=True).attrs["wxens_config"]["io_threads"] == threads
    for u in json.loads((run_dir / "units.json").read_text()):
        mine, ref = read_entry(run_dir, u), read_entry(reference_run["run_dir"], u)
        assert mine["files"] == ref["files"] and len(mine["files"]) > 4
    # a rerun with another thread count resumes the same run (nothing to compute)
    again = run_forecast(dict(cfg, io_threads=1), run_dir)
    assert again["complete"] and again["units_computed"] == 0


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_codecs_store_the_same_values(reference_run, tmp_path, codec):
    """``output.codec`` changes the chunk bytes (reference: lz4), never the values; the codec is not
    part of the run's identity, so a rerun naming another codec resumes the store as it is."""
    import zarr

    cfg = dict(reference_run["config"], output={"codec": codec})
    run_dir = tmp_path / codec
    assert run_forecast(cfg, run_dir)["complete"]
    meta = zarr.open_group(str(run_dir / "forecast.zarr"), mode="r")["geopotential"].metadata
    names = [c.to_dict()["name"] for c in meta.codecs]
    ref_meta = zarr.open_group(str(reference_run["run_dir"] / "forecast.zarr"), mode="r")[
        "geopotential"
    ].metadata
    assert names == {"zstd": ["bytes", "zstd"], "none": ["bytes"]}[codec]
    assert [c.to_dict()["name"] for c in ref_meta.codecs] == ["bytes", "blosc"]
    mine, ref = open_forecast(run_dir, channels=True), open_forecast(reference_run["run_dir"], channels=True)
    for v in ref.attrs["wxens_variables"]:
        np.testing.assert_array_equal(mine[v].values, ref[v].values)
    assert digest(run_dir) != reference_run["digest"]  # other bytes on disk
    again = run_forecast(dict(cfg, output={"codec": "lz4"}), run_dir)
    assert again["complete"] and again["units_computed"] == 0


def test_writer_thread_error_fails_the_unit_unrecorded(world, tmp_path, monkeypatch):
    """An error on a writer thread reaches the caller and the unit gets no manifest entry."""
    from pipeline.store import StoreWriter

    real = StoreWriter.write_lead

    def broken(self, init, lead, *a, **k):
        if lead == 2:
            raise OSError("disk full (simulated)")
        return real(self, init, lead, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_lead", broken)
    cfg = base_config(world, init_times=["2008-01-02T00"], checkpoints=world["checkpoints"][:1], io_threads=2)
    run_dir = tmp_path / "broken"
    with pytest.raises(OSError, match="disk full"):
        run_forecast(cfg, run_dir)
    assert not list((run_dir / "manifest").glob("*.json"))
    monkeypatch.setattr(StoreWriter, "write_lead", real)
    assert run_forecast(cfg, run_dir)["complete"]  # the rerun computes the unit


def _stochastic_sfno(path, lat, lon, zero_noise: bool = False):
    """A small untrained SFNO checkpoint with 2 noise inputs (``noise:2:8``) on the test grid; with
    ``zero_noise`` the same weights with the noise columns of the encoder set to zero."""
    from models.checkpoint import save_checkpoint
    from models.wrapper import build_model
    from pipeline.testing import CHANNELS, MEANS, STDS

    stats = {
        "mean": np.array([MEANS.get(c, 0.0) for c in CHANNELS]),
        "std": np.array([STDS.get(c, 1.0) for c in CHANNELS]),
        "tendency_std": 0.05 * np.array([STDS.get(c, 1.0) for c in CHANNELS]),
    }
    arch = {"in_chans": len(CHANNELS) + 2, "out_chans": len(CHANNELS), "embed_dim": 8, "num_layers": 1,
            "lmax": 8, "mmax": 8}  # fmt: skip
    m = build_model(
        arch, list(CHANNELS), lat, lon, stats, ("noise:2:8",), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        m.net.encoder.weight[:, -2:] = 0.0 if zero_noise else 0.5
    m.metadata = {"seed": 3}
    skill = {"lead_hours": [48], "rmse": {c: [0.3 * STDS.get(c, 1.0)] for c in CHANNELS}}
    return str(save_checkpoint(m, path, skill=skill))


def test_stochastic_model_draws_per_member_noise(world, tmp_path):
    """A model with noise inputs gets fresh noise per member and step from the member's own stream:
    breeding uses the noise-free path (lead 0 equals the noise-free twin's), the rollout does not
    (lead 1 differs), a member's values do not depend on its block, and regenerated members are
    bitwise equal."""
    ana = xr.open_zarr(world["analysis"])
    lat, lon = ana.latitude.values, ana.longitude.values
    noisy = _stochastic_sfno(tmp_path / "noisy", lat, lon)
    quiet = _stochastic_sfno(tmp_path / "quiet", lat, lon, zero_noise=True)
    common = dict(model_loader="models.checkpoint:load_checkpoint", init_times=["2008-01-02T00"], lead_steps=2,
                  inline={"enabled": False}, perturbation={"method": "bred", "n_pairs": 4})  # fmt: skip
    runs = {}
    for name, ck, bs in (("noisy", noisy, 8), ("quiet", quiet, 8), ("noisy_b2", noisy, 2)):
        run_forecast(base_config(world, checkpoints=[ck], batch_size=bs, **common), tmp_path / f"run-{name}")
        runs[name] = (
            open_forecast(tmp_path / f"run-{name}", channels=True)["z500"].isel(time=0).values
        )  # (member, lead, y, x)
    a, q, b2 = runs["noisy"], runs["quiet"], runs["noisy_b2"]
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a[:, 0], q[:, 0])  # bred vectors come from the noise-free path
    assert np.abs(a[:, 1] - q[:, 1]).max() > 1.0  # the rollout adds each member's noise
    np.testing.assert_allclose(b2, a, rtol=1e-5, atol=1e-2)  # same noise per member in other blocks
    again = regenerate_members(tmp_path / "run-noisy", [3, 6])
    assert np.array_equal(again["z500"].isel(time=0).values, a[[3, 6]])


def test_finalisation_thread_uses_its_own_init_and_reports_errors(world, tmp_path, monkeypatch):
    """With cores to spare an init is finalised on its own thread while the next one rolls out: the
    truth it reads is frozen at submission (the rollout replaces the cached block), and an error there
    reaches the caller; a rerun then finishes the run."""
    from pipeline import inline as inl
    from pipeline.engine import Plan, _Truth

    cfg = base_config(world, io_threads=1, lead_steps=2, init_times=["2008-01-02T00", "2008-01-03T00"])
    ana = xr.open_zarr(world["analysis"])
    run_forecast(cfg, tmp_path / "ok")
    plan = Plan.from_json(json.loads((tmp_path / "ok" / "plan.json").read_text()))
    t = _Truth(ana, plan)
    t.for_init(plan.inits[0])
    frozen = t.frozen()
    t.for_init(plan.inits[1])  # the rollout moved on
    when = plan.inits[0] + plan.step
    np.testing.assert_array_equal(
        frozen(when), np.stack([ana[c].sel(time=when).values for c in plan.channels])
    )
    assert t.block is not None and t.init == plan.inits[1]

    real = inl.finalize_init

    def broken(*a, **k):
        raise OSError("no space left for the scores (simulated)")

    monkeypatch.setattr(inl, "finalize_init", broken)
    with pytest.raises(OSError, match="no space left"):
        run_forecast(cfg, tmp_path / "broken")
    monkeypatch.setattr(inl, "finalize_init", real)
    assert run_forecast(cfg, tmp_path / "broken")["complete"]
    a = xr.open_zarr(tmp_path / "ok" / "scores.zarr").load()
    b = xr.open_zarr(tmp_path / "broken" / "scores.zarr").load()
    xr.testing.assert_identical(a, b)


def test_resume_refuses_checkpoints_changed_underneath(world, tmp_path):
    """plan.json records a digest of each checkpoint's files; resuming after a checkpoint's files
    changed (new weights, skill or spectral filter) is a one-line error, since units computed before
    and after would come from different models. Restoring the file lets the run go on."""
    import shutil

    from pipeline.engine import checkpoint_digest

    ckpts = []
    for i, src in enumerate(world["checkpoints"][:2]):
        ckpts.append(str(shutil.copytree(src, tmp_path / f"ck{i}")))
    cfg = base_config(world, checkpoints=ckpts, init_times=["2008-01-02T00"], lead_steps=1)
    run_dir = tmp_path / "run"
    run_forecast(cfg, run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["checkpoint_digests"] == [checkpoint_digest(c) for c in ckpts]
    target = sorted(p for p in Path(ckpts[1]).iterdir() if p.is_file())[0]
    original = target.read_bytes()
    target.write_bytes(original + b" ")
    with pytest.raises(UserError, match=r"checkpoint .*ck1 changed since the run"):
        run_forecast(cfg, run_dir)
    target.write_bytes(original)
    assert run_forecast(cfg, run_dir)["complete"]
    # a plan from before the digests existed resumes without the check
    plan.pop("checkpoint_digests")
    (run_dir / "plan.json").write_text(json.dumps(plan))
    target.write_bytes(original + b" ")
    assert run_forecast(cfg, run_dir)["complete"]


def test_seed_on_several_channels_through_the_engine(world, tmp_path):
    """``seed_channel`` as a list reaches the bred vectors: a one-element list is the single seed
    channel bit for bit, a second seed channel changes the members, and a member regenerated alone
    equals the full run's."""

    def run(name, seed):
        cfg = base_config(
            world,
            init_times=["2008-01-02T00"],
            lead_steps=1,
            inline={"enabled": False},
            perturbation={"method": "bred", "n_pairs": 2, "seed_channel": seed},
        )
        run_forecast(cfg, tmp_path / name)
        return cfg, open_forecast(tmp_path / name, channels=True).load()

    _, one = run("one", "z500")
    _, listed = run("listed", ["z500"])
    _, two = run("two", ["z500", "u500"])
    for c in ("z500", "u500"):
        np.testing.assert_array_equal(listed[c].values, one[c].values)
    d0 = two["u500"].isel(prediction_timedelta=0) - one["u500"].isel(prediction_timedelta=0)
    assert float(np.abs(d0).max()) > 0.1 * float(
        np.abs(one["u500"].isel(prediction_timedelta=0).std("number")).max()
    )
    again = regenerate_members(tmp_path / "two", [5])
    np.testing.assert_array_equal(again["u500"].values, two["u500"].sel(number=[5]).values)
