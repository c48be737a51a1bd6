"""Build and cache the embedded world store ``builtin:sphere-swe`` (WeatherBench2 layout, zarr v3).

The world is a set of independent one-year trajectories of :class:`ShallowWaterModel`, one per
calendar year, each started ``spinup_days`` before its 1 January from its own seeded state and run
side by side in one batch. Output every 6 hours on the WeatherBench2 64x32 equiangular grid
(latitude -87.1875..87.1875 ascending, no poles; longitude 0..354.375), evaluated exactly from the
spectral coefficients (:class:`~data_catalog.world.spectral.PointSynthesis`).

``world_store()`` is safe under concurrent callers (pytest-xdist workers, several CLI processes):
an exclusive ``fcntl`` lock serialises builders, the store is written into a temporary folder and
renamed into place, so a half-built store is never visible under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.world.model import DAY, ShallowWaterModel, WorldParams
from data_catalog.world.spectral import PointSynthesis

log = logging.getLogger(__name__)

WORLD_VERSION = "sphere-swe-v2"
EPOCH = np.datetime64("2000-01-01T00:00:00", "ns")
OUT_LAT = np.arange(32) * 5.625 - 87.1875  # WeatherBench2 64x32, ascending, no poles
OUT_LON = np.arange(64) * 5.625
STEP_HOURS = 6

#: Defaults of the shipped world (``builtin:sphere-swe``).
DEFAULT_START_YEAR = 2000
DEFAULT_YEARS = 10
DEFAULT_SEED = 20240501
DEFAULT_SPINUP_DAYS = 60.0
SPLITS = {
    "train": ("2000-01-01", "2006-12-31T18"),
    "valid": ("2007-01-01", "2007-12-31T18"),
    "test": ("2008-01-01", "2009-12-31T18"),
}

VARIABLES = {
    "z500": {
        "units": "m2 s-2",
        "long_name": "geopotential of the free surface (500 hPa geopotential analogue)",
        "standard_name": "geopotential",
    },
    "u500": {
        "units": "m s-1",
        "long_name": "eastward wind (500 hPa analogue)",
        "standard_name": "eastward_wind",
    },
    "v500": {
        "units": "m s-1",
        "long_name": "northward wind (500 hPa analogue)",
        "standard_name": "northward_wind",
    },
    "vo500": {
        "units": "s-1",
        "long_name": "relative vorticity (500 hPa analogue)",
        "standard_name": "atmosphere_relative_vorticity",
    },
}


def cache_root() -> Path:
    """Cache folder: ``$WXENS_CACHE`` or ``~/.cache/wxens``."""
    return Path(os.environ.get("WXENS_CACHE", Path.home() / ".cache" / "wxens")).expanduser()


def _seconds(t: np.datetime64) -> float:
    # numpy's stubs have no datetime64(datetime64, unit) overload; the conversion is valid at runtime
    return float((np.datetime64(t, "ns") - EPOCH) / np.timedelta64(1, "s"))  # type: ignore[call-overload]


def trajectory_seed(seed: int, k: int) -> int:
    """Seed of trajectory ``k``: ``SeedSequence(seed, spawn_key=(k,))`` (independent streams)."""
    return int(np.random.SeedSequence(seed, spawn_key=(k,)).generate_state(1, dtype=np.uint64)[0] >> 1)


def world_spec(
    years: int = DEFAULT_YEARS,
    start_year: int = DEFAULT_START_YEAR,
    seed: int = DEFAULT_SEED,
    spinup_days: float = DEFAULT_SPINUP_DAYS,
    days: float | None = None,
    params: WorldParams | None = None,
) -> dict:
    """Everything that determines the store's content, as a JSON-safe dict."""
    params = params or WorldParams()
    return {
        "version": WORLD_VERSION,
        "years": years,
        "start_year": start_year,
        "seed": seed,
        "spinup_days": spinup_days,
        "days": days,
        "params": params.as_dict(),
    }


def spec_hash(spec: dict) -> str:
    """Short sha256 of the canonical JSON of a :func:`world_spec`."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _trajectory_times(years: int, start_year: int, days: float | None) -> list[pd.DatetimeIndex]:
    out = []
    for k in range(years):
        y0 = pd.Timestamp(f"{start_year + k}-01-01")
        y1 = pd.Timestamp(f"{start_year + k + 1}-01-01")
        if days is not None:
            y1 = min(y1, y0 + pd.Timedelta(days=days))
        out.append(pd.date_range(y0, y1, freq=f"{STEP_HOURS}h", inclusive="left"))
    return out


def simulate(
    years: int = DEFAULT_YEARS,
    start_year: int = DEFAULT_START_YEAR,
    seed: int = DEFAULT_SEED,
    spinup_days: float = DEFAULT_SPINUP_DAYS,
    days: float | None = None,
    params: WorldParams | None = None,
) -> xr.Dataset:
    """Run the world and return it in memory as an ``xarray.Dataset`` (store layout, latitude ascending).

    One trajectory per calendar year ``start_year + k``; ``days`` truncates each trajectory (tiny
    test worlds). Deterministic for a given machine: every random draw comes from generators seeded
    by :func:`trajectory_seed`.
    """
    p = params or WorldParams()
    with _single_thread():
        return _simulate(p, years, start_year, seed, spinup_days, days)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded: the solver's tensors are tiny, extra threads only spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _simulate(
    p: WorldParams, years: int, start_year: int, seed: int, spinup_days: float, days: float | None
) -> xr.Dataset:
    model = ShallowWaterModel(p)
    synth = PointSynthesis(OUT_LAT, len(OUT_LON), p.lmax, p.radius)
    times = _trajectory_times(years, start_year, days)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in times])])
    ntime = int(offsets[-1])
    steps_out = round(STEP_HOURS * 3600 / p.dt)
    if abs(steps_out * p.dt - STEP_HOURS * 3600) > 1e-9:
        raise UserError(f"model time step {p.dt} s does not divide {STEP_HOURS} h")
    nmax = max(len(t) for t in times)
    seeds = [trajectory_seed(seed, k) for k in range(years)]
    init_gen = [torch.Generator().manual_seed(s) for s in seeds]
    t_start = np.array([_seconds(np.datetime64(t[0])) for t in times]) - spinup_days * DAY
    spin_steps = round(spinup_days * DAY / p.dt)
    if abs(spin_steps * p.dt - spinup_days * DAY) > 1e-6:
        raise UserError(f"spin-up of {spinup_days} days is not a whole number of model steps")

    states = [model.initial_state(t_start[k : k + 1], init_gen[k]) for k in range(years)]
    s = torch.cat([st[0] for st in states])
    x = torch.cat([st[1] for st in states])
    tic = time.perf_counter()
    s, x, t = model.run(s, x, t_start, spin_steps)
    log.info("spin-up of %d trajectories x %.0f days: %.1f s", years, spinup_days, time.perf_counter() - tic)

    out = {v: np.empty((ntime, len(OUT_LAT), len(OUT_LON)), dtype=np.float32) for v in VARIABLES}
    phis = model.phis_spec
    lengths = np.array([len(tt) for tt in times])

    def write(k: int, st: torch.Tensor, tt: np.ndarray) -> None:
        z = synth.scalar(st[:, 2] + phis) + p.phi_bar
        vo = synth.scalar(st[:, 0])
        uv = synth.uv(st[:, :2])
        live = np.nonzero(lengths > k)[0]
        idx = offsets[live] + k
        for name, arr in (("z500", z), ("u500", uv[:, 0]), ("v500", uv[:, 1]), ("vo500", vo)):
            out[name][idx] = arr[live].numpy().astype(np.float32)

    write(0, s, t)
    tic = time.perf_counter()
    model.run(s, x, t, (nmax - 1) * steps_out, callback=write, every=steps_out)
    log.info("integration of %d trajectories x %d outputs: %.1f s", years, nmax, time.perf_counter() - tic)

    hs = synth.scalar(phis[None])[0].numpy() / p.gravity
    tcoord = np.concatenate([t.values for t in times]).astype("datetime64[ns]")
    data_vars: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]] = {
        name: (("time", "latitude", "longitude"), out[name], VARIABLES[name]) for name in VARIABLES
    }
    data_vars["orography"] = (
        ("latitude", "longitude"),
        hs.astype(np.float32),
        {
            "units": "m",
            "long_name": "surface height of the model orography (spectrally truncated)",
            "standard_name": "surface_altitude",
        },
    )
    spec = world_spec(years, start_year, seed, spinup_days, days, p)
    attrs = {
        "title": "wxens embedded world builtin:sphere-swe: forced-dissipative shallow water on the rotating sphere",
        "source": f"data_catalog.world ({WORLD_VERSION}); see docs/world.md",
        "world_version": WORLD_VERSION,
        "world_hash": spec_hash(spec),
        "world_spec": json.dumps(spec, sort_keys=True),
        "seed": seed,
        "trajectory_seeds": json.dumps(seeds),
        "trajectory_starts": json.dumps([str(t[0]) for t in times]),
        "note": "each calendar year is an independent trajectory (spun up for spinup_days); "
        "the last time of a year and the first of the next are not dynamically consecutive",
        "model_grid": f"Gaussian {p.nlat}x{p.nlon}, triangular truncation T{p.lmax - 1}, dt {p.dt:g} s",
        "output_grid": "WeatherBench2 64x32 equiangular without poles, exact spectral evaluation",
        "split_train": "/".join(SPLITS["train"]),
        "split_valid": "/".join(SPLITS["valid"]),
        "split_test": "/".join(SPLITS["test"]),
        "Conventions": "CF-1.8",
    }
    ds = xr.Dataset(
        data_vars,
        coords={
            "time": ("time", tcoord),
            "latitude": (
                "latitude",
                OUT_LAT.copy(),
                {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
            ),
            "longitude": (
                "longitude",
                OUT_LON.copy(),
                {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
            ),
        },
        attrs=attrs,
    )
    return ds


def build_world(
    path: str | os.PathLike,
    years: int = DEFAULT_YEARS,
    start_year: int = DEFAULT_START_YEAR,
    seed: int = DEFAULT_SEED,
    spinup_days: float = DEFAULT_SPINUP_DAYS,
    days: float | None = None,
    params: WorldParams | None = None,
) -> Path:
    """Simulate a world (see :func:`simulate`) and write it as a zarr v3 store at ``path``.

    The store is written to a sibling temporary folder and renamed to ``path`` when complete.
    Raises :class:`UserError` if ``path`` already exists.
    """
    path = Path(path)
    if path.exists():
        raise UserError(f"world store already exists: {path}")
    tic = time.perf_counter()
    write_world(simulate(years, start_year, seed, spinup_days, days, params), path)
    log.info("built world %s in %.1f s", path, time.perf_counter() - tic)
    return path


def write_world(ds: xr.Dataset, path: Path) -> None:
    """Write a simulated world as a zarr v3 store at ``path``: chunks of 120 times (30 days) x every
    level x the full grid, written to a sibling temporary folder and renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    encoding: dict[str, dict[str, Any]] = {
        str(v): {"chunks": (min(120, ds.sizes["time"]), *ds[v].shape[1:])}
        for v in ds.data_vars
        if "time" in ds[v].dims
    }
    encoding["time"] = {"units": "hours since 2000-01-01", "dtype": "int64"}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
        os.replace(tmp, path)  # atomic: the final name only ever points at a finished store
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished store: stores only appear under their final name by an atomic
    rename after the last byte is written, so existence of its root metadata means complete."""
    return (path / "zarr.json").is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_world(build: bool = True, **spec_kwargs) -> Path:
    """Path of the cached world with the given :func:`simulate` arguments, building it if needed.

    The store is ``cache_root() / f"{WORLD_VERSION}-{hash}.zarr"`` (see :func:`cached_store`).
    """
    spec = world_spec(**spec_kwargs)
    return cached_store(
        WORLD_VERSION, spec, lambda path: build_world(path, **spec_kwargs), build, "sphere-swe"
    )


def cached_store(
    version: str, spec: dict, builder: Callable[[Path], object], build: bool = True, name: str = "sphere-swe"
) -> Path:
    """``cache_root() / f"{version}-{spec_hash(spec)}.zarr"``, built by ``builder(path)`` if missing.

    Concurrent callers are safe: one builds under an exclusive ``fcntl`` lock, the others block on the
    lock and then reuse the finished store. With ``build=False`` a missing store raises
    :class:`UserError` (``name``: the ``builtin:`` name that builds it).
    """
    root = cache_root()
    path = root / f"{version}-{spec_hash(spec)}.zarr"
    if is_complete(path):
        return path
    if not build:
        raise UserError(f"world store {path} is not built yet (open builtin:{name} once to build it)")
    with _locked(root / f"{path.name}.lock"):
        if is_complete(path):
            return path
        if path.exists():  # an incomplete leftover under the final name (never written by us)
            shutil.rmtree(path)
        for stale in root.glob(f".{path.name}.tmp-*"):  # a builder that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        log.info("building the embedded world into %s (first use)", path)
        builder(path)
    return path


def world_store(build: bool = True) -> Path:
    """Path of the shipped world store ``builtin:sphere-swe``, building it on first use.

    Cached as ``$WXENS_CACHE/sphere-swe-v2-<hash>.zarr`` (default cache ``~/.cache/wxens``); safe
    when several processes call it at once (see :func:`cached_world`). With ``build=False`` a
    missing store raises :class:`UserError` instead of building.
    """
    return cached_world(build=build)


__all__ = [
    "WORLD_VERSION",
    "build_world",
    "cache_root",
    "cached_world",
    "is_complete",
    "simulate",
    "world_spec",
    "world_store",
]
