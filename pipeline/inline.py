"""Inline scoring during the rollout, mergeable across member blocks and shards.

Design (member-block outer, per-lead partials, memory bounded by the batch): a work unit scores its
block lead by lead against the verifying analysis and, for each lead, immediately writes
``inline/<unit>/lead-<l>.npz`` holding an :class:`evaluation.metrics.EnsembleAccumulator` without
sorted members (count, mean and M2 for the Chan et al. 1979 merge, ``sum |x - y|``, best-member
error, members below/tied with the truth for the rank histogram), threshold-exceedance counts, the
summed member power spectra and the per-member area-weighted RMSE. The unit therefore holds one block
state plus a handful of single-lead fields, whatever the number of leads or members. The CRPS spread
term ``sum_{i<j} |x_i - x_j|`` has no fixed-size mergeable summary, so each unit also spills its
float32 members to ``inline/<unit>/spill.npy`` (a memory map on disk).

When every unit is done, :func:`finalize` merges one ``(init, lead)`` at a time: the partials of all
units (sums, Chan merge) and the fair CRPS (Ferro 2014) per point from the spills, one latitude band
at a time sized by ``inline.memory_mb``, in float64. Peak memory: a few ``C x lat x lon`` fields plus
``M x C x band x lon`` values. Results equal the offline evaluation of the same members up to float
rounding (tests/pipeline/test_inline.py). Spills are kept (a unit found corrupt by ``verify`` can be
recomputed and the scores re-merged); delete ``inline/*/spill.npy`` by hand once a run is final.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from data_catalog.grid import area_weights
from pipeline import seeds
from pipeline.manifest import atomic_write
from pipeline.perturbations.sphere import legendre_table

log = logging.getLogger(__name__)

INLINE = "inline"
SCORES = "scores.zarr"
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


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


class UnitScorer:
    """Scores one work unit lead by lead, writing one mergeable partial per lead."""

    def __init__(
        self,
        run_dir: Path,
        icfg: Any,
        plan: Any,
        unit: Any,
        members: np.ndarray,
        truth: Callable[[int], np.ndarray | None],
    ) -> None:
        self.run_dir = Path(run_dir)
        self.icfg = icfg
        self.plan = plan
        self.unit = unit
        self.members = members
        self.truth = truth
        self.w = area_weights(plan.latitude)
        self.files: list[str] = []
        d = self.run_dir / INLINE / unit.name
        shutil.rmtree(d, ignore_errors=True)  # leftovers of a killed attempt
        d.mkdir(parents=True)
        shape = (
            len(members),
            plan.lead_steps + 1,
            len(plan.channels),
            plan.latitude.size,
            plan.longitude.size,
        )
        self.spill = (
            np.lib.format.open_memmap(
                self.run_dir / _spill_file(unit.name), mode="w+", dtype=np.float32, shape=shape
            )
            if icfg.crps
            else None
        )

    def on_lead(self, lead: int, x: torch.Tensor) -> None:
        from evaluation.metrics import EnsembleAccumulator

        xs = x.detach().float().cpu().numpy()
        fin = np.isfinite(xs).reshape(xs.shape[0], -1).all(axis=1)
        xs = np.where(fin[:, None, None, None], xs, np.nan).astype(np.float32)
        if self.spill is not None:
            self.spill[:, lead] = xs
        y = self.truth(lead)
        if y is None:
            return
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
        rel = _lead_file(self.unit.name, lead)
        _save_npz(self.run_dir / rel, arrays)
        self.files.append(rel)

    def finish(self, first_bad: np.ndarray) -> list[str]:
        """Flush the spill; returns the unit's inline files (relative to the run dir)."""
        files = list(self.files)
        if self.spill is not None:
            self.spill.flush()
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
        "spread_skill_ratio": "sqrt((M+1)/M) spread / RMSE of the ensemble mean (Fortin et al. 2014)",
        "wxens_plan": json.dumps(plan.to_json()),
    }
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=True)


def finalize(
    run_dir: Path,
    icfg: Any,
    plan: Any,
    truth: Callable[[np.datetime64], np.ndarray | None],
    keep: str = "members",
) -> Path:
    """Merge every unit's partials into ``scores.zarr`` one ``(init, lead)`` at a time; the store is
    written under a temporary name and renamed when complete."""
    from evaluation.metrics import crps_ensemble

    run_dir = Path(run_dir)
    units = plan.units()
    nt, nl, nc = len(plan.inits), plan.lead_steps + 1, len(plan.channels)
    ny, nx, nm = plan.latitude.size, plan.longitude.size, plan.layout.size
    w = area_weights(plan.latitude)
    nd = power_spectrum(np.zeros((ny, nx)), plan.latitude).shape[-1] if icfg.spectra else 0
    tmp = run_dir / f".{SCORES}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _template(tmp, plan, icfg, keep, nd)
    g: Any = zarr.open_group(str(tmp), mode="r+")
    count = np.zeros((nt, nl), np.int64)
    rank_hist = np.zeros((nt, nl, nc, nm + 1), np.int64)
    member_rmse = np.full((nt, nm, nl, nc), np.nan)
    crps_g = np.full((nt, nl, nc), np.nan)
    mse = np.full((nt, nl, nc), np.nan)
    spread = np.full((nt, nl, nc), np.nan)
    spec_m = np.full((nt, nl, nc, nd), np.nan)
    spec_mean = np.full((nt, nl, nc, nd), np.nan)
    rows = _band_rows(nm, nc, nx, icfg.memory_mb)

    def amean(a: np.ndarray) -> np.ndarray:
        return (np.asarray(a, np.float64).mean(-1) * w).mean(-1)

    for i in range(nt):
        mine = [u for u in units if u.init == i]
        rng = np.random.default_rng(seeds.derive_seed(0, plan.inits[i], 0, 0, seeds.PURPOSE_RANK_TIES))
        mms = [np.load(run_dir / _spill_file(u.name), mmap_mode="r") for u in mine] if icfg.crps else []
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
                    member_rmse[i, u.members(plan.layout, plan.block), lead] = z["member_rmse"]
            assert acc is not None
            n = acc["count"]
            m = int(n.max())
            count[i, lead] = m
            mean = np.where(n > 0, acc["mean"], np.nan)
            var = np.where(n > 1, acc["m2"] / np.where(n > 1, n - 1, 1), np.nan)
            if keep != "none":
                g["ensemble_mean"][i, lead] = mean.astype(np.float32)
            g["variance"][i, lead] = var.astype(np.float32)
            g["best_member_abs_error"][i, lead] = np.where(n > 0, acc["min_abs_err"], np.nan).astype(
                np.float32
            )
            u_ = rng.random(n.shape)
            rank = (acc["n_less"] + np.floor(u_ * (acc["n_equal"] + 1))).astype(np.int64)
            for c in range(nc):
                ok = n[c] == m
                rank_hist[i, lead, c] = np.bincount(rank[c][ok], minlength=nm + 1)[: nm + 1]
            mse[i, lead] = amean((mean - y) ** 2)
            spread[i, lead] = np.sqrt(amean(var))
            if spec is not None and m > 0:
                spec_m[i, lead] = spec / m
                spec_mean[i, lead] = power_spectrum(np.nan_to_num(mean), plan.latitude)
            for c in icfg.thresholds:
                g[f"exceedance_probability_{c}"][i, lead] = (
                    exc[c] / np.where(n[plan.channels.index(c)] > 0, n[plan.channels.index(c)], np.nan)
                ).astype(np.float32)
            if icfg.crps:
                crps = np.full((nc, ny, nx), np.nan)
                for r0 in range(0, ny, rows):
                    band = np.concatenate([mm[:, lead, :, r0 : r0 + rows] for mm in mms], axis=0)
                    band = band.astype(np.float64)  # differences of large values (z500): float64 sums
                    crps[:, r0 : r0 + rows] = crps_ensemble(
                        band, y[:, r0 : r0 + rows].astype(np.float64), member_axis=0, fair=True
                    )
                g["crps"][i, lead] = crps.astype(np.float32)
                crps_g[i, lead] = amean(crps)
        del mms
    mcount = count[..., None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # lead 0 of a control: 0 / 0
        ssr = np.sqrt((mcount + 1) / np.where(mcount > 0, mcount, np.nan)) * spread / np.sqrt(mse)
    g["n_members"][...] = count
    g["rank_histogram"][...] = rank_hist
    g["member_rmse"][...] = member_rmse
    g["crps_global"][...] = crps_g
    g["ensemble_mean_rmse"][...] = np.sqrt(mse)
    g["spread"][...] = spread
    g["spread_skill_ratio"][...] = ssr
    if icfg.spectra:
        g["power_spectrum_members"][...] = spec_m
        g["power_spectrum_mean"][...] = spec_mean
    final = run_dir / SCORES
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write(run_dir / INLINE / "MERGED", "ok")
    return final


def open_scores(run_dir: str | Path) -> xr.Dataset:
    """Open a run's merged inline scores lazily."""
    return xr.open_zarr(Path(run_dir) / SCORES, consolidated=True, decode_timedelta=True)
