"""Cycled analyses of the QG world: what a reanalysis of it would be, with errors of its own.

The QG store (:mod:`data_catalog.world.qg_store`) is the truth. A real reanalysis is not: it is a
short forecast of an imperfect model corrected by noisy observations, every 6 hours, so its error has
the structure of the flow's growing modes and changes from day to day. That is what initial
perturbations (bred vectors) are meant to represent, and what a perfect analysis (analysis = truth)
cannot show: from the truth, a perfect model has no error at all.

Each cycle (one trajectory per calendar year, as the world):

* background ``psi_b``: the previous analysis advanced 6 h by the *assimilating model*, the world's
  equations with changed parameters (default relaxation 12 d, upper jet 57 m/s);
* observations ``y = psi_true + eps``: the truth's streamfunction (from its geopotential) plus
  independent noise ``eps``, white in the spherical harmonics of degree ``l < obs_lmax``, of area-mean
  RMS ``obs_error`` (m2 s-2 of geopotential) on each level;
* analysis ``psi_a = psi_b + gain (y - psi_b)`` on the observed degrees, ``psi_b`` above them (the small
  scales are only constrained through the dynamics).

The first analysis of a year is the truth plus ``gain`` x noise; the error settles within days. The
output is a store of the world's layout (same variables, levels, grid and times), so the engine,
training and scoring read it as they read the truth (``analysis:`` of a forecast config).

``python -m data_catalog.world.qg_analysis OUT [--years 2007-2009] [--obs-error 150] [--obs-lmax 16]
[--gain 0.4] [--set NAME=VALUE ...]`` writes one and prints its error against the truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.qg import QGParams, ThreeLevelQG, params_from, parse_settings, row_weights
from data_catalog.world.qg_store import (
    LEVELS,
    VARIABLES,
    QGWorldSpec,
    qg_fields,
    qg_world_store,
    reference_geopotential,
)
from data_catalog.world.spectral import PointAnalysis, PointSynthesis
from data_catalog.world.store import STEP_HOURS, _seconds, _single_thread, cached_store, write_world

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycledAnalysisSpec:
    """The assimilation: the assimilating model's changed parameters, the observations, the gain."""

    model: dict[str, float] = field(default_factory=lambda: {"tau_relax_days": 12.0, "u_top": 57.0})
    obs_error: float = 150.0
    obs_lmax: int = 16
    gain: float = 0.4
    seed: int = 1

    def check(self, lmax: int) -> None:
        if not self.obs_error >= 0 or not 0 <= self.gain <= 1 or not 1 <= self.obs_lmax <= lmax:
            raise UserError(f"need obs_error >= 0, 0 <= gain <= 1 and 1 <= obs_lmax <= {lmax}")
        params_from(self.model)


def _streamfunction(z: np.ndarray, analysis: PointAnalysis, f0: float) -> torch.Tensor:
    """``psi`` (spectral) of geopotentials ``(..., 3, lat, lon)`` on the store's grid."""
    return analysis((torch.from_numpy(np.asarray(z, dtype=np.float64)) - reference_geopotential()[0]) / f0)


def cycled_analysis(
    truth: xr.Dataset, spec: CycledAnalysisSpec | None = None, years: tuple[int, int] | None = None
) -> xr.Dataset:
    """Cycled analyses of the QG store ``truth`` (raw layout: ``time, level, latitude, longitude``) for
    the calendar years ``years`` (default: all); see the module docstring. The attributes record the
    spec and the area-weighted RMS error of analysis and background against the truth per level."""
    spec = spec or CycledAnalysisSpec()
    model = ThreeLevelQG(params_from(spec.model))
    p = model.p
    spec.check(p.lmax)
    if "geopotential" not in truth or "level" not in truth.dims:
        raise UserError("the truth must be a QG world store (geopotential on levels)")
    times = pd.DatetimeIndex(truth["time"].values)
    if years is not None:
        keep = (times.year >= years[0]) & (times.year <= years[1])
        if not keep.any():
            raise UserError(f"no times of {years[0]}-{years[1]} in the truth")
        truth, times = truth.isel(time=np.flatnonzero(keep)), times[keep]
    lat = np.asarray(truth["latitude"].values, dtype=np.float64)
    nlon = truth.sizes["longitude"]
    synth = PointSynthesis(lat, nlon, p.lmax, p.radius)
    inverse = PointAnalysis(synth, p.lmax)
    substeps = round(STEP_HOURS * 3600.0 / p.dt)
    observed = (model.tr.ell < spec.obs_lmax).to(torch.complex128) * model.triangle
    weights = torch.as_tensor(row_weights(model))
    gen = torch.Generator().manual_seed(spec.seed)

    def noise() -> torch.Tensor:
        g = torch.randn(1, 3, p.nlat, p.nlon, generator=gen, dtype=torch.float64)
        e = model.tr.to_spec(g) * observed
        rms = ((p.f0 * model.tr.to_grid(e)) ** 2 * weights).mean(dim=(-2, -1)).sqrt()
        return e * (spec.obs_error / rms)[..., None, None]

    out = {v: np.empty((len(times), len(LEVELS), lat.size, nlon), dtype=np.float32) for v in VARIABLES}
    sq = {"analysis": torch.zeros(3, dtype=torch.float64), "background": torch.zeros(3, dtype=torch.float64)}
    n_cycles = 0
    zt = truth["geopotential"].transpose("time", "level", "latitude", "longitude")
    with _single_thread():
        for year in sorted(set(times.year)):
            idx = np.flatnonzero(times.year == year)
            psi_true = _streamfunction(zt.isel(time=idx).values, inverse, p.f0)  # (T, 3, L, M)
            psi_a = psi_true[:1] + spec.gain * noise()
            q_a = model.q_from_psi(psi_a)
            for k, i in enumerate(idx):
                if k > 0:
                    t0 = np.array([_seconds(np.datetime64(times[idx[k - 1]], "s"))], dtype=np.float64)
                    q_b, _ = model.run(q_a, t0, substeps, rk_start=True)
                    psi_b = model.psi_from_q(q_b)
                    psi_a = psi_b + spec.gain * observed * (psi_true[k : k + 1] + noise() - psi_b)
                    q_a = model.q_from_psi(psi_a)
                    for name, psi in (("analysis", psi_a), ("background", psi_b)):
                        err = p.f0 * model.tr.to_grid(psi - psi_true[k : k + 1])
                        sq[name] += (err**2 * weights).mean(dim=(-2, -1))[0]
                    n_cycles += 1
                fields = qg_fields(model, synth, psi_a)
                for name, arr in fields.items():
                    out[name][i] = arr[0].numpy().astype(np.float32)
    rms = {k: [float(v) for v in (s / max(n_cycles, 1)).sqrt()] for k, s in sq.items()}
    dims = ("time", "level", "latitude", "longitude")
    data_vars: dict[str, Any] = {name: (dims, out[name], dict(truth[name].attrs)) for name in VARIABLES}
    if "orography" in truth:
        data_vars["orography"] = truth["orography"]
    attrs = dict(truth.attrs)
    attrs.update(
        title="wxens three-level QG world: cycled analyses (data_catalog.world.qg_analysis)",
        analysis_spec=json.dumps(dataclasses.asdict(spec), sort_keys=True),
        analysis_rms_error=json.dumps({"levels": list(LEVELS), **rms}),
        note="analyses of the QG world by 6-hourly cycling of an imperfect model with noisy observations of "
        "its large scales; the truth is the world store named by world_hash",
    )
    coords = {c: truth[c] for c in ("time", "level", "latitude", "longitude")}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


ANALYSIS_VERSION = "qg3-analysis-v1"


def qg_analysis_store(
    build: bool = True, spec: CycledAnalysisSpec | None = None, world: QGWorldSpec | None = None
) -> Path:
    """Path of ``builtin:qg3-analysis``: the cycled analyses (default :class:`CycledAnalysisSpec`) of
    every year of the QG world ``builtin:qg3`` (default :class:`QGWorldSpec`, or ``world``), built into
    ``$WXENS_CACHE/qg3-analysis-v1-<hash>.zarr`` on first use (about 6 minutes on one core for the
    10 years, plus the world if it is not built yet), then reused; the hash covers both specs.
    With ``build=False`` a missing store is a one-line :class:`UserError`."""
    spec = spec or CycledAnalysisSpec()
    world = world or QGWorldSpec()
    spec.check(QGParams().lmax)

    def builder(path: Path) -> None:
        truth = xr.open_zarr(qg_world_store(spec=world))
        write_world(cycled_analysis(truth, spec), path)

    key = {"world": world.as_dict(), "analysis": dataclasses.asdict(spec)}
    return cached_store(ANALYSIS_VERSION, key, builder, build, "qg3-analysis")


def parse_years(text: str) -> tuple[int, int]:
    """``--years`` of the QG commands: ``"2003"`` or ``"2000-2006"`` -> ``(first, last)``."""
    try:
        a, _, b = text.partition("-")
        return int(a), int(b or a)
    except ValueError:
        raise UserError(f"--years takes YEAR or YEAR-YEAR, not {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Cycled analyses of the QG world (analysis != truth).")
    ap.add_argument("out", help="store to write (zarr)")
    ap.add_argument("--truth", default="builtin:qg3", help="the QG world store (default: built/cached)")
    ap.add_argument("--years", default=None, help="YEAR or YEAR-YEAR (default: all)")
    ap.add_argument("--obs-error", type=float, default=150.0, help="observation error, m2 s-2")
    ap.add_argument("--obs-lmax", type=int, default=16, help="observed degrees l < obs-lmax")
    ap.add_argument("--gain", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="assimilating model change"
    )
    args = ap.parse_args(argv)
    spec = CycledAnalysisSpec(
        model=parse_settings(args.set) if args.set else CycledAnalysisSpec().model,
        obs_error=args.obs_error,
        obs_lmax=args.obs_lmax,
        gain=args.gain,
        seed=args.seed,
    )
    spec.check(QGParams().lmax)
    years = parse_years(args.years) if args.years else None
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists; remove it first")
    if args.truth == "builtin:qg3":
        truth_path = qg_world_store()
    else:
        truth_path = Path(args.truth)
    if not (Path(truth_path) / "zarr.json").is_file():
        raise UserError(f"no zarr store at {truth_path}")
    tic = time.perf_counter()
    ds = cycled_analysis(xr.open_zarr(truth_path), spec, years)
    write_world(ds, out)
    rms = json.loads(ds.attrs["analysis_rms_error"])
    from rich.console import Console

    Console(highlight=False).print(
        f"{out}: {ds.sizes['time']} analyses in {time.perf_counter() - tic:.0f} s; area-weighted RMS error of "
        "z200/z500/z800 against the truth: analysis "
        + " / ".join(f"{v:.1f}" for v in rms["analysis"])
        + ", 6 h background "
        + " / ".join(f"{v:.1f}" for v in rms["background"])
        + " m2 s-2"
    )
    return 0


if __name__ == "__main__":
    from data_catalog.errors import run_module_main

    run_module_main(main)
