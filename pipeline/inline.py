"""Inline scoring during the rollout, mergeable across member blocks and shards.

Design (member-block outer, per-lead partials, memory bounded by the batch): a work unit scores its
block lead by lead against the verifying analysis and, for each lead, immediately writes
``inline/<unit>/lead-<l>.npz`` holding an :class:`evaluation.metrics.EnsembleAccumulator` without
sorted members (count, mean and M2 for the Chan et al. 1979 merge, ``sum |x - y|``, best-member
error, members below/tied with the truth for the rank histogram), threshold-exceedance counts, the
summed member power spectra and the per-member area-weighted RMSE. The unit therefore holds one block
state plus a handful of single-lead fields, whatever the number of leads or members. The CRPS spread
term ``sum_{i<j} |x_i - x_j|`` has no fixed-size mergeable summary, so each unit also spills its
float32 members to ``inline/<unit>/spill.npy``, lead by lead with plain ``os.pwrite`` (page cache,
not process memory), laid out ``(lead, lat, member, channel, lon)`` so that the finalisation reads
one lead's latitude band of a unit as one contiguous range (``np.fromfile``): the process never maps
a spill, and its peak RSS does not grow with the number of members.

Spills and partials are transient: they exist only until their init's scores are final.
When the last unit of an init is done (whichever process or shard records it; else the run's final
step), :func:`finalize_init` merges one lead at a time the partials of the init's units (sums, Chan
merge) and the fair CRPS (Ferro 2014) per point from the spills, one latitude band at a time sized by
``inline.memory_mb``, in float64, into the init's slices of ``inline/scores.partial.zarr``; fsyncs them;
writes ``inline/final/t<init>.npz`` (area means, rank histograms, per-member errors) atomically, the
marker that the init is final; and only then deletes ``inline/<unit>/`` of the init. Peak memory: a
few ``C x lat x lon`` fields plus ``M x C x band x lon`` float64 values (``inline.memory_mb``). The
manifest lists partials and spills as ``transient`` files released by that marker, so a restart after
finalisation neither needs nor recomputes them, and one before it finds them checksummed. When every init is final,
:func:`finalize` stacks the markers' small arrays into the partial store and renames it to
``scores.zarr``. A kill at any moment leaves either the spills (finalisation redone) or the marker
(leftovers deleted on restart). After a complete run ``inline/`` holds only the markers (kilobytes to
megabytes; scores-sized, never member-sized). Results equal the offline evaluation of the same members
up to float rounding (tests/pipeline/test_inline.py). To keep the members, store them
(``output.keep: members``): the spills are the same float32 values.

Transient disk: an init's spills live from its first unit to its last. Units run checkpoint-major,
so with one process nearly all spills of a run coexist before the first init is final; to bound the
disk of a huge run, run it a few init times at a time (separate run dirs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from pipeline import seeds
from pipeline.manifest import UnitLock, atomic_write, fsync_dir, fsync_file
from pipeline.perturbations.sphere import legendre_table

log = logging.getLogger(__name__)

INLINE = "inline"
SCORES = "scores.zarr"
FINAL = f"{INLINE}/final"
PARTIAL = f"{INLINE}/scores.partial.zarr"
PARTIAL_OK = f"{INLINE}/scores.partial.ok"
_ACC_FIELDS = ("count", "mean", "m2", "abs_err_sum", "min_abs_err", "n_less", "n_equal")


def power_spectrum(x: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Angular power spectrum ``P(l)`` of fields ``(..., lat, lon)`` (``sum_l P(l)`` = area mean of ``f^2``).

    Uses :func:`evaluation.spectra.power_spectrum`; a plain quadrature fallback (cell-bound weights)
    is kept for installations without it.
    """
    ev_ps: Any
    try:
        from evaluation.spectra import power_spectrum as ev_ps
    except ImportError:  # pragma: no cover
        ev_ps = None
    if ev_ps is not None:
        return np.asarray(ev_ps(np.asarray(x, dtype=np.float64), latitude).power)
    lat = np.asarray(latitude, dtype=np.float64)  # pragma: no cover
    nlat, nlon = x.shape[-2], x.shape[-1]
    lmax, mmax = nlat - 1, min(nlat - 1, nlon // 2)
    p = legendre_table(tuple(lat.tolist()), lmax, mmax)
    dmu = area_weights(lat) * 2.0 / nlat
    fm = np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1)[..., : mmax + 1] * (2 * np.pi / nlon)
    alm = np.einsum("...km,mlk,k->...lm", fm, p, dmu)
    w = np.full(mmax + 1, 2.0)
    w[0] = 1.0
    return np.einsum("...lm,m->...l", np.abs(alm) ** 2, w) / (4 * np.pi)


def _lead_file(unit_name: str, lead: int) -> str:
    return f"{INLINE}/{unit_name}/lead-{lead:04d}.npz"


def _spill_file(unit_name: str) -> str:
    return f"{INLINE}/{unit_name}/spill.npy"


def final_file(init: int) -> str:
    """The marker (and area-mean scores) of a finalised init, relative to the run dir."""
    return f"{FINAL}/t{init:05d}.npz"


def is_final(run_dir: Path, init: int) -> bool:
    return (Path(run_dir) / final_file(init)).is_file()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _spill_shape(n_members: int, plan: Any) -> tuple[int, ...]:
    """Layout of a unit's spill: ``(lead, lat, member, channel, lon)``, so that one lead's latitude
    band of every member is one contiguous range of the file."""
    return (plan.lead_steps + 1, plan.latitude.size, n_members, len(plan.channels), plan.longitude.size)


class _SpillWriter:
    """A unit's float32 members in an ``.npy`` file (:func:`_spill_shape`), written lead by lead with
    ``os.pwrite``: plain file writes, so the pages are page cache, not the process's memory (a
    writable memory map would count every written page in the process RSS until unmapped)."""

    def __init__(self, path: Path, n_members: int, plan: Any) -> None:
        self.shape = _spill_shape(n_members, plan)
        self.lead_bytes = int(np.prod(self.shape[1:])) * 4
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(os.dup(self.fd), "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(f, {**header, "shape": self.shape})
            self.offset = f.tell()
        os.ftruncate(self.fd, self.offset + self.shape[0] * self.lead_bytes)  # leads not written read 0

    def write_lead(self, lead: int, xs: np.ndarray) -> None:
        """Members ``(member, channel, lat, lon)`` of one lead."""
        block = np.ascontiguousarray(xs.astype(np.float32, copy=False).transpose(2, 0, 1, 3))
        buf = block.data.cast("B")
        assert buf.nbytes == self.lead_bytes, (buf.nbytes, self.lead_bytes)
        pos, off = 0, self.offset + lead * self.lead_bytes
        while pos < buf.nbytes:
            pos += os.pwrite(self.fd, buf[pos:], off + pos)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


class _SpillReader:
    """Reads latitude bands of one lead of a unit's spill (``np.fromfile``: memory of the band only)."""

    def __init__(self, path: Path, n_members: int, plan: Any) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        self.shape = _spill_shape(n_members, plan)
        if tuple(shape) != self.shape or fortran or dtype != np.float32:
            raise UserError(
                f"{path}: member spill of shape {tuple(shape)}, this version of wxens reads {self.shape} "
                "(lead, lat, member, channel, lon): finish the run with the version that started it, "
                "or rerun it in a new run directory"
            )
        self.dtype = dtype
        self.row = int(np.prod(self.shape[2:]))  # values per latitude row of one lead

    def band(self, lead: int, r0: int, r1: int) -> np.ndarray:
        """``(member, channel, r1 - r0, lon)`` float32 view of rows ``r0:r1`` of ``lead``."""
        n = (r1 - r0) * self.row
        off = self.offset + (lead * self.shape[1] + r0) * self.row * self.dtype.itemsize
        a = np.fromfile(self.path, dtype=self.dtype, count=n, offset=off)
        if a.size != n:
            raise UserError(
                f"{self.path}: member spill truncated (lead {lead}); run `wxens verify RUN_DIR --delete` and the forecast again"
            )
        return a.reshape(r1 - r0, *self.shape[2:]).transpose(1, 2, 0, 3)


class UnitScorer:
    """Scores one work unit lead by lead, writing one mergeable partial per lead.

    ``device`` None reduces on the CPU with NumPy; a torch device (the rollout's GPU) reduces there,
    in float64, and copies only the members (for the spill) and the unit's small partials to the host:
    the same statistics to float64 rounding (tests/pipeline/test_inline.py)."""

    def __init__(
        self,
        run_dir: Path,
        icfg: Any,
        plan: Any,
        unit: Any,
        members: np.ndarray,
        truth: Callable[[int], np.ndarray | None],
        device: torch.device | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.icfg = icfg
        self.plan = plan
        self.unit = unit
        self.members = members
        self.truth = truth
        self.device = device
        self.w = area_weights(plan.latitude)
        self.files: list[str] = []
        d = self.run_dir / INLINE / unit.name
        shutil.rmtree(d, ignore_errors=True)  # leftovers of a killed attempt
        d.mkdir(parents=True)
        self.spill: _SpillWriter | None = (
            _SpillWriter(self.run_dir / _spill_file(unit.name), len(members), plan) if icfg.crps else None
        )

    def on_lead(self, lead: int, x: torch.Tensor) -> None:
        if self.device is not None:
            arrays = self._reduce_torch(lead, x.detach().to(self.device))
        else:
            arrays = self._reduce_numpy(lead, x.detach().float().cpu().numpy())
        if arrays is None:
            return
        rel = _lead_file(self.unit.name, lead)
        _save_npz(self.run_dir / rel, arrays)
        self.files.append(rel)

    def _reduce_numpy(self, lead: int, xs: np.ndarray) -> dict[str, np.ndarray] | None:
        from evaluation.metrics import EnsembleAccumulator

        fin = np.isfinite(xs).reshape(xs.shape[0], -1).all(axis=1)
        xs = np.where(fin[:, None, None, None], xs, np.nan).astype(np.float32)
        if self.spill is not None:
            self.spill.write_lead(lead, xs)
        y = self.truth(lead)
        if y is None:
            return None
        acc = EnsembleAccumulator.from_members(xs, y, member_axis=0, keep_sorted=False)
        arrays = {f"acc_{k}": np.asarray(getattr(acc, k), dtype=np.float64) for k in _ACC_FIELDS}
        for c, thr in self.icfg.thresholds.items():
            ci = self.plan.channels.index(c)
            t = np.asarray(thr, dtype=np.float64)[:, None, None, None]
            arrays[f"exceed_{c}"] = (
                ((xs[None, :, ci] > t) & fin[None, :, None, None]).sum(axis=1).astype(np.int32)
            )
        if self.icfg.spectra:
            ps = power_spectrum(xs[fin], self.plan.latitude) if fin.any() else None
            if ps is not None:
                arrays["spec"] = ps.sum(axis=0)
        err = (xs.astype(np.float64) - y[None]) ** 2
        arrays["member_rmse"] = np.sqrt((err.mean(-1) * self.w).mean(-1))  # (B, C)
        return arrays

    def _reduce_torch(self, lead: int, x: torch.Tensor) -> dict[str, np.ndarray] | None:
        """:meth:`_reduce_numpy` on ``x``'s device: only the members and the partials cross to the host."""
        from evaluation.metrics import EnsembleAccumulator
        from evaluation.spectra import power_spectrum as ev_ps

        xs = x.float()
        fin = torch.isfinite(xs).flatten(1).all(dim=1)
        xs = torch.where(fin[:, None, None, None], xs, float("nan"))
        if self.spill is not None:
            self.spill.write_lead(lead, xs.cpu().numpy())
        y_np = self.truth(lead)
        if y_np is None:
            return None
        y = torch.as_tensor(np.asarray(y_np, dtype=np.float64), device=xs.device)
        out: dict[str, torch.Tensor] = {}
        acc = EnsembleAccumulator.from_members(xs, y, member_axis=0, keep_sorted=False)
        for k in _ACC_FIELDS:
            out[f"acc_{k}"] = getattr(acc, k)
        for c, thr in self.icfg.thresholds.items():
            ci = self.plan.channels.index(c)
            t = torch.as_tensor(thr, dtype=torch.float64, device=xs.device)[:, None, None, None]
            out[f"exceed_{c}"] = ((xs[None, :, ci] > t) & fin[None, :, None, None]).sum(dim=1).to(torch.int32)
        good = xs[fin].double()
        if self.icfg.spectra and good.shape[0] > 0:
            out["spec"] = ev_ps(good, self.plan.latitude).power.sum(dim=0)
        err = (xs.double() - y[None]) ** 2
        w = torch.as_tensor(self.w, dtype=torch.float64, device=xs.device)
        out["member_rmse"] = torch.sqrt((err.mean(-1) * w).mean(-1))  # (B, C)
        arrays = {k: v.cpu().numpy() for k, v in out.items()}
        return {
            k: v if k.startswith("exceed_") else v.astype(np.float64, copy=False) for k, v in arrays.items()
        }

    def finish(self, first_bad: np.ndarray) -> list[str]:
        """Flush the spill; returns the unit's inline files (relative to the run dir)."""
        files = list(self.files)
        if self.spill is not None:
            self.spill.close()
            self.spill = None
            files.append(_spill_file(self.unit.name))
        return files


def _merge(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chan et al. (1979) merge of count/mean/M2, sums of the rest, min of the best-member error."""
    if a is None:
        return {k: v.copy() for k, v in b.items()}
    na, nb = a["count"], b["count"]
    n = na + nb
    nz = np.where(n > 0, n, 1.0)
    delta = b["mean"] - a["mean"]
    best = np.where(na > 0, np.minimum(a["min_abs_err"], b["min_abs_err"]), b["min_abs_err"])
    return {
        "count": n,
        "mean": a["mean"] + delta * nb / nz,
        "m2": a["m2"] + b["m2"] + delta * delta * na * nb / nz,
        "abs_err_sum": a["abs_err_sum"] + b["abs_err_sum"],
        "min_abs_err": np.where(nb > 0, best, a["min_abs_err"]),
        "n_less": a["n_less"] + b["n_less"],
        "n_equal": a["n_equal"] + b["n_equal"],
    }


def _band_rows(n_members: int, nc: int, nx: int, memory_mb: float) -> int:
    per_row = max(1, n_members * nc * nx * 8 * 4)  # float64 member values + sort/work copies
    return int(max(1, memory_mb * 1e6 // per_row))


def _template(path: Path, plan: Any, icfg: Any, keep: str, nd: int) -> None:
    """Create the scores store (metadata and coordinates only)."""
    import dask.array as da

    nt, nl, nc = len(plan.inits), plan.lead_steps + 1, len(plan.channels)
    ny, nx, nm = plan.latitude.size, plan.longitude.size, plan.layout.size
    d5 = ("time", "prediction_timedelta", "channel", "latitude", "longitude")
    c5 = (1, 1, nc, ny, nx)
    fields = ["variance", "crps", "best_member_abs_error"] + (["ensemble_mean"] if keep != "none" else [])
    data: dict[str, Any] = {
        f: (d5, da.full((nt, nl, nc, ny, nx), np.nan, chunks=c5, dtype=np.float32)) for f in fields
    }
    small = {
        "n_members": (("time", "prediction_timedelta"), np.int64, (nt, nl)),
        "rank_histogram": (
            ("time", "prediction_timedelta", "channel", "rank"),
            np.int64,
            (nt, nl, nc, nm + 1),
        ),
        "member_rmse": (("time", "number", "prediction_timedelta", "channel"), np.float64, (nt, nm, nl, nc)),
        "crps_global": (("time", "prediction_timedelta", "channel"), np.float64, (nt, nl, nc)),
        "crps_between_checkpoints_global": (
            ("time", "prediction_timedelta", "channel"),
            np.float64,
            (nt, nl, nc),
        ),
        "ensemble_mean_rmse": (("time", "prediction_timedelta", "channel"), np.float64, (nt, nl, nc)),
        "spread": (("time", "prediction_timedelta", "channel"), np.float64, (nt, nl, nc)),
        "spread_skill_ratio": (("time", "prediction_timedelta", "channel"), np.float64, (nt, nl, nc)),
    }
    if icfg.spectra:
        for k in ("power_spectrum_members", "power_spectrum_mean"):
            small[k] = (
                ("time", "prediction_timedelta", "channel", "wavenumber"),
                np.float64,
                (nt, nl, nc, nd),
            )
    for name, (dims, dt, shape) in small.items():
        data[name] = (dims, da.zeros(shape, chunks=shape, dtype=dt))
    for c, t in icfg.thresholds.items():
        dims = ("time", "prediction_timedelta", f"threshold_{c}", "latitude", "longitude")
        shape = (nt, nl, len(t), ny, nx)
        data[f"exceedance_probability_{c}"] = (
            dims,
            da.full(shape, np.nan, chunks=(1, 1, len(t), ny, nx), dtype=np.float32),
        )
    coords: dict[str, Any] = {
        "time": np.asarray(plan.inits, "datetime64[ns]"),
        "prediction_timedelta": np.arange(nl) * plan.step.astype("timedelta64[ns]"),
        "channel": np.array(plan.channels, dtype=object),
        "latitude": plan.latitude,
        "longitude": plan.longitude,
        "number": np.arange(nm),
        "rank": np.arange(nm + 1),
        "wavenumber": np.arange(nd),
    }
    for c, t in icfg.thresholds.items():
        coords[f"threshold_{c}"] = np.asarray(t, np.float64)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {
        "title": "wxens inline ensemble scores",
        "crps": "fair CRPS (Ferro 2014), per point",
        "crps_between_checkpoints_global": "area mean of the fair CRPS with its spread term over pairs of "
        "members of different checkpoints (evaluation.metrics.crps_between_groups); NaN with one checkpoint",
        "spread_skill_ratio": "sqrt((M+1)/M) spread / RMSE of the ensemble mean (Fortin et al. 2014)",
        "wxens_plan": json.dumps(plan.to_json()),
    }
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=True)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (after the writes of one init, before its marker)."""
    for p in sorted(path.rglob("*")):
        (fsync_dir if p.is_dir() else fsync_file)(p)
    fsync_dir(path)


def _save_durable(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` atomically and durably (tmp, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _n_wavenumbers(plan: Any, icfg: Any) -> int:
    if not icfg.spectra:
        return 0
    return power_spectrum(np.zeros((plan.latitude.size, plan.longitude.size)), plan.latitude).shape[-1]


def _ensure_template(run_dir: Path, plan: Any, icfg: Any, keep: str) -> None:
    """Create ``inline/scores.partial.zarr`` once (metadata only), under a lock; ``.ok`` marks it done."""
    ok = run_dir / PARTIAL_OK
    while not ok.is_file():
        lock = UnitLock(run_dir, "_scores_template")
        if lock.acquire():
            try:
                if not ok.is_file():
                    shutil.rmtree(run_dir / PARTIAL, ignore_errors=True)  # a killed creation
                    _template(run_dir / PARTIAL, plan, icfg, keep, _n_wavenumbers(plan, icfg))
                    _fsync_tree(run_dir / PARTIAL)
                    atomic_write(ok, "ok")
            finally:
                lock.release()
        else:
            time.sleep(0.1)


def _remove_unit_dirs(run_dir: Path, plan: Any, init: int) -> None:
    """Delete the partials and member spills of one finalised init (idempotent)."""
    for u in plan.units():
        if u.init == init:
            shutil.rmtree(run_dir / INLINE / u.name, ignore_errors=True)


def finalize_init(
    run_dir: Path,
    icfg: Any,
    plan: Any,
    i: int,
    truth: Callable[[np.datetime64], np.ndarray | None],
    keep: str = "members",
    device: torch.device | None = None,
) -> Path:
    """Merge the partials of every unit of init ``i`` (all done) into its slices of
    ``inline/scores.partial.zarr`` one lead at a time, write ``inline/final/t<i>.npz`` (the area means,
    rank histograms and per-member errors, atomically: its presence marks the init final) and then
    delete the init's partials and spills. Not locked here: see :func:`ensure_final`. ``device``: where
    the per-point CRPS sorts the members (None: NumPy on the CPU; a GPU: each band's float32 members
    are copied there and scored in float64)."""
    from evaluation.metrics import crps_between_groups, crps_ensemble

    run_dir = Path(run_dir)
    _ensure_template(run_dir, plan, icfg, keep)
    mine = [u for u in plan.units() if u.init == i]
    nl, nc = plan.lead_steps + 1, len(plan.channels)
    ny, nx, nm = plan.latitude.size, plan.longitude.size, plan.layout.size
    nd = _n_wavenumbers(plan, icfg)
    w = area_weights(plan.latitude)
    g: Any = zarr.open_group(str(run_dir / PARTIAL), mode="r+")
    count = np.zeros(nl, np.int64)
    rank_hist = np.zeros((nl, nc, nm + 1), np.int64)
    member_rmse = np.full((nm, nl, nc), np.nan)
    crps_g = np.full((nl, nc), np.nan)
    crps_between_g = np.full((nl, nc), np.nan)
    mse = np.full((nl, nc), np.nan)
    spread = np.full((nl, nc), np.nan)
    spec_m = np.full((nl, nc, nd), np.nan)
    spec_mean = np.full((nl, nc, nd), np.nan)
    rows = _band_rows(nm, nc, nx, icfg.memory_mb)

    def amean(a: np.ndarray) -> np.ndarray:
        return (np.asarray(a, np.float64).mean(-1) * w).mean(-1)

    rng = np.random.default_rng(seeds.derive_seed(0, plan.inits[i], 0, 0, seeds.PURPOSE_RANK_TIES))
    spills = (
        [
            _SpillReader(run_dir / _spill_file(u.name), len(u.members(plan.layout, plan.block)), plan)
            for u in mine
        ]
        if icfg.crps
        else []
    )
    # checkpoint of each spilled member, in the band's member order (spills of the init's units)
    labels = (
        np.concatenate([np.full(sp.shape[2], u.checkpoint) for u, sp in zip(mine, spills, strict=True)])
        if spills
        else np.zeros(0, np.int64)
    )
    between = len(np.unique(labels)) > 1
    for lead in range(nl):
        y = truth(plan.inits[i] + lead * plan.step)
        if y is None or not all((run_dir / _lead_file(u.name, lead)).is_file() for u in mine):
            continue
        acc = None
        spec = None
        exc: dict[str, np.ndarray] = {}
        for u in mine:
            with np.load(run_dir / _lead_file(u.name, lead)) as z:
                acc = _merge(acc, {k: z[f"acc_{k}"] for k in _ACC_FIELDS})
                if "spec" in z:
                    spec = z["spec"] if spec is None else spec + z["spec"]
                for c in icfg.thresholds:
                    exc[c] = z[f"exceed_{c}"] if c not in exc else exc[c] + z[f"exceed_{c}"]
                member_rmse[u.members(plan.layout, plan.block), lead] = z["member_rmse"]
        assert acc is not None
        n = acc["count"]
        m = int(n.max())
        count[lead] = m
        mean = np.where(n > 0, acc["mean"], np.nan)
        var = np.where(n > 1, acc["m2"] / np.where(n > 1, n - 1, 1), np.nan)
        if keep != "none":
            g["ensemble_mean"][i, lead] = mean.astype(np.float32)
        g["variance"][i, lead] = var.astype(np.float32)
        g["best_member_abs_error"][i, lead] = np.where(n > 0, acc["min_abs_err"], np.nan).astype(np.float32)
        u_ = rng.random(n.shape)
        rank = (acc["n_less"] + np.floor(u_ * (acc["n_equal"] + 1))).astype(np.int64)
        for c in range(nc):
            ok = n[c] == m
            rank_hist[lead, c] = np.bincount(rank[c][ok], minlength=nm + 1)[: nm + 1]
        mse[lead] = amean((mean - y) ** 2)
        spread[lead] = np.sqrt(amean(var))
        if spec is not None and m > 0:
            spec_m[lead] = spec / m
            spec_mean[lead] = power_spectrum(np.nan_to_num(mean), plan.latitude)
        for c in icfg.thresholds:
            ci = plan.channels.index(c)
            g[f"exceedance_probability_{c}"][i, lead] = (exc[c] / np.where(n[ci] > 0, n[ci], np.nan)).astype(
                np.float32
            )
        if icfg.crps:
            crps = np.full((nc, ny, nx), np.nan)
            crps_b = np.full((nc, ny, nx), np.nan)
            for r0 in range(0, ny, rows):
                r1 = min(ny, r0 + rows)
                # the init's members of one band, C order, scored in float64 (differences of large
                # values: z500); a device gets the float32 members (half the bytes) and converts there
                dt = np.float64 if device is None else np.float32
                band = np.empty((sum(sp.shape[2] for sp in spills), nc, r1 - r0, nx), dt)
                m0 = 0
                for sp in spills:
                    band[m0 : m0 + sp.shape[2]] = sp.band(lead, r0, r1)
                    m0 += sp.shape[2]
                yb = y[:, r0 : r0 + rows].astype(np.float64)
                if device is None:
                    crps[:, r0 : r0 + rows] = crps_ensemble(band, yb, member_axis=0, fair=True)
                    if between:
                        crps_b[:, r0 : r0 + rows] = crps_between_groups(band, yb, labels, member_axis=0)
                else:
                    bt = torch.from_numpy(band).to(device).double()
                    yt = torch.from_numpy(yb).to(device)
                    crps[:, r0 : r0 + rows] = crps_ensemble(bt, yt, member_axis=0, fair=True).cpu().numpy()
                    if between:
                        crps_b[:, r0 : r0 + rows] = (
                            crps_between_groups(bt, yt, labels, member_axis=0).cpu().numpy()
                        )
            g["crps"][i, lead] = crps.astype(np.float32)
            crps_g[lead] = amean(crps)
            crps_between_g[lead] = amean(crps_b)
    # the init's chunks reach the disk before the marker that lets its spills go
    for arr in (run_dir / PARTIAL).iterdir():
        if (arr / "c" / str(i)).is_dir():
            _fsync_tree(arr / "c" / str(i))
    out = run_dir / final_file(i)
    _save_durable(
        out,
        {
            "count": count,
            "rank_histogram": rank_hist,
            "member_rmse": member_rmse,
            "crps_global": crps_g,
            "crps_between_checkpoints_global": crps_between_g,
            "mse": mse,
            "spread": spread,
            "power_spectrum_members": spec_m,
            "power_spectrum_mean": spec_mean,
        },
    )
    _remove_unit_dirs(run_dir, plan, i)
    log.info("inline scores of init %d final; its partials and member spills deleted", i)
    return out


def ensure_final(
    run_dir: Path,
    icfg: Any,
    plan: Any,
    i: int,
    truth: Callable[[np.datetime64], np.ndarray | None],
    keep: str = "members",
    wait: bool = True,
    device: torch.device | None = None,
) -> bool:
    """Finalise init ``i`` (every unit of it done) unless it is final already, under
    ``locks/_final-t<i>.lock``; another process holding the lock is waited for (``wait``) or left
    to it. Cleans the leftovers of a process killed after the marker. True when ``i`` is final."""
    run_dir = Path(run_dir)
    while not is_final(run_dir, i):
        lock = UnitLock(run_dir, f"_final-t{i:05d}")
        if lock.acquire():
            try:
                if not is_final(run_dir, i):
                    finalize_init(run_dir, icfg, plan, i, truth, keep, device)
            finally:
                lock.release()
        elif not wait:
            return False
        else:
            time.sleep(0.2)
    _remove_unit_dirs(run_dir, plan, i)
    return True


def finalize(
    run_dir: Path,
    icfg: Any,
    plan: Any,
    truth: Callable[[np.datetime64], np.ndarray | None],
    keep: str = "members",
    device: torch.device | None = None,
) -> Path:
    """Finalise every init not final yet (:func:`ensure_final`), then write the stacked area means,
    rank histograms and per-member errors into ``inline/scores.partial.zarr`` and rename it to
    ``scores.zarr``. Idempotent: once renamed, a rerun only checks that ``scores.zarr`` exists."""
    run_dir = Path(run_dir)
    nt = len(plan.inits)
    for i in range(nt):
        ensure_final(run_dir, icfg, plan, i, truth, keep, device=device)
    final = run_dir / SCORES
    partial = run_dir / PARTIAL
    if partial.is_dir():
        parts = []
        for i in range(nt):
            with np.load(run_dir / final_file(i)) as z:
                parts.append({k: z[k] for k in z.files})
        st = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
        mcount = st["count"][..., None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # lead 0 of a control: 0 / 0
            ssr = (
                np.sqrt((mcount + 1) / np.where(mcount > 0, mcount, np.nan))
                * st["spread"]
                / np.sqrt(st["mse"])
            )
        g: Any = zarr.open_group(str(partial), mode="r+")
        g["n_members"][...] = st["count"]
        g["rank_histogram"][...] = st["rank_histogram"]
        g["member_rmse"][...] = st["member_rmse"]
        g["crps_global"][...] = st["crps_global"]
        if "crps_between_checkpoints_global" in st and "crps_between_checkpoints_global" in g:
            g["crps_between_checkpoints_global"][...] = st["crps_between_checkpoints_global"]
        g["ensemble_mean_rmse"][...] = np.sqrt(st["mse"])
        g["spread"][...] = st["spread"]
        g["spread_skill_ratio"][...] = ssr
        if icfg.spectra:
            g["power_spectrum_members"][...] = st["power_spectrum_members"]
            g["power_spectrum_mean"][...] = st["power_spectrum_mean"]
        _fsync_tree(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        fsync_dir(run_dir)
    elif not final.is_dir():
        raise UserError(
            f"{run_dir}: every init is final but neither {SCORES} nor {PARTIAL} exists (deleted by hand?); "
            "the member spills are gone, so rerun the forecast in a new run directory"
        )
    (run_dir / PARTIAL_OK).unlink(missing_ok=True)
    atomic_write(run_dir / INLINE / "MERGED", "ok")
    return final


def open_scores(run_dir: str | Path) -> xr.Dataset:
    """Open a run's merged inline scores lazily."""
    return xr.open_zarr(Path(run_dir) / SCORES, consolidated=True, decode_timedelta=True)
