"""Faults: nothing lost, nothing duplicated.

Every test runs the real ``wxens`` command line in real processes on real zarr stores, injects a fault
(SIGKILL at a chosen moment, a torn or altered chunk, a second claimant of the same shard, a full
disk, a member that blows up), restarts, and compares the output bitwise with an uninterrupted run.
Kill moments come from hooks installed by ``faultrun.py`` (patching library functions in the child
process only) at call counts drawn from a seeded generator, or from seeded random delays.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import FAULTRUN, REPO, digest, forecast_config, record_result, stray_files, write_yaml, wxens

from pipeline import manifest as mf

#: (action, point, number of such events in one uninterrupted run of the reference config)
KILL_POINTS = [
    ("kill", "step", 56),  # model steps (breeding cycles and leads)
    ("torn", "chunk", 136),  # member-store chunk writes (the last 30 of 166 are the merged scores)
    ("kill", "chunk", 166),  # any chunk write, incl. the inline-score merge in finalize
    ("kill", "manifest", 8),  # manifest entries
    ("kill", "record", 8),  # unit finished, checksums not yet taken
]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from workflows.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _computed(out: str) -> int:
    """Units computed, from the summary line of ``wxens forecast``."""
    m = re.search(r"^(\d+) unit\(s\) computed", out, re.M)
    assert m, out
    return int(m.group(1))


def _assert_complete_and_identical(run_dir: Path, reference: dict) -> None:
    assert (run_dir / "COMPLETE").is_file()
    units = set(json.loads((run_dir / "units.json").read_text()))
    assert mf.done_units(run_dir) == units  # every unit once: nothing lost, nothing extra
    rep = mf.verify(run_dir)
    assert rep["corrupted"] == {} and rep["missing"] == []
    assert digest(run_dir) == reference["digest"]  # same chunk files, bitwise


def _kill_trials(n: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        action, point, total = KILL_POINTS[i % len(KILL_POINTS)]
        out.append((action, point, rng.randint(1, total)))
    return out


def _one_kill_trial(reference: dict, run_dir: Path, fault: str, capsys) -> dict:
    res = wxens(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], fault=fault)
    assert res.returncode == -signal.SIGKILL, (fault, res.returncode, res.stderr[-2000:])
    assert not (run_dir / "COMPLETE").exists()
    done_before = len(mf.done_units(run_dir))
    if fault.startswith("torn:"):
        torn = [p for p in (run_dir / "forecast.zarr").rglob("*") if p.is_file() and "c" in p.parts]
        assert torn, "the torn chunk is on disk"
    strays = stray_files(run_dir)
    code, out, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    recomputed = _computed(out)
    assert recomputed == 8 - done_before  # finished units are not redone
    _assert_complete_and_identical(run_dir, reference)
    return {
        "fault": fault,
        "units_done_at_kill": done_before,
        "units_recomputed": recomputed,
        "stray_temp_files": len(strays),
    }


@pytest.mark.parametrize("trial", range(5))
def test_kill9_forecast_resumes_bitwise(reference, tmp_path, capsys, trial):
    """SIGKILL during a model step, a chunk write (clean and torn), a manifest update, a unit's
    checksumming; the restart completes with every chunk equal to the uninterrupted run."""
    fault = "{}:{}={}".format(*_kill_trials(5, seed=20261126)[trial])
    row = _one_kill_trial(reference, tmp_path / "run", fault, capsys)
    _append_row("kill_forecast_ci", row)


@pytest.mark.slow
def test_kill9_forecast_soak(reference, tmp_path, capsys):
    """20 hook-placed kills and 5 kills after seeded random delays."""
    rows = []
    for i, (action, point, k) in enumerate(_kill_trials(20, seed=7)):
        rows.append(_one_kill_trial(reference, tmp_path / f"run{i}", f"{action}:{point}={k}", capsys))
    rng = random.Random(11)
    for i in range(5):
        run_dir = tmp_path / f"timed{i}"
        delay = rng.uniform(3.0, 12.0)
        p = subprocess.Popen(
            [
                sys.executable,
                str(FAULTRUN),
                "forecast",
                str(reference["config_path"]),
                "--run-dir",
                str(run_dir),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        code, _, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
        assert code == 0, err
        _assert_complete_and_identical(run_dir, reference)
        rows.append({"fault": f"SIGKILL after {delay:.1f} s", "killed": killed})
    record_result("kill_forecast_soak", rows)


def _append_row(name: str, row: dict) -> None:
    if not os.environ.get("WXENS_RELIABILITY_DOC"):
        return
    from rel_helpers import RESULTS

    path = RESULTS / f"{name}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["fault"] != row["fault"]] + [row]
    record_result(name, rows)


# ------------------------------------------------------------------------------ two claimants, one shard
def test_two_processes_same_shard(reference, tmp_path, capsys):
    """A misconfigured array job: two processes both run --shard 0/2. Unit locks make each unit
    computed exactly once; a process that met a locked unit exits 3 ('rerun later')."""
    run_dir = tmp_path / "dup"
    args = [
        sys.executable,
        str(FAULTRUN),
        "forecast",
        str(reference["config_path"]),
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "WXENS_FAULT": "slow:step=0.05", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [*args, "--shard", "0/2"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 3}, outs
    computed = [_computed(o) for o, _ in outs]
    assert sum(computed) == 4  # shard 0/2 holds 4 of the 8 units: none computed twice
    for code, (o, _) in zip(codes, outs, strict=True):
        assert (code == 3) == ("locked by other processes" in o)
    assert len(mf.done_units(run_dir)) == 4 and not (run_dir / "COMPLETE").exists()
    assert mf.verify(run_dir)["corrupted"] == {}
    # a rerun of the refused shard is a no-op; the other shard completes the run bitwise
    for shard in ("0/2", "1/2"):
        code, _, err = _cli(
            ["forecast", str(reference["config_path"]), "--run-dir", str(run_dir), "--shard", shard], capsys
        )
        assert code == 0, err
    _assert_complete_and_identical(run_dir, reference)
    record_result(
        "same_shard",
        [{"fault": "two processes run --shard 0/2", "exit_codes": codes, "units_computed": computed}],
    )


def test_live_lock_is_refused_by_second_claimant(reference, tmp_path, capsys):
    """The second claimant of a unit held by a live process skips it and exits 3; nothing is written."""
    run_dir = tmp_path / "held"
    units = json.loads((reference["run_dir"] / "units.json").read_text())
    lock = mf.UnitLock(run_dir, units[0])
    (run_dir / "locks").mkdir(parents=True)
    assert lock.acquire()
    try:
        res = wxens(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir), "--shard", "0/8"])
        assert res.returncode == 3, res.stderr
        assert "1 unit(s) locked by other processes" in res.stdout
        assert not mf.entry_path(run_dir, units[0]).exists()
    finally:
        lock.release()
    code, _, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    _assert_complete_and_identical(run_dir, reference)


# ----------------------------------------------------------------------------------- corrupted chunks
def _corrupt(run_dir: Path) -> dict[str, str]:
    """Truncate one chunk, flip one bit of another, delete a third: three files of three different
    units (inline partials are transient and gone once a run is final; their corruption before that
    is covered by tests/pipeline/test_inline_finalize.py) (chunk ``var/c/<init>/<member chunk>/<lead>/<level>/0/0``; member chunk
    ``k`` of 4 members is checkpoint ``k // 2``, block ``k % 2``)."""
    store = run_dir / "forecast.zarr"
    hit = {
        "truncated": store / "geopotential/c/0/0/1/0/0/0",  # t00000-c000-b00000
        "altered": store / "u_component_of_wind/c/0/3/2/0/0/0",  # t00000-c001-b00001
        "deleted": store / "v_component_of_wind/c/1/1/3/0/0/0",  # t00001-c000-b00001
    }
    data = hit["truncated"].read_bytes()
    hit["truncated"].write_bytes(data[: len(data) // 3])
    raw = bytearray(hit["altered"].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    hit["altered"].write_bytes(bytes(raw))
    hit["deleted"].unlink()
    return {k: str(p.relative_to(run_dir)) for k, p in hit.items()}


@pytest.mark.parametrize("repair", ["verify --delete, then forecast", "forecast (checks on resume)"])
def test_corrupted_chunks_detected_and_recomputed(reference, tmp_path, capsys, repair):
    run_dir = tmp_path / "corrupt"
    shutil.copytree(reference["run_dir"], run_dir)
    hit = _corrupt(run_dir)
    owners = {
        u
        for u in mf.done_units(run_dir)
        if set((mf.read_entry(run_dir, u) or {}).get("files", {})) & set(hit.values())
    }
    assert owners == {"t00000-c000-b00000", "t00000-c001-b00001", "t00001-c000-b00001"}
    code, out, err = _cli(["verify", str(run_dir)], capsys)
    assert code == 1
    rep = json.loads(out.strip().splitlines()[-1])
    assert set(rep["corrupted"]) == owners
    assert sorted(f for fs in rep["corrupted"].values() for f in fs) == sorted(hit.values())
    if repair.startswith("verify"):
        code, _, _ = _cli(["verify", str(run_dir), "--delete"], capsys)
        assert code == 1 and not (run_dir / "COMPLETE").exists()
    code, out, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    assert _computed(out) == 3
    _assert_complete_and_identical(run_dir, reference)
    code, out, _ = _cli(["verify", str(run_dir)], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["ok"] == 8
    _append_row(
        "corruption", {"fault": f"{len(hit)} files truncated/altered/deleted; repair: {repair}", "units": 3}
    )


# ------------------------------------------------------------------------------------------ disk full
def test_enospc_hook_then_restart(reference, tmp_path, capsys):
    """Every chunk write from the 40th on fails with ENOSPC: the run stops with a non-zero exit and
    a message naming the full disk, the manifest holds only units whose chunks all reached the disk,
    and a restart once space is back completes bitwise."""
    run_dir = tmp_path / "full"
    res = wxens(
        ["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], fault="enospc:chunk=40"
    )
    assert res.returncode == 1
    assert _last_line(res.stderr).startswith("error: No space left on device: ")
    assert "Traceback" not in res.stderr
    assert not (run_dir / "COMPLETE").exists()
    done = mf.done_units(run_dir)
    assert 0 < len(done) < 8 and mf.verify(run_dir)["corrupted"] == {}
    # the units written before the disk filled are all kept and verified; the one it hit is not done
    assert all(mf.is_done(run_dir, u) for u in done)
    code, _, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    _assert_complete_and_identical(run_dir, reference)
    _append_row(
        "enospc",
        {
            "fault": "ENOSPC from the 40th chunk write (hook)",
            "error": _last_line(res.stderr),
            "units_kept": len(done),
        },
    )


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _can_mount() -> bool:
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
        and bool(shutil.which("mount"))
    )


@pytest.mark.skipif(not _can_mount(), reason="a real tmpfs needs root and mount")
def test_enospc_real_tmpfs_then_grow(reference, tmp_path, capsys):
    """A real full disk: the run directory on a 6 MiB tmpfs (the run needs about 25 MiB). The run
    fails with ENOSPC; after the tmpfs is grown to 64 MiB the restart completes bitwise."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        run_dir = mnt / "run"
        res = wxens(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)])
        assert res.returncode == 1, res.stderr
        assert _last_line(res.stderr).startswith("error: No space left on device")
        assert "Traceback" not in res.stderr
        assert not (run_dir / "COMPLETE").exists()
        done = len(mf.done_units(run_dir))
        assert done < 8 and mf.verify(run_dir)["corrupted"] == {}
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        code, _, err = _cli(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)], capsys)
        assert code == 0, err
        _assert_complete_and_identical(run_dir, reference)
        _append_row(
            "enospc",
            {
                "fault": "real ENOSPC: 6 MiB tmpfs, then grown",
                "error": _last_line(res.stderr),
                "units_kept": done,
            },
        )
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------------------------ non-finite member
def test_nonfinite_member_flagged_not_valid(toy_world, tmp_path, capsys):
    """A checkpoint whose members blow up above a threshold: those members are flagged (store
    ``nonfinite_step``, manifest, summary), their fields are NaN from that step on, the others are
    finite, and the run completes."""
    import torch
    import xarray as xr

    from pipeline import open_forecast
    from pipeline.testing import CHANNELS, MEANS, STDS, ToyModel, write_toy_checkpoint

    ana = xr.open_zarr(toy_world["analysis"]).sel(time="2008-01-02T00")
    a = torch.tensor(np.stack([ana[c].values for c in CHANNELS]))[None]
    control = ToyModel(seed=3).step(a)[0, 0, 0, 0].item()
    # members whose normalised z500 at the first grid point ends the first step above the control's
    ck = write_toy_checkpoint(tmp_path / "blowup", seed=3, nan_above=(control - MEANS["z500"]) / STDS["z500"])
    cfg = forecast_config(toy_world, checkpoints=[str(ck)], init_times=["2008-01-02T00"])
    cfg["perturbation"] = {"method": "gaussian", "n_pairs": 4, "alpha": 2.0}
    cfg_path = write_yaml(tmp_path / "nan.yaml", cfg)
    run_dir = tmp_path / "nan"
    code, out, err = _cli(["forecast", str(cfg_path), "--run-dir", str(run_dir)], capsys)
    assert code == 0, err
    assert (run_dir / "COMPLETE").is_file()
    ds = open_forecast(run_dir, channels=True)
    first = ds["nonfinite_step"].isel(time=0).values
    z = ds["z500"].isel(time=0).values  # (member, lead, lat, lon)
    bad = first >= 0
    assert 0 < bad.sum() < 8
    for m in range(8):
        nan_leads = np.isnan(z[m]).any(axis=(-2, -1))
        if bad[m]:
            assert nan_leads[first[m] :].all() and not nan_leads[: first[m]].any()
        else:
            assert np.isfinite(z[m]).all()
    entries = [mf.read_entry(run_dir, u) for u in mf.done_units(run_dir)]
    flagged = sorted(m for e in entries for m in e["nonfinite_members"])
    assert flagged == np.flatnonzero(bad).tolist()
    assert bool(ds["nonfinite"].sum() == bad.sum())
    sc = xr.open_zarr(run_dir / "scores.zarr")
    assert int(sc["n_members"].isel(time=0, prediction_timedelta=-1)) == int((~bad).sum())
    _append_row("nonfinite", {"fault": "members blow up (toy nan_above)", "flagged": int(bad.sum()), "of": 8})
