"""Store of the three-level QG world (:mod:`data_catalog.world.qg`) in the WeatherBench2 layout.

As the shallow-water store (:mod:`data_catalog.world.store`): one independent trajectory per calendar
year, spun up ``spinup_days`` before its 1 January, run side by side, output every 6 hours on the
WeatherBench2 64x32 grid evaluated exactly from the spectral coefficients, the same years and split.
Unlike it, the variables have a ``level`` dimension (200, 500, 800 hPa), as ERA5 in WeatherBench2:
``geopotential`` (a standard-atmosphere reference per level plus ``f0 psi``), ``u_component_of_wind``,
``v_component_of_wind`` (the non-divergent QG wind) and ``vorticity``; the readers open them as the
channels ``z200 ... vo800``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.model import DAY
from data_catalog.world.qg import QGParams, ThreeLevelQG
from data_catalog.world.spectral import PointSynthesis
from data_catalog.world.store import (
    DEFAULT_SEED,
    DEFAULT_START_YEAR,
    DEFAULT_YEARS,
    OUT_LAT,
    OUT_LON,
    SPLITS,
    STEP_HOURS,
    _seconds,
    _single_thread,
    _trajectory_times,
    cached_store,
    spec_hash,
    trajectory_seed,
    write_world,
)

log = logging.getLogger(__name__)

QG_VERSION = "qg3-v1"
LEVELS = (200, 500, 800)
#: standard-atmosphere heights (m) of the levels, the reference the geopotential anomalies sit on
REFERENCE_HEIGHT = {200: 11784.0, 500: 5574.0, 800: 1949.0}
G0 = 9.80665
DEFAULT_SPINUP_DAYS = 90.0

VARIABLES = {
    "geopotential": {"units": "m2 s-2", "long_name": "geopotential (QG)", "standard_name": "geopotential"},
    "u_component_of_wind": {
        "units": "m s-1",
        "long_name": "eastward wind (non-divergent QG wind)",
        "standard_name": "eastward_wind",
    },
    "v_component_of_wind": {
        "units": "m s-1",
        "long_name": "northward wind (non-divergent QG wind)",
        "standard_name": "northward_wind",
    },
    "vorticity": {
        "units": "s-1",
        "long_name": "relative vorticity",
        "standard_name": "atmosphere_relative_vorticity",
    },
}


@dataclass(frozen=True)
class QGWorldSpec:
    """Everything that determines a QG store's content (its hash names the cached store): one
    trajectory per calendar year ``start_year + k`` for ``years`` years, spun up ``spinup_days``;
    ``days`` truncates each trajectory (tiny test worlds)."""

    years: int = DEFAULT_YEARS
    start_year: int = DEFAULT_START_YEAR
    seed: int = DEFAULT_SEED
    spinup_days: float = DEFAULT_SPINUP_DAYS
    days: float | None = None
    params: QGParams = field(default_factory=QGParams)

    def as_dict(self) -> dict:
        """JSON-safe dict (with the world version) whose hash names the store."""
        return {
            "version": QG_VERSION,
            "years": self.years,
            "start_year": self.start_year,
            "seed": self.seed,
            "spinup_days": self.spinup_days,
            "days": self.days,
            "params": self.params.as_dict(),
        }


def reference_geopotential() -> torch.Tensor:
    """The standard-atmosphere geopotential of each level, ``(1, 3, 1, 1)`` (m2 s-2)."""
    ref = torch.tensor([G0 * REFERENCE_HEIGHT[lv] for lv in LEVELS], dtype=torch.float64)
    return ref[None, :, None, None]


def qg_fields(model: ThreeLevelQG, synth: PointSynthesis, psi: torch.Tensor) -> dict[str, torch.Tensor]:
    """The store's variables ``(B, 3, lat, lon)`` at ``synth``'s points from the streamfunction
    ``psi`` (spectral, ``(B, 3, L, M)``): geopotential (reference + ``f0 psi``), the non-divergent
    winds and the relative vorticity."""
    zeta = psi * model.tr.lap
    uv = synth.uv(torch.stack((zeta, torch.zeros_like(zeta)), dim=2))
    return {
        "geopotential": reference_geopotential() + model.p.f0 * synth.scalar(psi),
        "u_component_of_wind": uv[:, :, 0],
        "v_component_of_wind": uv[:, :, 1],
        "vorticity": synth.scalar(zeta),
    }


def simulate_qg(spec: QGWorldSpec | None = None) -> xr.Dataset:
    """Run the QG world and return it in memory (store layout, latitude ascending, ``level`` in hPa)."""
    spec = spec or QGWorldSpec()
    p, years, start_year, seed, spinup_days, days = (
        spec.params,
        spec.years,
        spec.start_year,
        spec.seed,
        spec.spinup_days,
        spec.days,
    )
    with _single_thread():
        model = ThreeLevelQG(p)
        synth = PointSynthesis(OUT_LAT, len(OUT_LON), p.lmax, p.radius)
        times = _trajectory_times(years, start_year, days)
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in times])])
        steps_out = round(STEP_HOURS * 3600 / p.dt)
        spin_steps = round(spinup_days * DAY / p.dt)
        if (
            abs(steps_out * p.dt - STEP_HOURS * 3600) > 1e-9
            or abs(spin_steps * p.dt - spinup_days * DAY) > 1e-6
        ):
            raise UserError(f"model time step {p.dt} s must divide {STEP_HOURS} h and the spin-up")
        seeds = [trajectory_seed(seed, k) for k in range(years)]
        t_start = np.array([_seconds(np.datetime64(t[0])) for t in times]) - spinup_days * DAY
        q = torch.cat(
            [
                model.initial_state(t_start[k : k + 1], torch.Generator().manual_seed(s))
                for k, s in enumerate(seeds)
            ]
        )
        q, t = model.run(q, t_start, spin_steps)
        shape = (int(offsets[-1]), len(LEVELS), len(OUT_LAT), len(OUT_LON))
        out = {v: np.empty(shape, dtype=np.float32) for v in VARIABLES}
        lengths = np.array([len(tt) for tt in times])

        def write(k: int, qq: torch.Tensor, tt: np.ndarray) -> None:
            fields = qg_fields(model, synth, model.psi_from_q(qq))
            live = np.nonzero(lengths > k)[0]
            for name, arr in fields.items():
                out[name][offsets[live] + k] = arr[live].numpy().astype(np.float32)

        write(0, q, t)
        model.run(q, t, (int(lengths.max()) - 1) * steps_out, callback=write, every=steps_out)
        hs = synth.scalar(model.topo_spec[None])[0].numpy() * p.scale_height / p.f0
    dims = ("time", "level", "latitude", "longitude")
    data_vars: dict = {name: (dims, out[name], VARIABLES[name]) for name in VARIABLES}
    data_vars["orography"] = (
        ("latitude", "longitude"),
        hs.astype(np.float32),
        {
            "units": "m",
            "long_name": "surface height (spectrally truncated)",
            "standard_name": "surface_altitude",
        },
    )
    return xr.Dataset(
        data_vars,
        coords={
            "time": ("time", np.concatenate([t.values for t in times]).astype("datetime64[ns]")),
            "level": (
                "level",
                np.array(LEVELS, dtype=np.int64),
                {"units": "hPa", "long_name": "pressure level"},
            ),
            "latitude": ("latitude", OUT_LAT.copy(), {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": (
                "longitude",
                OUT_LON.copy(),
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        },
        attrs={
            "title": "wxens three-level quasi-geostrophic world (data_catalog.world.qg)",
            "source": f"data_catalog.world.qg_store ({QG_VERSION}); see docs/world.md",
            "world_version": QG_VERSION,
            "world_hash": spec_hash(spec.as_dict()),
            "world_spec": json.dumps(spec.as_dict(), sort_keys=True),
            "seed": seed,
            "trajectory_seeds": json.dumps(seeds),
            "trajectory_starts": json.dumps([str(t[0]) for t in times]),
            "note": "each calendar year is an independent trajectory (spun up for spinup_days)",
            "split_train": "/".join(SPLITS["train"]),
            "split_valid": "/".join(SPLITS["valid"]),
            "split_test": "/".join(SPLITS["test"]),
            "Conventions": "CF-1.8",
        },
    )


def build_qg_world(path: str | Path, spec: QGWorldSpec | None = None) -> Path:
    """Simulate the QG world (:func:`simulate_qg`) and write it as a zarr v3 store at ``path``."""
    path = Path(path)
    if path.exists():
        raise UserError(f"world store already exists: {path}")
    tic = time.perf_counter()
    write_world(simulate_qg(spec), path)
    log.info("built the QG world %s in %.1f s", path, time.perf_counter() - tic)
    return path


def qg_world_store(build: bool = True, spec: QGWorldSpec | None = None) -> Path:
    """Path of the QG world ``builtin:qg3`` (the default :class:`QGWorldSpec`, or ``spec``), built
    into ``$WXENS_CACHE/qg3-v1-<hash>.zarr`` on first use (1.5-4 minutes on one core), then reused;
    safe under concurrent callers (:func:`~data_catalog.world.store.cached_store`)."""
    spec = spec or QGWorldSpec()
    return cached_store(QG_VERSION, spec.as_dict(), lambda path: build_qg_world(path, spec), build, "qg3")


__all__ = ["LEVELS", "QG_VERSION", "QGWorldSpec", "build_qg_world", "qg_world_store", "simulate_qg"]
