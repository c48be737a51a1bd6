"""Faults in training and scoring: ``wxens train`` and ``wxens score`` killed with SIGKILL and rerun.

Training resumes from its last saved state (``train_state.pt``) and must end with weights bitwise
equal to an uninterrupted run; scoring must never leave a half-written scores file, and a rerun
must write the same scores as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from rel_helpers import record_result, wxens

TRAIN_ARGS = [
    "--seed", "0", "--steps", "20", "--save-every", "5", "--embed-dim", "8", "--num-layers", "1",
    "--batch-size", "4", "--features", "", "--threads", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """A small regular 6-hourly dataset 2000-2007 (train 2000-2006, validation 2007) on an 8x16 grid:
    two travelling waves, float32, ~12 MB."""
    from pipeline.testing import grid

    lat, lon = grid(8, 16)
    t = np.arange(
        np.datetime64("2000-01-01T00", "ns"), np.datetime64("2008-01-01T00", "ns"), np.timedelta64(6, "h")
    )
    ph = np.arange(t.size)[:, None, None] * 0.3
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    z = 54000 + 600 * np.cos(la) * np.sin(2 * lo - ph) + 100 * np.sin(3 * lo + 0.7 * ph) * np.cos(la) ** 2
    u = 10 + 8 * np.sin(lo + ph) * np.cos(la)
    ds = xr.Dataset(
        {
            "z500": (("time", "latitude", "longitude"), z.astype("f4"), {"units": "m2 s-2"}),
            "u500": (("time", "latitude", "longitude"), u.astype("f4"), {"units": "m s-1"}),
        },
        coords={"time": t, "latitude": lat, "longitude": lon},
    )
    path = tmp_path_factory.mktemp("train") / "train.zarr"
    ds.to_zarr(path, mode="w", zarr_format=3)
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from workflows.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([("kill:trainsave=2", 5)], id="kill-in-save"),
        pytest.param(
            [("kill:trainstep=13", 10), ("kill:trainsave=1", 10)], id="kill-twice", marks=pytest.mark.slow
        ),
    ],
)
def test_train_killed_resumes_to_identical_weights(train_data, tmp_path, capsys, faults):
    """Uninterrupted 20 iterations (state saved every 5) vs. SIGKILL inside the second state save
    (temporary written, not renamed: the state of iteration 5 stays) and, in the soak, SIGKILL at
    iteration 13 then inside the next save; the resumed run ends with identical weights."""
    import torch

    from models.train import TrainConfig, train

    torch.set_num_threads(1)
    ref = train(
        TrainConfig(
            dataset=str(train_data), seed=0, embed_dim=8, num_layers=1, steps=20, batch_size=4,
            features=(), save_every=5, threads=1,
        ),
        tmp_path / "ref",
        progress=False,
    )  # fmt: skip
    out = tmp_path / "killed"
    args = ["train", "--dataset", str(train_data), "--out", str(out), *TRAIN_ARGS]
    rows = []
    for fault, expect_iter in faults:
        res = wxens(args, fault=fault)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        assert not (out / "metadata.json").exists()  # nothing marked finished
        st = torch.load(out / "train_state.pt", weights_only=True)
        assert int(st["iteration"]) == expect_iter
        rows.append({"fault": f"wxens train, {fault}", "resumed_from": expect_iter})
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    assert not (out / "train_state.pt").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert _sha(out / "weights.safetensors") == _sha(ref.path / "weights.safetensors")
    assert meta["weights_sha256"] == _sha(ref.path / "weights.safetensors")
    ref_meta = json.loads((ref.path / "metadata.json").read_text())
    assert meta["training"]["final_loss"] == ref_meta["training"]["final_loss"]
    path = Path(__file__).parent / ".results" / "kill_train.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    record_result("kill_train", [r for r in old if r not in rows] + rows)


@pytest.fixture(scope="module")
def scored(reference, tmp_path_factory, toy_world):
    """Scores of the reference forecast, written in-process by ``wxens score``."""
    from workflows.cli import main

    out = tmp_path_factory.mktemp("scores") / "scores.nc"
    store = str(reference["run_dir"] / "forecast.zarr")
    args = ["score", store, "--truth", toy_world["analysis"], "--out"]
    assert main([*args, str(out)]) == 0
    return {"args": args, "path": out}


@pytest.mark.parametrize(
    "fault, left",
    [
        # killed before the finished file is moved into place
        pytest.param("kill:scorewrite=1", "nothing", marks=pytest.mark.slow),
        ("kill:scorewrite=2", "scores.nc only"),  # moved into place, CSV not yet
    ],
)
def test_score_killed_rerun_identical(scored, tmp_path, capsys, fault, left):
    out = tmp_path / "scores.nc"
    res = wxens([*scored["args"], str(out)], fault=fault)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ([] if left == "nothing" else ["scores.nc"])
    if left != "nothing":  # what is there is whole: it opens and equals the reference
        with xr.open_dataset(out) as a, xr.open_dataset(scored["path"]) as b:
            xr.testing.assert_identical(a.load(), b.load())
    code, _, err = _cli([*scored["args"], str(out)], capsys)
    assert code == 0, err
    with xr.open_dataset(out) as a, xr.open_dataset(scored["path"]) as b:
        xr.testing.assert_identical(a.load(), b.load())
    assert out.with_suffix(".csv").read_bytes() == scored["path"].with_suffix(".csv").read_bytes()
    strays = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    path = Path(__file__).parent / ".results" / "kill_score.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r["fault"] != f"wxens score, {fault}"] + [
        {"fault": f"wxens score, {fault}", "left_after_kill": left, "stray_temp_dirs": len(strays)}
    ]
    record_result("kill_score", rows)
