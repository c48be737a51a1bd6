"""Physics "checkpoints": the three-level QG equations as a :class:`~models.base.ForecastModel`.

The engine treats a checkpoint as anything a loader turns into a ForecastModel. This module makes the
QG world's own equations (:mod:`data_catalog.world.qg`), with chosen parameters, one: a *physics
checkpoint* is a directory with ``model.json`` (``{"kind": "qg3-physics", "params": {...}}``) and the
usual ``skill.json`` (:func:`models.skill.skill_table` on the world's validation years), loaded by
``models.physics:load_qg_model``. With parameters other than the world's they are imperfect models
whose errors are known and small next to a learned emulator's, which separates what the engine's
design does (perturbations, members, scoring) from what the emulators' skill allows
(docs/engine.md, "A model ensemble of physics checkpoints").

Grids: the model reads and writes the 12 channels ``z200 ... vo800`` on the WeatherBench2 64x32 grid
(latitude descending). Only the geopotentials carry the state: ``psi_k = (z_k - reference_k) / f0`` is
projected onto the T21 spherical harmonics by least squares (exact for the world's band-limited
fields), integrated for ``6 h / dt`` steps (Adams-Bashforth restarted at each call from two Runge-Kutta
steps: an Euler restart alone made the world's own parameters miss its store by 23 m2 s-2 in z500 at
48 h, as much as the parameter changes do) and evaluated back exactly at the grid points; winds and vorticity are diagnosed from ``psi``, so perturbations of them
do not survive the first step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.qg import QGParams, ThreeLevelQG, params_from, parse_settings
from data_catalog.world.qg_store import LEVELS, qg_fields, reference_geopotential
from data_catalog.world.spectral import PointAnalysis, PointSynthesis
from data_catalog.world.store import OUT_LAT, OUT_LON, STEP_HOURS, _seconds

KIND = "qg3-physics"
MODEL_FILE = "model.json"
SKILL_FILE = "skill.json"
VARIABLES = {"z": "geopotential", "u": "u_component_of_wind", "v": "v_component_of_wind", "vo": "vorticity"}
CHANNELS = tuple(f"{b}{lv}" for b in VARIABLES for lv in LEVELS)


class QGForecastModel:
    """The QG equations with ``params`` as a ForecastModel on the 64x32 grid (CPU, float64 inside)."""

    noise_channels = 0

    def __init__(
        self, params: QGParams | None = None, skill: dict[str, Any] | None = None, rk_start: bool = True
    ) -> None:
        self.params = params or QGParams()
        self.rk_start = rk_start
        self.qg = ThreeLevelQG(self.params)
        self.skill = skill or {}
        self.channels = CHANNELS
        self.latitude = np.sort(np.asarray(OUT_LAT, dtype=np.float64))[::-1].copy()
        self.longitude = np.asarray(OUT_LON, dtype=np.float64)
        self.time_step = dt.timedelta(hours=STEP_HOURS)
        self.device = torch.device("cpu")
        p = self.params
        self.substeps = round(STEP_HOURS * 3600.0 / p.dt)
        if abs(self.substeps * p.dt - STEP_HOURS * 3600.0) > 1e-9:
            raise UserError(f"model time step {p.dt} s must divide {STEP_HOURS} h")
        self.synth = PointSynthesis(self.latitude, self.longitude.size, p.lmax, p.radius)
        self._analysis = PointAnalysis(self.synth, p.lmax)

    def to_spectral(self, grid: torch.Tensor) -> torch.Tensor:
        """Spectral coefficients ``(..., L, M)`` of band-limited fields ``(..., lat, lon)`` on the grid."""
        return self._analysis(grid)

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        """Streamfunction ``(B, 3, L, M)`` from the geopotential channels of ``x`` ``(B, C, lat, lon)``."""
        z = x[:, [self.channels.index(f"z{lv}") for lv in LEVELS]].to(torch.float64)
        return self.to_spectral((z - reference_geopotential()) / self.params.f0) * self.qg.triangle

    def fields(self, psi: torch.Tensor) -> torch.Tensor:
        """The 12 channels ``(B, C, lat, lon)`` (float32) of the streamfunction ``psi``."""
        f = qg_fields(self.qg, self.synth, psi)
        return torch.cat([f[VARIABLES[b]] for b in VARIABLES], dim=1).to(torch.float32)

    def forward(
        self, x: torch.Tensor, times: Sequence[Any], noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Advance ``x`` ``(B, C, lat, lon)``, member ``i`` valid at ``times[i]``, by 6 hours."""
        t0 = np.array([_seconds(np.datetime64(t, "s")) for t in times], dtype=np.float64)
        q = self.qg.q_from_psi(self.psi(x))
        q, _ = self.qg.run(q, t0, self.substeps, rk_start=self.rk_start)
        return self.fields(self.qg.psi_from_q(q))

    def step(self, x: torch.Tensor, time: np.datetime64 | None = None) -> torch.Tensor:
        if time is None:
            raise UserError("the QG physics model needs the valid time (its forcing is seasonal)")
        return self.forward(x, [time] * x.shape[0])

    def to(self, device: torch.device | str) -> QGForecastModel:
        if torch.device(device).type != "cpu":
            raise UserError("the QG physics model runs on the CPU only")
        return self

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        yield

    def rmse_at(self, hours: int = 48) -> dict[str, float]:
        """Validation RMSE per channel at lead ``hours`` from ``skill.json``."""
        from models.skill import rmse_at

        return rmse_at(self.skill, hours)

    def __repr__(self) -> str:
        return f"QGForecastModel({changed_params(self.params)})"


def changed_params(params: QGParams) -> dict[str, Any]:
    """The parameters that differ from the world's."""
    base = QGParams()
    return {
        f.name: getattr(params, f.name)
        for f in fields(QGParams)
        if getattr(params, f.name) != getattr(base, f.name)
    }


def load_qg_model(path: str | Path) -> QGForecastModel:
    """Loader (``model_loader: models.physics:load_qg_model``) of a physics checkpoint directory."""
    path = Path(path)
    meta_path = path / MODEL_FILE
    if not meta_path.is_file():
        raise UserError(f"{path} is not a physics checkpoint (no {MODEL_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path}: not JSON ({e.msg}, line {e.lineno})") from None
    if meta.get("kind") != KIND:
        raise UserError(f"{meta_path}: kind {meta.get('kind')!r}, expected {KIND!r}")
    skill_path = path / SKILL_FILE
    skill = json.loads(skill_path.read_text()) if skill_path.is_file() else None
    return QGForecastModel(params_from(meta.get("params", {})), skill)


def write_qg_checkpoint(
    path: str | Path,
    params: dict[str, Any],
    dataset: str | Path | xr.Dataset,
    valid_years: tuple[int, int],
    clim_years: tuple[int, int],
    inits: int = 8,
    lead_steps: int = 40,
) -> QGForecastModel:
    """Write a physics checkpoint with QG parameters ``params`` (differences from the world's) and its
    skill file on ``dataset``'s ``valid_years`` (climatology from ``clim_years``)."""
    from models.data import load_years, monthly_climatology, open_dataset
    from models.skill import skill_table

    model = QGForecastModel(params_from(params))
    ds = open_dataset(dataset if isinstance(dataset, xr.Dataset) else str(dataset))
    block = load_years(ds, list(CHANNELS), valid_years)
    clim = monthly_climatology(load_years(ds, list(CHANNELS), clim_years))
    skill = skill_table(model, block, clim, n_inits=inits, lead_steps=lead_steps)
    skill["years"] = list(valid_years)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MODEL_FILE).write_text(json.dumps({"kind": KIND, "params": dict(params)}, indent=1))
    (path / SKILL_FILE).write_text(json.dumps(skill, indent=1))
    model.skill = skill
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.physics OUT --dataset builtin:qg3 --set u_top=57 --set tau_relax_days=12``"""
    import argparse

    ap = argparse.ArgumentParser(
        description="Write a physics checkpoint: the QG equations with changed parameters, and its skill file."
    )
    ap.add_argument("out", help="checkpoint directory to write")
    ap.add_argument("--dataset", default="builtin:qg3", help="the QG world's store (skill and climatology)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a changed parameter")
    ap.add_argument("--valid-years", default="2007-2007", help="years of the skill file")
    ap.add_argument("--clim-years", default="2000-2006", help="years of the reference climatology")
    ap.add_argument("--inits", type=int, default=8, help="init times of the skill file")
    ap.add_argument("--lead-steps", type=int, default=40, help="6 h steps of the skill file")
    args = ap.parse_args(argv)
    params = parse_settings(args.set)

    def years(text: str, flag: str) -> tuple[int, int]:
        try:
            a, _, b = text.partition("-")
            return int(a), int(b or a)
        except ValueError:
            raise UserError(f"{flag} takes YEAR or YEAR-YEAR, not {text!r}") from None

    if args.inits < 1 or args.lead_steps < 8:
        raise UserError("--inits must be >= 1 and --lead-steps >= 8 (the 48 h skill)")
    model = write_qg_checkpoint(
        args.out,
        params,
        args.dataset,
        years(args.valid_years, "--valid-years"),
        years(args.clim_years, "--clim-years"),
        inits=args.inits,
        lead_steps=args.lead_steps,
    )
    rmse = model.rmse_at(48)
    from rich.console import Console

    Console(highlight=False).print(
        f"{args.out}: {model!r}; 48 h RMSE z500 {rmse['z500']:.1f} m2 s-2, u500 {rmse['u500']:.2f} m s-1"
    )
    return 0


if __name__ == "__main__":
    from data_catalog.errors import run_module_main

    run_module_main(main)
