"""Fixtures of the workflow tests: a minimal workflow file and the fake stage registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MINIMAL = """\
name: t
forecast:
  members: 4
  init_times: [2008-01-01, 2008-01-02T06:00]
  lead_steps: 4
"""


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    """A minimal workflow whose run_dir is inside tmp_path."""
    path = tmp_path / "wf.yaml"
    path.write_text(MINIMAL + f"run_dir: {tmp_path / 'run'}\n")
    return path


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch):
    """The fake stages, also installed as the default registry (so the CLI uses them)."""
    from fakes import FAKE_REGISTRY

    from workflows import stages

    monkeypatch.setattr(stages, "REGISTRY", dict(FAKE_REGISTRY))
    return stages.REGISTRY


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """sbatch / scancel / squeue on PATH that run jobs as detached local processes (fake_slurm.py).

    Every job process still alive at the end is killed (the tests assert that none is left)."""
    import os

    from fake_slurm import install

    slurm = install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{slurm.bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(slurm.state))
    try:
        yield slurm
    finally:
        slurm.kill_all()
