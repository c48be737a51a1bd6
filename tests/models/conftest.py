"""Fixtures of the models tests: a small synthetic canonical world and tiny training configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # models_helpers, however pytest is invoked
from models_helpers import synthetic_world  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world() -> xr.Dataset:
    return synthetic_world()


@pytest.fixture
def tiny_config():
    from models.train import TrainConfig

    return TrainConfig(
        dataset="synthetic",
        seed=0,
        embed_dim=8,
        num_layers=2,
        lmax=8,
        mmax=8,
        steps=12,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        train_years=(2000, 2000),
        valid_years=(2001, 2001),
        save_every=4,
        skill_inits=2,
        skill_lead_steps=4,
    )
