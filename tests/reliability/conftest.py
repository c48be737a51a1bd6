"""Fixtures of the reliability tests: a synthetic analysis store, toy checkpoints, a reference run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from rel_helpers import digest, forecast_config, write_yaml  # noqa: E402


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    """Analysis store 2008-01-01 .. 2008-01-06 (6-hourly, 32x64), four toy checkpoints."""
    from pipeline.testing import synthetic_analysis, write_toy_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reliability")
    ana = root / "analysis.zarr"
    synthetic_analysis(periods=24).to_zarr(ana, mode="w", zarr_format=3)
    ckpts = [str(write_toy_checkpoint(root / "ckpt" / f"seed-{i}", seed=i)) for i in range(4)]
    return {"root": root, "analysis": str(ana), "checkpoints": ckpts}


@pytest.fixture(scope="session")
def reference(toy_world):
    """An uninterrupted in-process run (the bitwise reference) and its config file."""
    from pipeline import run_forecast

    cfg = forecast_config(toy_world)
    cfg_path = write_yaml(toy_world["root"] / "forecast.yaml", cfg)
    run_dir = toy_world["root"] / "reference"
    summary = run_forecast(cfg, run_dir)
    assert summary["complete"] and summary["units_total"] == 8
    return {"config": cfg, "config_path": cfg_path, "run_dir": run_dir, "digest": digest(run_dir)}
