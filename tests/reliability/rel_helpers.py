"""Helpers of the reliability tests: toy configs, subprocess runs with faults, bitwise digests."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAULTRUN = HERE / "faultrun.py"

#: the docs/reliability.md tables are (re)written by the tests when this variable is set
DOC_ENV = "WXENS_RELIABILITY_DOC"
RESULTS = HERE / ".results"


def forecast_config(world: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A small toy forecast: 2 checkpoints x 2 inits x 2 member blocks of 4 = 8 work units."""
    cfg: dict[str, Any] = {
        "analysis": world["analysis"],
        "init_times": ["2008-01-02T00", "2008-01-02T12"],
        "checkpoints": world["checkpoints"][:2],
        "model_loader": "pipeline.testing:load_toy_checkpoint",
        "perturbation": {"method": "bred", "n_pairs": 4, "cycles": 2},
        "lead_steps": 3,
        "batch_size": 4,
        "seed": 7,
        "progress": False,
        "inline": {"enabled": True, "spectra": False},
    }
    cfg.update(over)
    return cfg


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def digest(run_dir: Path, stores: tuple[str, ...] = ("forecast.zarr", "scores.zarr")) -> dict[str, str]:
    """sha256 of every data chunk file of the run's stores (temporary ``*.partial`` files left by a
    killed zarr write are ignored: zarr never reads them) and of the root attributes minus
    provenance (host, creation time)."""
    import zarr

    out: dict[str, str] = {}
    for store in stores:
        base = Path(run_dir) / store
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(base)
            if p.is_file() and "c" in rel.parts and not p.name.endswith(".partial"):
                out[f"{store}/{rel}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    attrs = dict(zarr.open_group(str(Path(run_dir) / "forecast.zarr"), mode="r").attrs)
    attrs.pop("wxens_provenance", None)
    out["attrs"] = hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()
    return out


def stray_files(run_dir: Path) -> list[str]:
    """Temporary files a killed writer left behind (``*.partial``, ``.*.tmp``)."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in Path(run_dir).rglob("*")
        if p.is_file() and (p.name.endswith(".partial") or p.name.endswith(".tmp"))
    )


def wxens(
    args: list[str], fault: str | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``wxens ARGS`` in a fresh Python process (``faultrun.py``), with an optional fault."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("WXENS_FAULT", None)
    if fault:
        e["WXENS_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(FAULTRUN), *args],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def record_result(name: str, rows: list[dict[str, Any]]) -> None:
    """Keep table rows for docs/reliability.md (only when ``$WXENS_RELIABILITY_DOC`` is set)."""
    if not os.environ.get(DOC_ENV):
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1, default=str))
