"""Spectral packs of QG stores (data_catalog.world.qg_pack): the rebuilt store against the real one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.readers import open_reanalysis
from data_catalog.world.qg_pack import PACK_VERSION, main, pack, unpack, unpack_store
from data_catalog.world.qg_store import QGWorldSpec, build_qg_world

VARS = ("geopotential", "u_component_of_wind", "v_component_of_wind", "vorticity")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qgpack") / "qg.zarr"
    return build_qg_world(path, QGWorldSpec(years=2, days=3, spinup_days=5.0))


def _anomaly_rms(ds: xr.Dataset, v: str) -> float:
    x = ds[v].values.astype(np.float64)
    if v == "geopotential":  # the reference of each level is a constant the pack keeps exactly
        x = x - x.mean(axis=(0, 2, 3), keepdims=True)
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 2e-5), ("float16", 3e-3)])
def test_rebuilt_store_equals_the_original(store: Path, tmp_path: Path, dtype: str, tol: float) -> None:
    out = tmp_path / f"p-{dtype}.npz"
    err = pack(store, out, dtype=dtype)
    ref = xr.open_zarr(store).load()
    got = unpack(out)
    assert list(got["time"].values) == list(ref["time"].values)
    np.testing.assert_array_equal(got["latitude"].values, ref["latitude"].values)
    np.testing.assert_array_equal(got["orography"].values, ref["orography"].values)
    for v in VARS:
        assert got[v].dtype == np.float32 and got[v].dims == ref[v].dims
        rel = float(np.abs(got[v].values - ref[v].values).max()) / _anomaly_rms(ref, v)
        assert rel < tol, (v, rel)
        assert err[v] < tol and got[v].attrs == ref[v].attrs
    for k in ("world_hash", "world_spec", "trajectory_starts", "split_train"):
        assert got.attrs[k] == ref.attrs[k]
    assert got.attrs["packed_as"].startswith(f"{PACK_VERSION} {dtype}")
    # 3 levels x 484 real degrees of freedom per time (T21 triangle), against 12 x 32 x 64 grid values
    with np.load(out) as z:
        assert z["coefficients"].shape == (ref.sizes["time"], 3, 484)
        assert z["coefficients"].dtype == np.dtype(dtype)
        assert np.all(np.log2(z["scale"]) == np.round(np.log2(z["scale"])))  # exact powers of two


def test_float16_is_half_of_float32_and_far_below_the_grid(store: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    pack(store, a, dtype="float16")
    pack(store, b, dtype="float32")
    ref = xr.open_zarr(store)
    grid_bytes = sum(ref[v].size * 4 for v in VARS)
    assert 0.45 < a.stat().st_size / b.stat().st_size < 0.6
    assert b.stat().st_size < grid_bytes / 12


def test_years_and_the_reader(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "y.npz"
    pack(store, out, years=(2001, 2001))
    rebuilt = unpack_store(out, tmp_path / "y.zarr")
    got = open_reanalysis(rebuilt)
    want = open_reanalysis(store).sel(time=got["time"])
    assert got.sizes["time"] == want.sizes["time"] > 0
    assert set(np.asarray(got["time"].values).astype("datetime64[Y]").astype(int) + 1970) == {2001}
    assert sorted(got.data_vars) == sorted(want.data_vars)
    rel = float(np.abs(got["z500"] - want["z500"]).max()) / float(want["z500"].std())
    assert rel < 3e-3
    with pytest.raises(UserError, match="already exists"):
        unpack_store(out, rebuilt)


def _packed(store: Path, tmp_path: Path) -> Path:
    pack(store, tmp_path / "packed.npz")
    return tmp_path / "packed.npz"


def test_bad_input(store: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.npz").write_bytes(b"not a pack")
    ds = xr.open_zarr(store).load()
    skewed = ds.assign(u_component_of_wind=ds["u_component_of_wind"] * 1.01)  # not the streamfunction's wind
    x = tmp_path / "x.npz"
    cases = [
        (lambda: pack(store, x, dtype="int8"), "dtype"),
        (lambda: pack(store, x, years=(1990, 1991)), "no times in 1990-1991"),
        (lambda: pack(tmp_path / "missing.zarr", x), "no such store"),
        (lambda: pack(tmp_path / "empty", x), "cannot open .*empty as a zarr store"),
        (lambda: pack(skewed, x), "not a QG store.*u_component_of_wind"),
        (lambda: pack(ds.drop_vars("vorticity"), x), "not a QG store"),
        (lambda: unpack(tmp_path / "missing.npz"), "no such pack"),
        (lambda: unpack(tmp_path / "junk.npz"), "not a QG spectral pack"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
    ok = tmp_path / "ok.npz"
    pack(store, ok, years=(2000, 2000))
    with np.load(ok) as z:
        parts = {k: z[k] for k in z.files}
    meta = json.loads(str(parts["meta"]))
    meta["version"] = "qg-pack-v0"
    parts["meta"] = np.array(json.dumps(meta))
    old = tmp_path / "old.npz"
    np.savez(old, **parts)
    with pytest.raises(UserError, match="version 'qg-pack-v0'"):
        unpack(old)


def test_command_line(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.npz"
    assert main(["pack", str(store), str(out), "--years", "2000", "--dtype", "float32"]) == 0
    assert "rebuild error" in capsys.readouterr().out
    assert main(["unpack", str(out), str(tmp_path / "c.zarr")]) == 0
    assert (tmp_path / "c.zarr" / "zarr.json").is_file()
    r = subprocess.run(
        [sys.executable, "-m", "data_catalog.world.qg_pack", "pack", str(store), str(out), "--years", "20x0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: --years takes YEAR or YEAR-YEAR, not '20x0'"]


def test_wxens_train_takes_the_rebuilt_store(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU recipe of docs/models.md: pack, unpack, ``wxens train --dataset`` the rebuilt store."""
    from models import load_checkpoint
    from workflows.cli import main as wxens

    short = ["train", "--dataset", str(unpack_store(_packed(store, tmp_path), tmp_path / "s.zarr")),
             "--out", str(tmp_path / "short"), "--seed", "0", "--steps", "1", "--train-years", "2000", "--valid-years", "2001-2001", "--no-progress"]  # fmt: skip
    assert wxens(short) == 2  # 3-day years: no 10-day window for the skill file, said before training
    assert "validation years 2001-2001 hold no 40-step window" in capsys.readouterr().err
    assert not (tmp_path / "short" / "metadata.json").exists()
    store = build_qg_world(tmp_path / "long.zarr", QGWorldSpec(years=2, days=11, spinup_days=5.0))
    pack(store, tmp_path / "p.npz")
    data = unpack_store(tmp_path / "p.npz", tmp_path / "p.zarr")
    argv = ["train", "--dataset", str(data), "--device", "cpu", "--embed-dim", "8", "--num-layers", "1",
            "--lmax", "8", "--mmax", "6", "--scale-factor", "1.3333", "--batch-size", "2", "--seed", "0",
            "--out", str(tmp_path / "ck"), "--steps", "3", "--lr", "1e-3", "--rollout-steps", "2",
            "--rollout-iters", "1", "--train-years", "2000", "--valid-years", "2001-2001", "--threads", "1",
            "--no-progress"]  # fmt: skip
    assert wxens(argv) == 0
    m = load_checkpoint(tmp_path / "ck")
    t = m.metadata["training"]
    assert (t["mmax"], t["scale_factor"], t["batch_size"], t["lr"]) == (6, 1.3333, 2, 1e-3)
    assert m.metadata["dataset"]["world_hash"] == xr.open_zarr(store).attrs["world_hash"]
    assert len(m.channels) == 12
