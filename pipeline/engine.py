"""``run_forecast``: plan the run, create the store once, compute this shard's work units, finish.

Run directory::

    config.json      the validated config (identity hash inside)
    plan.json        resolved plan (member block, layout, times, channels); its presence marks the store
                     as created (written last, atomically, under locks/_create.lock)
    units.json       names of all work units
    forecast.zarr/   the member store (pipeline.store)
    manifest/        one JSON per finished unit with sha256 of its files (pipeline.manifest)
    locks/           one O_EXCL lock per unit being computed
    inline/          per-unit inline-score partials and member spills, deleted as soon as their init
                     is final (inline/final/t<init>.npz); see pipeline.inline
    scores.zarr/     merged inline scores (written when every unit is done)
    COMPLETE         written when every unit is done and merged
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import platform
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from data_catalog.errors import UserError
from pipeline import manifest as mf
from pipeline.config import ForecastConfig, load_config
from pipeline.members import MemberLayout, WorkUnit, block_size_for, shard_units, work_units
from pipeline.perturbations import BredVectors, GaussianNoise, SphericalNoise
from pipeline.rollout import StochasticForcing, auto_batch_size, run_unit
from pipeline.sink import LeadSink, auto_threads
from pipeline.store import STORE_NAME, StoreWriter, create_store, encode

log = logging.getLogger(__name__)

#: analyses passed in memory to run_forecast, by run dir (inline finalize needs the truth again)
_ANALYSIS_CACHE: dict[str, xr.Dataset] = {}


# --------------------------------------------------------------------------------------------- inputs
def open_analysis(source: str | xr.Dataset) -> xr.Dataset:
    """The analysis as a canonical Dataset (latitude descending, longitude ascending)."""
    if isinstance(source, xr.Dataset):
        ds = source
    else:
        try:
            from data_catalog import open_reanalysis  # type: ignore[attr-defined]
        except ImportError:
            open_reanalysis = None
        if open_reanalysis is not None:  # catalog names, builtin:sphere-swe, paths; canonical form
            ds = open_reanalysis(source)
        elif Path(source).exists():  # pragma: no cover - before data_catalog had readers
            ds = xr.open_zarr(source, decode_timedelta=True)
        else:
            raise UserError(f"analysis not found: {source}")
    if "latitude" not in ds.dims or "longitude" not in ds.dims or "time" not in ds.dims:
        raise UserError("the analysis needs dims time, latitude, longitude")
    lat = ds["latitude"].values
    if lat.size > 1 and lat[0] < lat[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    lon = ds["longitude"].values
    if lon.size > 1 and np.any(np.diff(lon) < 0):
        ds = ds.assign_coords(longitude=lon % 360.0).sortby("longitude")
    return ds


def load_model(loader: str, path: str, device: torch.device) -> Any:
    """Load one checkpoint with ``loader`` (``"module:function"``) and move it to ``device``."""
    mod, _, fn = loader.partition(":")
    try:
        func = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise UserError(f"model loader {loader!r} not found") from None
    model = func(path)
    from models.base import ForecastModel

    if not isinstance(model, ForecastModel):
        raise UserError(f"checkpoint {path} did not load as a ForecastModel")
    return model.to(device)


def score_device(cfg: ForecastConfig, device: torch.device) -> torch.device | None:
    """Where the inline scores are reduced: the rollout's device when it is not the CPU and
    ``inline.on_device`` (the default), else None (NumPy on the CPU)."""
    return device if cfg.inline.on_device and device.type != "cpu" else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------------- plan
#: files up to this size enter :func:`checkpoint_digest` by content, larger ones by size and mtime
DIGEST_CONTENT_BYTES = 64 * 2**20


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over a checkpoint's files (a directory's top-level files, or the file itself): name and
    size, and the content of files up to ``DIGEST_CONTENT_BYTES`` (larger ones: their mtime). A run
    records it so that resuming with weights, skill or spectral filter changed underneath is refused:
    units computed before and after would come from different models."""
    import hashlib

    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0".encode())
        if st.st_size <= DIGEST_CONTENT_BYTES:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


@dataclass
class Plan:
    """Resolved, recorded run plan (``plan.json``)."""

    identity: str
    inits: np.ndarray
    checkpoints: list[str]
    channels: list[str]
    variables: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    step_hours: float
    lead_steps: int
    n_pairs: int
    block: int
    cycles: int
    #: :func:`checkpoint_digest` of each checkpoint when the run started (None: a run from before)
    checkpoint_digests: list[str] | None = None

    @property
    def layout(self) -> MemberLayout:
        return MemberLayout(len(self.checkpoints), self.n_pairs)

    @property
    def step(self) -> np.timedelta64:
        return np.timedelta64(int(round(self.step_hours * 3600)), "s")

    def units(self) -> list[WorkUnit]:
        return work_units(len(self.inits), self.layout, self.block)

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "inits": [str(t) for t in np.asarray(self.inits, "datetime64[s]")],
            "checkpoints": self.checkpoints,
            "channels": self.channels,
            "variables": self.variables,
            "latitude": self.latitude.tolist(),
            "longitude": self.longitude.tolist(),
            "step_hours": self.step_hours,
            "lead_steps": self.lead_steps,
            "n_pairs": self.n_pairs,
            "block": self.block,
            "cycles": self.cycles,
            "checkpoint_digests": self.checkpoint_digests,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["inits"] = np.array([np.datetime64(t, "ns") for t in d["inits"]])
        d["latitude"] = np.asarray(d["latitude"])
        d["longitude"] = np.asarray(d["longitude"])
        return cls(**d)


def _provenance() -> dict[str, Any]:
    import subprocess

    import zarr

    from wxens import __version__

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {
        "wxens_version": __version__,
        "git_commit": rev,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "xarray": xr.__version__,
        "zarr": zarr.__version__,
        "host": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _make_plan(cfg: ForecastConfig, ds: xr.Dataset, model0: Any, device: torch.device) -> Plan:
    channels = list(model0.channels)
    missing = [c for c in channels if c not in ds.data_vars]
    if missing:
        raise UserError(f"the analysis lacks channel(s) {', '.join(missing)} needed by the model")
    lat, lon = ds["latitude"].values, ds["longitude"].values
    if lat.shape != np.shape(model0.latitude) or not np.allclose(lat, model0.latitude, atol=1e-6):
        raise UserError("analysis latitudes differ from the model grid")
    if lon.shape != np.shape(model0.longitude) or not np.allclose(lon, model0.longitude, atol=1e-6):
        raise UserError("analysis longitudes differ from the model grid")
    variables = list(cfg.output.variables or channels)
    bad = [v for v in variables if v not in channels]
    if bad:
        raise UserError(f"output variable(s) {', '.join(bad)} are not model channels")
    if cfg.output.keep != "members":
        variables = []
    p = cfg.perturbation
    if p.method == "bred":
        unknown = [c for c in seed_channels(p) if c not in channels]
        if unknown:
            raise UserError(f"seed channel(s) {', '.join(map(repr, unknown))} are not model channels")
    n_pairs = 0 if p.method == "none" else p.n_pairs
    layout = MemberLayout(len(cfg.checkpoint_paths()), n_pairs)
    if cfg.batch_size == "auto":
        requested = auto_batch_size(len(channels), lat.size, lon.size, device, layout.per_checkpoint)
    else:
        requested = int(cfg.batch_size)
    block = block_size_for(requested, layout.per_checkpoint)
    if block != requested:
        log.info("member block %d (requested %d; must divide %d)", block, requested, layout.per_checkpoint)
    step_hours = model0.time_step.total_seconds() / 3600.0
    return Plan(
        identity=cfg.identity_hash(),
        inits=cfg.init_array(),
        checkpoints=cfg.checkpoint_paths(),
        channels=channels,
        variables=variables,
        latitude=np.asarray(lat, dtype=np.float64),
        longitude=np.asarray(lon, dtype=np.float64),
        step_hours=step_hours,
        lead_steps=cfg.lead_steps,
        n_pairs=n_pairs,
        block=block,
        cycles=p.cycles if p.method == "bred" else 0,
        checkpoint_digests=[checkpoint_digest(c) for c in cfg.checkpoint_paths()],
    )


def _create(cfg: ForecastConfig, run_dir: Path, ds: xr.Dataset, model0: Any, device: torch.device) -> Plan:
    plan = _make_plan(cfg, ds, model0, device)
    for init in plan.inits:  # before anything is written: a corrected config may reuse the run dir
        check_init_times(ds, plan, init)
    layout = plan.layout
    numbers = np.arange(layout.size)
    if cfg.output.members is not None:
        numbers = np.array(sorted(set(cfg.output.members)), dtype=np.int64)
        if numbers.size == 0 or numbers.min() < 0 or numbers.max() >= layout.size:
            raise UserError(f"output.members must lie in [0, {layout.size})")
        chunk = 1
    else:
        chunk = plan.block
    mc = layout.coords()
    member_coords = {k: mc[k][numbers] for k in ("checkpoint", "pair", "sign")}
    leads = np.arange(plan.lead_steps + 1) * plan.step
    var_attrs = {}
    for v in plan.variables:
        a = ds[v].attrs
        var_attrs[v] = {k: a[k] for k in ("units", "long_name", "standard_name") if k in a}
    if cfg.output.dtype == "float16":
        for v in plan.variables:
            mag = np.abs(ds[v].isel(time=0).values)
            peak, typical = float(mag.max()), float(np.median(mag))
            if peak > 0.5 * 65504.0 or typical < 6.1e-5:
                raise UserError(
                    f"float16 cannot hold {v} (|values| {typical:.3g} typical, {peak:.4g} max; normal range "
                    "6.1e-5..65504); use bfloat16, keepbits or float32"
                )
    store_path = Path(cfg.output.path) if cfg.output.path else run_dir / STORE_NAME
    attrs = {
        "Conventions": "CF-1.8",
        "title": "wxens ensemble forecast",
        "wxens_config": cfg.model_dump(mode="json"),
        "wxens_identity": plan.identity,
        "wxens_plan": plan.to_json(),
        "wxens_chunk_members": int(chunk),
        "wxens_dtype": cfg.output.dtype,
        "wxens_keepbits": cfg.output.keepbits,
        "wxens_variables": plan.variables,
        "wxens_member_numbering": "number = checkpoint * n_per_checkpoint + 2 * pair + (sign < 0)",
        "wxens_seed_derivation": "SeedSequence([seed, purpose, init_seconds + 2**40, checkpoint, pair])",
        "wxens_provenance": _provenance(),
    }
    create_store(
        store_path,
        times=plan.inits,
        numbers=numbers,
        member_coords=member_coords,
        leads=leads,
        latitude=plan.latitude,
        longitude=plan.longitude,
        variables=plan.variables,
        var_attrs=var_attrs,
        chunk_members=chunk,
        dtype=cfg.output.dtype,
        attrs=attrs,
        layout=cfg.output.layout,
        codec=cfg.output.codec,
    )
    if store_path != run_dir / STORE_NAME:
        (run_dir / "store_path").write_text(str(store_path))
    mf.atomic_write(run_dir / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=1))
    mf.atomic_write(run_dir / "units.json", json.dumps([u.name for u in plan.units()]))
    mf.atomic_write(run_dir / "plan.json", json.dumps(plan.to_json(), indent=1))
    return plan


def ensure_plan(
    cfg: ForecastConfig, run_dir: Path, ds: xr.Dataset, model0: Any, device: torch.device, wait_s: float = 600
) -> Plan:
    """Read ``plan.json`` or create the store and plan under ``locks/_create.lock``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + wait_s
    while True:
        plan_file = run_dir / "plan.json"
        if plan_file.is_file():
            plan = Plan.from_json(json.loads(plan_file.read_text()))
            if plan.identity != cfg.identity_hash():
                raise UserError(f"{run_dir} holds a run with a different config; use another --run-dir")
            if plan.checkpoint_digests is not None:
                for path, digest in zip(plan.checkpoints, plan.checkpoint_digests, strict=True):
                    if checkpoint_digest(path) != digest:
                        raise UserError(
                            f"checkpoint {path} changed since the run in {run_dir} started (its files differ); "
                            "restore it or use another --run-dir"
                        )
            return plan
        lock = mf.UnitLock(run_dir, "_create")
        if lock.acquire():
            try:
                if not plan_file.is_file():
                    return _create(cfg, run_dir, ds, model0, device)
            finally:
                lock.release()
            continue
        if time.time() > deadline:
            raise UserError(f"timed out waiting for another process to create {run_dir}")
        time.sleep(0.2)


def _store_path(run_dir: Path) -> Path:
    sp = run_dir / "store_path"
    return Path(sp.read_text()) if sp.is_file() else run_dir / STORE_NAME


# ------------------------------------------------------------------------------------------ execution
def seed_channels(p: Any) -> list[str]:
    """The breeding seed's channel(s) of a perturbation config, as a list."""
    return [p.seed_channel] if isinstance(p.seed_channel, str) else list(p.seed_channel)


def make_perturbation(cfg: ForecastConfig, plan: Plan, model: Any) -> Any:
    """The perturbation method of ``cfg`` for one checkpoint (amplitudes from its 48 h RMSE)."""
    p = cfg.perturbation
    if p.method == "none":
        return None
    if p.amplitude is not None:
        rmse = {c: v / p.alpha for c, v in p.amplitude.items()}
    elif hasattr(model, "rmse_at"):
        rmse = model.rmse_at(hours=48)
    else:
        raise UserError("the checkpoint has no 48 h skill; give perturbation.amplitude per channel")
    missing = [c for c in plan.channels if c not in rmse]
    if missing:
        raise UserError(f"no perturbation amplitude for channel(s) {', '.join(missing)}")
    amp = torch.tensor([p.alpha * float(rmse[c]) for c in plan.channels], dtype=torch.float32)
    if p.method == "gaussian":
        return GaussianNoise(amp)
    if p.method == "spherical":
        return SphericalNoise(amp, plan.latitude, plan.longitude, p.length_scale_km)
    return BredVectors(
        amp,
        plan.latitude,
        plan.longitude,
        seed_channel=[plan.channels.index(c) for c in seed_channels(p)],
        cycles=p.cycles,
        boundary=p.boundary,
        length_scale_km=p.length_scale_km,
        nonnegative=_nonneg(cfg, plan),
        noise_fraction=p.noise_fraction,
    )


def make_forcing(cfg: ForecastConfig, plan: Plan, model: Any) -> StochasticForcing | None:
    """Stochastic forcing of ``cfg`` for one checkpoint (RMS ``stochastic x`` its 6 h RMSE), or None."""
    p = cfg.perturbation
    if isinstance(p.stochastic, dict):
        unknown = sorted(set(p.stochastic) - set(plan.channels))
        if unknown:
            raise UserError(
                f"perturbation.stochastic names channel(s) the model does not have: {', '.join(unknown)}"
            )
        factors = [float(p.stochastic.get(c, 0.0)) for c in plan.channels]
    else:
        factors = [float(p.stochastic)] * len(plan.channels)
    if max(factors) <= 0:
        return None
    if not hasattr(model, "rmse_at"):
        raise UserError("perturbation.stochastic needs the checkpoint's 6 h skill (skill.json)")
    rmse = model.rmse_at(hours=6)
    missing = [c for c in plan.channels if c not in rmse]
    if missing:
        raise UserError(f"no 6 h skill for channel(s) {', '.join(missing)}")
    amp = torch.tensor(
        [f * float(rmse[c]) for f, c in zip(factors, plan.channels, strict=True)], dtype=torch.float64
    )
    step_hours = model.time_step.total_seconds() / 3600.0
    ramp: float | list[float]
    if isinstance(p.stochastic_ramp_hours, dict):
        unknown = sorted(set(p.stochastic_ramp_hours) - set(plan.channels))
        if unknown:
            raise UserError(
                "perturbation.stochastic_ramp_hours names channel(s) the model does not have: "
                + ", ".join(unknown)
            )
        ramp = [float(p.stochastic_ramp_hours.get(c, 0.0)) / step_hours for c in plan.channels]
    else:
        ramp = float(p.stochastic_ramp_hours) / step_hours
    schedule = None
    sch = p.stochastic_schedule
    if sch is not None:
        if isinstance(sch, dict):
            unknown = sorted(set(sch) - set(plan.channels))
            if unknown:
                raise UserError(
                    "perturbation.stochastic_schedule names channel(s) the model does not have: "
                    + ", ".join(unknown)
                )
        per = [sch.get(c, [(0.0, 1.0)]) if isinstance(sch, dict) else sch for c in plan.channels]
        schedule = [
            (
                np.array([h for h, _ in pts], dtype=np.float64) / step_hours,
                np.array([v for _, v in pts], dtype=np.float64),
            )
            for pts in per
        ]
        if not isinstance(sch, dict):
            schedule = schedule[:1]  # one schedule for every channel
    return StochasticForcing(amp, plan.latitude, plan.longitude, p.stochastic_length_km, ramp, schedule)


def _nonneg(cfg: ForecastConfig, plan: Plan) -> torch.Tensor | None:
    names = cfg.perturbation.nonnegative
    if not names:
        return None
    bad = [n for n in names if n not in plan.channels]
    if bad:
        raise UserError(f"nonnegative channel(s) {', '.join(bad)} are not model channels")
    return torch.tensor([c in names for c in plan.channels])


def check_init_times(ds: xr.Dataset, plan: Plan, init: np.datetime64) -> list[np.datetime64]:
    """The analysis times an init needs (``init - K dt, ..., init``); UserError if one is missing."""
    times = [init - (plan.cycles - k) * plan.step for k in range(plan.cycles + 1)]
    avail = ds["time"].values
    miss = [t for t in times if t not in avail]
    if miss:
        raise UserError(
            f"the analysis has no data at {np.datetime_as_string(miss[0], 'm')} (needed for init "
            f"{np.datetime_as_string(init, 'm')})"
        )
    return times


def analyses_for(
    ds: xr.Dataset, plan: Plan, init: np.datetime64, device: torch.device
) -> tuple[torch.Tensor, list]:
    """``(K + 1, C, lat, lon)`` analyses at ``init - K dt, ..., init``."""
    times = check_init_times(ds, plan, init)
    arr = _read(ds, plan.channels, times)
    finite = np.isfinite(arr)
    if not finite.all():  # a NaN initial condition would silently yield all-NaN members
        k, c = np.argwhere(~finite)[0][:2]
        raise UserError(
            f"the analysis has {int((~finite).sum())} NaN/infinite value(s) in the initial conditions of "
            f"init {np.datetime_as_string(init, 'm')} (first: {plan.channels[c]} at "
            f"{np.datetime_as_string(times[k], 'm')})"
        )
    return torch.from_numpy(arr).to(device), [np.asarray(t).astype("datetime64[ns]")[()] for t in times]


def _read(ds: xr.Dataset, channels: list[str], times: list) -> np.ndarray:
    """``(T, C, lat, lon)`` float32 of ``channels`` at ``times``, read in one dask computation."""
    da = ds[list(channels)].sel(time=times).to_array("channel").transpose("time", "channel", ...)
    return np.asarray(da.values, dtype=np.float32)


def truth_at(ds: xr.Dataset, plan: Plan, time: np.datetime64) -> np.ndarray | None:
    """``(C, lat, lon)`` analysis valid at ``time`` (None beyond the analysis)."""
    t = np.asarray(time).astype("datetime64[ns]")[()]
    if t not in ds["time"].values:
        return None
    return _read(ds, plan.channels, [t])[0]


#: verifying analyses of one init are read in one go when they fit in this many bytes
TRUTH_CACHE_BYTES = 256 * 2**20


class _Truth:
    """Verifying analyses of one init time: read once for all its units when small enough (one
    dask computation instead of one per lead and unit), else lead by lead."""

    def __init__(self, ds: xr.Dataset, plan: Plan) -> None:
        self.ds, self.plan = ds, plan
        self.init: np.datetime64 | None = None
        self.block: dict[int, np.ndarray] = {}

    def for_init(self, init: np.datetime64) -> Callable[[int], np.ndarray | None]:
        plan = self.plan
        size = (plan.lead_steps + 1) * len(plan.channels) * plan.latitude.size * plan.longitude.size * 4
        if size > TRUTH_CACHE_BYTES:
            return functools.partial(_truth_lead, self.ds, plan, init)
        if self.init is None or self.init != init:
            avail = self.ds["time"].values
            times = [
                np.asarray(init + k * plan.step).astype("datetime64[ns]")[()]
                for k in range(plan.lead_steps + 1)
            ]
            have = [k for k, t in enumerate(times) if t in avail]
            arr = _read(self.ds, plan.channels, [times[k] for k in have]) if have else None
            self.block = {k: arr[j] for j, k in enumerate(have)} if arr is not None else {}
            self.init = init
        return self.block.get

    def at_time(self, time: np.datetime64) -> np.ndarray | None:
        """``truth_at(time)``, from the block of the init read last when it holds ``time`` (the
        inline finalisation right after an init's last unit reads every lead again)."""
        return self.frozen()(time)

    def frozen(self) -> Callable[[np.datetime64], np.ndarray | None]:
        """:meth:`at_time` bound to the block held now: safe for a finalisation running on another
        thread while the rollout moves on to the next init (which replaces ``self.block``)."""
        init, block, ds, plan = self.init, self.block, self.ds, self.plan

        def at(time: np.datetime64) -> np.ndarray | None:
            if init is not None and block:
                dt = np.asarray(time).astype("datetime64[ns]") - np.asarray(init).astype("datetime64[ns]")
                k = dt / np.asarray(plan.step).astype("timedelta64[ns]")
                if float(k).is_integer() and int(k) in block:
                    return block[int(k)]
            return truth_at(ds, plan, time)

        return at


def _truth_lead(ds: xr.Dataset, plan: Plan, init: np.datetime64, lead: int) -> np.ndarray | None:
    return truth_at(ds, plan, init + lead * plan.step)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("members {task.fields[members]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("member-steps, {task.fields[rate]} /s"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def run_forecast(
    config: ForecastConfig | dict[str, Any] | str | Path,
    run_dir: str | Path,
    shard: tuple[int, int] = (0, 1),
    *,
    analysis: xr.Dataset | None = None,
) -> dict[str, Any]:
    """Run (or resume) this shard's work units of a forecast; returns a summary dict.

    Parameters
    ----------
    config
        A :class:`ForecastConfig`, a dict or a YAML path.
    run_dir
        Run directory (created); rerunning with the same config resumes, skipping finished units.
    shard
        ``(i, N)``: this process computes the contiguous i-th of N parts of the work units.
    analysis
        Optional in-memory analysis Dataset replacing ``config.analysis``.
    """
    from pipeline import inline as inl

    cfg = load_config(config)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    torch_threads = torch.get_num_threads()
    ds = open_analysis(analysis if analysis is not None else cfg.analysis)
    _ANALYSIS_CACHE[str(run_dir)] = ds
    paths = cfg.checkpoint_paths()
    plan_file = run_dir / "plan.json"
    model_cache: dict[int, Any] = {}
    if plan_file.is_file():
        plan = ensure_plan(cfg, run_dir, ds, None, device)
    else:
        model_cache[0] = load_model(cfg.model_loader, paths[0], device)
        plan = ensure_plan(cfg, run_dir, ds, model_cache[0], device)
    units = plan.units()
    mine = shard_units(units, shard)
    store_path = _store_path(run_dir)
    writer = StoreWriter(store_path)
    io_threads = auto_threads(len(writer.variables), device) if cfg.io_threads == "auto" else cfg.io_threads
    # manifest paths are relative to the run dir (absolute for a store outside it)
    prefix = str(store_path.relative_to(run_dir)) if store_path.is_relative_to(run_dir) else str(store_path)
    todo = [u for u in mine if not mf.is_done(run_dir, u.name, check=True)]
    log.info(
        "shard %d/%d: %d of %d units to compute (%d total; block %d, %d threads)",
        shard[0],
        shard[1],
        len(todo),
        len(mine),
        len(units),
        plan.block,
        torch_threads,
    )
    skipped: list[str] = []
    computed: list[str] = []
    nonfinite: dict[str, list[int]] = {}
    t0 = time.time()
    member_steps = 0
    layout = plan.layout
    truth = _Truth(ds, plan)
    init_names: dict[int, set[str]] = {}
    for u in units:
        init_names.setdefault(u.init, set()).add(u.name)
    with _progress(cfg.progress) as prog:
        task = prog.add_task(
            "forecast", total=len(todo) * plan.block * plan.lead_steps, members="0", rate="-"
        )
        cur_ckpt, model, pert, forcing = None, None, None, None
        done_members = 0
        # with cores to spare (io_threads > 0), an init's finalisation (merge, CRPS sort) runs on its
        # own thread while the rollout goes on with the next init
        fin_pool = ThreadPoolExecutor(1, thread_name_prefix="wxens-final") if io_threads > 0 else None
        fin_futs: list[Future] = []
        for unit in todo:
            lock = mf.UnitLock(run_dir, unit.name)
            if not lock.acquire():
                log.info("unit %s is locked by another process; skipping", unit.name)
                skipped.append(unit.name)
                continue
            try:
                if mf.is_done(run_dir, unit.name, check=True):
                    continue
                if unit.checkpoint != cur_ckpt:
                    model = model_cache.pop(unit.checkpoint, None) or load_model(
                        cfg.model_loader, plan.checkpoints[unit.checkpoint], device
                    )
                    model_cache.clear()
                    cur_ckpt = unit.checkpoint
                    pert = make_perturbation(cfg, plan, model)
                    forcing = make_forcing(cfg, plan, model)
                init = plan.inits[unit.init]
                analyses, times = analyses_for(ds, plan, init, device)
                members = unit.members(layout, plan.block)
                files: list[str] = []
                scorer = None
                # a unit recomputed after its init's scores were final (verify --delete) is not rescored
                if cfg.inline.enabled and not inl.is_final(run_dir, unit.init):
                    scorer = inl.UnitScorer(
                        run_dir,
                        cfg.inline,
                        plan,
                        unit,
                        members,
                        truth.for_init(init),
                        device=score_device(cfg, device),
                    )

                sink = LeadSink(
                    run_dir, writer, prefix, unit.init, members, plan.channels, scorer, io_threads
                )

                def on_step(n: int) -> None:
                    nonlocal member_steps
                    member_steps += n
                    rate = member_steps / max(time.time() - t0, 1e-9)
                    prog.update(task, advance=n, rate=f"{rate:.1f}")

                try:
                    first_bad = _roll_out(
                        cfg, plan, unit, model, pert, forcing, analyses, times, sink, on_step
                    )
                    sums = sink.drain()
                finally:
                    sink.close()
                files.extend(sums)
                if writer is not None:
                    nf = writer.write_nonfinite(unit.init, members, first_bad)
                    files.extend(f"{prefix}/{f}" for f in nf)
                transient = scorer.finish(first_bad) if scorer is not None else []
                if (first_bad >= 0).any():
                    nonfinite[unit.name] = members[first_bad >= 0].tolist()
                mf.record(
                    run_dir,
                    unit.name,
                    files,
                    {"nonfinite_members": nonfinite.get(unit.name, [])},
                    transient=transient,
                    released_by=inl.final_file(unit.init),
                    sums=sums,
                )
                computed.append(unit.name)
                done_members += len(members)
                prog.update(task, members=str(done_members))
            finally:
                lock.release()
            if scorer is not None and init_names[unit.init] <= mf.done_units(run_dir):
                # this init's last unit: merge its scores now and delete its partials and spills
                job = functools.partial(
                    inl.ensure_final,
                    run_dir,
                    cfg.inline,
                    plan,
                    unit.init,
                    truth.frozen(),
                    keep=cfg.output.keep,
                    wait=False,
                    device=score_device(cfg, device),
                )
                if fin_pool is None:
                    job()
                else:
                    fin_futs.append(fin_pool.submit(job))
        if fin_pool is not None:
            try:
                for f in fin_futs:
                    f.result()  # re-raises a finalisation's error
            finally:
                fin_pool.shutdown(wait=True)
    elapsed = time.time() - t0
    all_done = set(u.name for u in units) <= mf.done_units(run_dir)
    finalized = False
    if all_done:
        finalized = finalize(run_dir, cfg)
    summary = {
        "run_dir": str(run_dir),
        "shard": list(shard),
        "units_total": len(units),
        "units_shard": len(mine),
        "units_computed": len(computed),
        "units_skipped_locked": skipped,
        "nonfinite_members": sorted({m for v in nonfinite.values() for m in v}),
        "member_steps": member_steps,
        "seconds": elapsed,
        "member_steps_per_s": member_steps / elapsed if elapsed > 0 else float("nan"),
        "complete": (run_dir / "COMPLETE").is_file(),
        "finalized_here": finalized,
        "block": plan.block,
    }
    log.info(
        "shard %d/%d done: %d units computed, %.1f member-steps/s, complete=%s",
        shard[0],
        shard[1],
        len(computed),
        summary["member_steps_per_s"],
        summary["complete"],
    )
    return summary


def finalize(run_dir: Path, cfg: ForecastConfig) -> bool:
    """Once every unit is done: finalise the inline scores of the inits not final yet (waiting for
    another process finalising one), assemble ``scores.zarr`` and write ``COMPLETE`` (idempotent;
    one process, under ``locks/_finalize.lock``)."""
    from pipeline import inline as inl

    if (run_dir / "COMPLETE").is_file():
        return False
    lock = mf.UnitLock(run_dir, "_finalize")
    if not lock.acquire():
        return False
    try:
        if (run_dir / "COMPLETE").is_file():
            return False
        plan = Plan.from_json(json.loads((run_dir / "plan.json").read_text()))
        if cfg.inline.enabled:
            ds = _ANALYSIS_CACHE.get(str(run_dir))
            if ds is None:
                ds = open_analysis(cfg.analysis)
            try:
                dev = resolve_device(cfg.device)
            except UserError:  # finalised on a machine without the rollout's GPU: on the CPU
                dev = torch.device("cpu")
            inl.finalize(
                run_dir,
                cfg.inline,
                plan,
                lambda t: truth_at(ds, plan, t),
                keep=cfg.output.keep,
                device=score_device(cfg, dev),
            )
        # a process killed inside zarr's atomic chunk write leaves its temporary file behind (the chunk
        # itself is rewritten by whoever redoes the unit); every unit is done, so no writer is left
        stores = [Path(cfg.output.path) if cfg.output.path else run_dir / STORE_NAME, run_dir]
        removed = sum(remove_orphan_temp_files(p) for p in dict.fromkeys(stores) if p.exists())
        if removed:
            log.info("removed %d temporary chunk file(s) left by interrupted writers", removed)
        mf.atomic_write(run_dir / "COMPLETE", json.dumps({"time": time.time()}))
        return True
    finally:
        lock.release()


_ZARR_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_orphan_temp_files(root: Path) -> int:
    """Delete zarr's temporary chunk files (``<key>.<uuid hex>.partial``) under ``root``; their count."""
    n = 0
    for f in root.rglob("*.partial"):
        if f.is_file() and _ZARR_TEMP.search(f.name):
            f.unlink(missing_ok=True)
            n += 1
    return n


def _roll_out(
    cfg: ForecastConfig,
    plan: Plan,
    unit: WorkUnit,
    model: Any,
    pert: Any,
    forcing: StochasticForcing | None,
    analyses: torch.Tensor,
    times: Any,
    on_lead: Callable[[int, torch.Tensor], None],
    on_step: Callable[[int], None] | None = None,
) -> np.ndarray:
    """One work unit's block through :func:`pipeline.rollout.run_unit` with the run's settings (the
    engine and :func:`regenerate_members` share it, so a regenerated member is the stored one)."""
    return run_unit(
        model,
        pert,
        analyses,
        times,
        run_seed=cfg.seed,
        checkpoint=unit.checkpoint,
        pairs=unit.pairs(plan.block),
        lead_steps=plan.lead_steps,
        on_lead=on_lead,
        nonnegative=_nonneg(cfg, plan),
        bf16=cfg.bf16,
        on_step=on_step,
        forcing=forcing,
    )


def regenerate_members(
    run_dir: str | Path,
    members: list[int],
    *,
    analysis: xr.Dataset | None = None,
    device: str | None = None,
) -> xr.Dataset:
    """Recompute chosen members of a run alone (their whole member blocks, the run's batch
    composition) and return them encoded like the store: equal bitwise to the stored fields on the
    same device and thread count."""
    run_dir = Path(run_dir)
    cfg = load_config(json.loads((run_dir / "config.json").read_text()))
    plan = Plan.from_json(json.loads((run_dir / "plan.json").read_text()))
    dev = resolve_device(device or cfg.device)
    ds = open_analysis(analysis if analysis is not None else cfg.analysis)
    layout = plan.layout
    want = np.asarray(sorted(set(members)))
    ckpt, _, _ = layout.decompose(want)
    variables = plan.variables or plan.channels
    nl = plan.lead_steps + 1
    out = {
        v: np.full(
            (len(plan.inits), len(want), nl, plan.latitude.size, plan.longitude.size), np.nan, np.float32
        )
        for v in variables
    }
    for c in sorted(set(ckpt.tolist())):
        model = load_model(cfg.model_loader, plan.checkpoints[c], dev)
        pert = make_perturbation(cfg, plan, model)
        forcing = make_forcing(cfg, plan, model)
        blocks = sorted({(int(n) % layout.per_checkpoint) // plan.block for n in want[ckpt == c]})
        for i, init in enumerate(plan.inits):
            analyses, times = analyses_for(ds, plan, init, dev)
            for b in blocks:
                unit = WorkUnit(c, i, b)
                nums = unit.members(layout, plan.block)
                sel = [(j, int(np.flatnonzero(want == n)[0])) for j, n in enumerate(nums) if n in want]

                def on_lead(lead: int, x: torch.Tensor, _sel=sel, _i=i) -> None:
                    for v in variables:
                        enc = encode(x[:, plan.channels.index(v)], cfg.output.dtype, cfg.output.keepbits)
                        for j, k in _sel:
                            out[v][_i, k, lead] = enc[j]

                _roll_out(cfg, plan, unit, model, pert, forcing, analyses, times, on_lead)
    dims = ("time", "number", "prediction_timedelta", "latitude", "longitude")
    return xr.Dataset(
        {v: (dims, a) for v, a in out.items()},
        coords={
            "time": plan.inits,
            "number": want,
            "prediction_timedelta": np.arange(nl) * plan.step.astype("timedelta64[ns]"),
            "latitude": plan.latitude,
            "longitude": plan.longitude,
        },
    )
