"""Fixtures of the models tests: a small synthetic canonical world and tiny training configs."""

from __future__ import annotations

import pytest
import xarray as xr
from models_helpers import synthetic_world


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
