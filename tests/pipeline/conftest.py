"""Fixtures of the engine tests: a synthetic analysis store, toy checkpoints, reference runs."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr

from pipeline.testing import synthetic_analysis, write_toy_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Analysis store (2008-01-01 .. 2008-01-06, 6-hourly) and four toy checkpoints."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engine")
    ana = root / "analysis.zarr"
    synthetic_analysis(periods=24).to_zarr(ana, mode="w", zarr_format=3)
    ckpts = [str(write_toy_checkpoint(root / "ckpt" / f"seed-{i}", seed=i)) for i in range(4)]
    return {"root": root, "analysis": str(ana), "checkpoints": ckpts}


def base_config(world, **over):
    cfg = {
        "analysis": world["analysis"],
        "init_times": ["2008-01-02T00", "2008-01-02T12", "2008-01-03T00"],
        "checkpoints": world["checkpoints"][:2],
        "model_loader": "pipeline.testing:load_toy_checkpoint",
        "perturbation": {"method": "bred", "n_pairs": 4},
        "lead_steps": 3,
        "batch_size": 4,
        "seed": 11,
        "progress": False,
        "inline": {"enabled": True, "spectra": False, "thresholds": {"z500": [54000.0, 54500.0]}},
    }
    cfg = copy.deepcopy(cfg)
    cfg.update(over)
    return cfg


def digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every data chunk file of the forecast store and the merged scores, and of the root
    attributes minus provenance (host, creation time)."""
    out = {}
    for store in ("forecast.zarr", "scores.zarr"):
        base = Path(run_dir) / store
        for p in sorted(base.rglob("*")):
            if p.is_file() and "/c/" in str(p.relative_to(base.parent)) + "/" and p.name != "zarr.json":
                out[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    attrs = dict(zarr.open_group(str(Path(run_dir) / "forecast.zarr"), mode="r").attrs)
    attrs.pop("wxens_provenance", None)
    out["attrs"] = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()
    return out


def spawn(cfg_path: Path, run_dir: Path, shard: str = "0/1") -> subprocess.Popen:
    """A real forecast process (the `wxens forecast` code path without the CLI composition)."""
    code = (
        "import sys, torch; torch.set_num_threads(1);"
        "from pipeline.cli import forecast_main;"
        "sys.exit(forecast_main(sys.argv[1], sys.argv[2], sys.argv[3]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(cfg_path), str(run_dir), shard],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="session")
def reference_run(world):
    """An uninterrupted single-process run of base_config (the bitwise reference)."""
    from pipeline import run_forecast

    cfg = base_config(world)
    run_dir = world["root"] / "reference"
    summary = run_forecast(cfg, run_dir)
    assert summary["complete"]
    return {"config": cfg, "run_dir": run_dir, "digest": digest(run_dir), "summary": summary}
