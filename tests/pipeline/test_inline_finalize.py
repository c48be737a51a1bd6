"""Transient inline files: after a complete run no member-sized file remains under ``inline/``, and
a process SIGKILLed at any step of the finalisation resumes to the scores of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline import manifest as mf
from pipeline import open_forecast, run_forecast, verify
from tests.pipeline.conftest import REPO, digest

CH = ["z500", "u500", "v500", "vo500"]


def inline_bytes(run_dir) -> int:
    return sum(p.stat().st_size for p in (run_dir / "inline").rglob("*") if p.is_file())


def member_bytes(cfg) -> int:
    """Bytes of one float32 copy of every member field of the run (what the spills held)."""
    n_members = len(cfg["checkpoints"]) * 2 * cfg["perturbation"]["n_pairs"]
    return len(cfg["init_times"]) * n_members * (cfg["lead_steps"] + 1) * 4 * 32 * 64 * 4


def assert_no_member_files(run_dir, cfg) -> None:
    assert not list((run_dir / "inline").rglob("*.npy"))
    assert not list((run_dir / "inline").glob("t0*"))  # no per-unit folder left
    assert not (run_dir / "inline" / "scores.partial.zarr").exists()
    assert inline_bytes(run_dir) < 0.01 * member_bytes(cfg)


def assert_spills_are_members(run_dir, spills) -> None:
    """Each spill is a plain ``.npy`` (no memory map needed to read it) holding its unit's float32
    members laid out ``(lead, lat, member, channel, lon)``: equal to the stored members."""
    ds = open_forecast(run_dir, channels=True)
    per_ckpt, block = 8, 4  # n_pairs 4 -> 8 members per checkpoint, batch 4
    for p in spills:
        t, c, b = (int(x[1:]) for x in p.parent.name.split("-"))  # t<init>-c<ckpt>-b<block>
        numbers = np.arange(c * per_ckpt + b * block, c * per_ckpt + (b + 1) * block)
        stored = np.stack(
            [ds[ch].isel(time=t, number=numbers).values for ch in CH], axis=2
        )  # (M, L, C, y, x)
        spill = np.load(p)
        assert spill.dtype == np.float32 and spill.shape == (4, 32, 4, 4, 64)
        np.testing.assert_array_equal(spill.transpose(2, 0, 3, 1, 4), stored)


def test_complete_run_keeps_no_spill(reference_run):
    run_dir, cfg = reference_run["run_dir"], reference_run["config"]
    assert_no_member_files(run_dir, cfg)
    finals = sorted(p.name for p in (run_dir / "inline" / "final").iterdir())
    assert finals == ["t00000.npz", "t00001.npz", "t00002.npz"]
    # every unit lists its (now deleted) partials and spill as transient, released by its init's marker
    for u in mf.done_units(run_dir):
        e = mf.read_entry(run_dir, u)
        assert any(f.endswith("spill.npy") for f in e["transient"])
        assert e["released_by"] == f"inline/final/t{int(u[1:6]):05d}.npz"
        assert not any(f.startswith("inline/") for f in e["files"])
    rep = verify(run_dir)
    assert rep["corrupted"] == {} and len(rep["ok"]) == 12 and rep["missing"] == []


def test_spills_checked_until_released(reference_run, tmp_path):
    """Before its init is final a unit's spill is checksummed like a chunk: a truncated spill makes
    the unit not done (recomputed); a restart then finishes to the reference scores."""
    cfg = dict(reference_run["config"])
    run_dir = tmp_path / "partial"
    s = run_forecast(cfg, run_dir, shard=(0, 2))  # checkpoint 0 only: no init complete
    assert not s["complete"] and not list((run_dir / "inline").glob("final/*"))
    spills = sorted((run_dir / "inline").rglob("spill.npy"))
    assert len(spills) == 6
    assert_spills_are_members(run_dir, spills)
    unit = spills[0].parent.name
    with open(spills[0], "r+b") as f:
        f.truncate(spills[0].stat().st_size // 2)
    assert not mf.is_done(run_dir, unit)
    assert set(verify(run_dir)["corrupted"]) == {unit}
    s = run_forecast(cfg, run_dir)
    assert s["complete"] and s["units_computed"] == 7
    assert digest(run_dir) == reference_run["digest"]
    assert_no_member_files(run_dir, cfg)


def _spawn_killed(point: str, cfg_path, run_dir) -> int:
    p = subprocess.run(
        [sys.executable, "-m", "tests.pipeline.inline_kill", point, str(cfg_path), str(run_dir)],
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    return p.returncode


@pytest.mark.parametrize(
    "point",
    [
        "marker",
        pytest.param("cleanup", marks=pytest.mark.slow),
        pytest.param("rename", marks=pytest.mark.slow),
        pytest.param("merged", marks=pytest.mark.slow),
    ],
)
def test_kill_during_finalisation_resumes(reference_run, tmp_path, point):
    # synchronous finalisation (io_threads 0), so that the kill lands at a known unit count; with a
    # finalisation thread the rollout may be a few units further (same invariants, other counts)
    cfg = dict(reference_run["config"], io_threads=0)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    run_dir = tmp_path / point
    assert _spawn_killed(point, cfg_path, run_dir) == -9
    assert not (run_dir / "COMPLETE").exists()
    finals = {p.name for p in (run_dir / "inline" / "final").glob("*.npz")}
    units_left = {p.name for p in (run_dir / "inline").glob("t0*")}
    if point == "marker":  # init 0's last unit recorded, its scores not final: spills all kept
        assert finals == set() and len(units_left) == 8
    elif point == "cleanup":  # init 0 final, one of its 4 unit folders deleted
        assert finals == {"t00000.npz"} and len(units_left) == 7
    else:  # all final and cleaned; the scores store not (yet) complete
        assert len(finals) == 3 and units_left == set()
        assert (run_dir / "scores.zarr").exists() == (point == "merged")
    # nothing recomputed by a restart: every unit verifies (spills released or present)
    assert verify(run_dir)["corrupted"] == {}
    s = run_forecast(cfg, run_dir)
    # killed at init 0's finalisation, after 8 of 12 units (checkpoint-major); else after all 12
    assert s["complete"] and s["units_computed"] == (4 if point in ("marker", "cleanup") else 0)
    mine, ref = digest(run_dir), dict(reference_run["digest"])
    mine.pop("attrs"), ref.pop("attrs")  # the stored config records io_threads
    assert mine == ref
    assert_no_member_files(run_dir, cfg)
    assert verify(run_dir)["corrupted"] == {}
    np.testing.assert_array_equal(
        np.load(run_dir / "inline" / "final" / "t00001.npz")["crps_global"],
        np.load(reference_run["run_dir"] / "inline" / "final" / "t00001.npz")["crps_global"],
    )
