"""Inline scoring during the rollout, mergeable across member blocks and shards.

Design (bounded memory, member-block outer): each work unit scores its block lead by lead against the
verifying analysis and saves

* ``inline/<unit>.npz``: per lead an :class:`evaluation.metrics.EnsembleAccumulator` without sorted
  members (count, mean and M2 for the Chan et al. 1979 merge, ``sum |x - y|``, best-member error,
  members below/tied with the truth for the rank histogram), threshold-exceedance counts, summed
  member power spectra and per-member area-weighted RMSE: ``O(L C lat lon)`` memory, independent of
  the ensemble size;
* ``inline/<unit>.spill.npy`` (only with ``crps``): the block's float32 member fields, the exact
  ingredient of the CRPS spread term ``sum_{i<j} |x_i - x_j|``, which no fixed-size sum can merge.

When every unit is done, :func:`finalize` merges the partials of each init time (sums, Chan merge),
and computes the fair CRPS (Ferro 2014) per point from the spills, one latitude band at a time sized
by ``inline.memory_mb``. Spills stay (they let a unit found corrupt by ``verify`` be recomputed and
the scores re-merged); delete ``inline/*.spill.npy`` by hand once a run is final. Results equal the offline evaluation of the same
members up to float rounding (tests/pipeline/test_inline.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from data_catalog.grid import area_weights
from pipeline import seeds
from pipeline.manifest import atomic_write
from pipeline.perturbations.sphere import legendre_table

log = logging.getLogger(__name__)

INLINE = "inline"
SCORES = "scores.zarr"
_ACC_FIELDS = ("count", "mean", "m2", "abs_err_sum", "min_abs_err", "n_less", "n_equal")


def power_spectrum(x: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """Angular power spectrum ``E_l = sum_m |a_lm|^2`` (m = -l..l) of fields ``(..., lat, lon)``.

    ``a_lm`` by quadrature with the cell-bound area weights (exact for band-limited fields on fine
    grids, approximate on coarse ones); ``sum_l E_l`` approximates ``int f^2 dOmega`` (Parseval).
    """
    ev_ps: Any
    try:  # the evaluation layer's kernel (normalised so that sum_l P(l) = area mean of f^2)
        from evaluation.spectra import power_spectrum as ev_ps
    except ImportError:  # pragma: no cover - fallback while evaluation.spectra is absent
        ev_ps = None
    if ev_ps is not None:
        return np.asarray(ev_ps(np.asarray(x, dtype=np.float64), latitude).power)
    lat = np.asarray(latitude, dtype=np.float64)
    nlat, nlon = x.shape[-2], x.shape[-1]
    lmax = nlat - 1
    mmax = min(lmax, nlon // 2)
    p = legendre_table(tuple(lat.tolist()), lmax, mmax)  # (m, l, lat)
    dmu = area_weights(lat) * 2.0 / nlat  # sum = 2 (integral of d sin(lat))
    fm = np.fft.rfft(np.asarray(x, dtype=np.float64), axis=-1)[..., : mmax + 1] * (2 * np.pi / nlon)
    alm = np.einsum("...km,mlk,k->...lm", fm, p, dmu)
    w = np.full(mmax + 1, 2.0)
    w[0] = 1.0
    return np.einsum("...lm,m->...l", np.abs(alm) ** 2, w)


class UnitScorer:
    """Scores one work unit lead by lead and writes its mergeable partial (see module docstring)."""

    def __init__(
        self, run_dir: Path, icfg: Any, plan: Any, unit: Any, members: np.ndarray, truth: np.ndarray
    ) -> None:
        self.run_dir = Path(run_dir)
        self.icfg = icfg
        self.plan = plan
        self.unit = unit
        self.members = members
        self.truth = truth  # (L+1, C, lat, lon)
        nl, nc, ny, nx = truth.shape
        b = len(members)
        self.acc: dict[str, np.ndarray] = {
            k: np.zeros((nl, nc, ny, nx), dtype=np.float64) for k in _ACC_FIELDS
        }
        self.exceed = {c: np.zeros((nl, len(t), ny, nx), dtype=np.int32) for c, t in icfg.thresholds.items()}
        self.spec: np.ndarray | None = None  # (L+1, C, degrees), allocated on first use
        self.member_rmse = np.full((b, nl, nc), np.nan, dtype=np.float64)
        self.w = area_weights(plan.latitude)
        (self.run_dir / INLINE).mkdir(parents=True, exist_ok=True)
        self.spill_rel = f"{INLINE}/{unit.name}.spill.npy"
        self.spill = (
            np.lib.format.open_memmap(
                self.run_dir / self.spill_rel, mode="w+", dtype=np.float32, shape=(b, nl, nc, ny, nx)
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
        y = self.truth[lead]
        if not np.isfinite(y).all():
            return
        acc = EnsembleAccumulator.from_members(xs, y, member_axis=0, keep_sorted=False)
        for k in _ACC_FIELDS:
            self.acc[k][lead] = np.asarray(getattr(acc, k), dtype=np.float64)
        for c, thr in self.icfg.thresholds.items():
            ci = self.plan.channels.index(c)
            t = np.asarray(thr, dtype=np.float64)[:, None, None, None]
            self.exceed[c][lead] = ((xs[None, :, ci] > t) & fin[None, :, None, None]).sum(axis=1)
        if self.icfg.spectra and fin.any():
            ps = power_spectrum(xs[fin], self.plan.latitude).sum(axis=0)  # (C, degrees)
            if self.spec is None:
                self.spec = np.zeros((self.truth.shape[0], *ps.shape), dtype=np.float64)
            self.spec[lead] = ps
        err = (xs.astype(np.float64) - y[None]) ** 2  # (b, C, lat, lon)
        self.member_rmse[:, lead] = np.sqrt((err.mean(-1) * self.w).mean(-1))

    def finish(self, first_bad: np.ndarray) -> list[str]:
        """Write the partial (and flush the spill); returns the files (relative to the run dir)."""
        rel = f"{INLINE}/{self.unit.name}.npz"
        tmp = self.run_dir / INLINE / f".{self.unit.name}.tmp.npz"
        arrays = {f"acc_{k}": v for k, v in self.acc.items()}
        arrays.update({f"exceed_{c}": v for c, v in self.exceed.items()})
        if self.spec is not None:
            arrays["spec"] = self.spec
        arrays["member_rmse"] = self.member_rmse
        arrays["members"] = self.members
        arrays["first_bad"] = first_bad
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        tmp.replace(self.run_dir / rel)
        files = [rel]
        if self.spill is not None:
            self.spill.flush()
            del self.spill
            files.append(self.spill_rel)
        return files


def _merge(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chan et al. (1979) merge of count/mean/M2, sums of the rest, min of the best-member error."""
    if a is None:
        return {k: v.copy() for k, v in b.items()}
    na, nb = a["count"], b["count"]
    n = na + nb
    nz = np.where(n > 0, n, 1.0)
    delta = b["mean"] - a["mean"]
    out = {
        "count": n,
        "mean": a["mean"] + delta * nb / nz,
        "m2": a["m2"] + b["m2"] + delta * delta * na * nb / nz,
        "abs_err_sum": a["abs_err_sum"] + b["abs_err_sum"],
        "min_abs_err": np.where(
            nb > 0,
            np.where(na > 0, np.minimum(a["min_abs_err"], b["min_abs_err"]), b["min_abs_err"]),
            a["min_abs_err"],
        ),
        "n_less": a["n_less"] + b["n_less"],
        "n_equal": a["n_equal"] + b["n_equal"],
    }
    return out


def _band_rows(n_members: int, nc: int, nx: int, memory_mb: float) -> int:
    per_row = max(1, n_members * nc * nx * 8 * 4)  # float64 member values + sort/work copies
    return int(max(1, min(10**9, memory_mb * 1e6 // per_row)))


def finalize(run_dir: Path, icfg: Any, plan: Any, keep: str = "members") -> Path:
    """Merge every unit's partial into ``scores.zarr`` (atomically: tmp dir + rename); delete spills."""
    from evaluation.metrics import crps_ensemble

    run_dir = Path(run_dir)
    units = plan.units()
    nt, nl, nc = len(plan.inits), plan.lead_steps + 1, len(plan.channels)
    ny, nx = plan.latitude.size, plan.longitude.size
    layout = plan.layout
    nm = layout.size
    w = area_weights(plan.latitude)
    fields: dict[str, np.ndarray] = {
        "ensemble_mean": np.full((nt, nl, nc, ny, nx), np.nan, np.float32),
        "variance": np.full((nt, nl, nc, ny, nx), np.nan, np.float32),
        "crps": np.full((nt, nl, nc, ny, nx), np.nan, np.float32),
        "best_member_abs_error": np.full((nt, nl, nc, ny, nx), np.nan, np.float32),
    }
    count = np.zeros((nt, nl), np.int64)
    rank_hist = np.zeros((nt, nl, nc, nm + 1), np.int64)
    nd = power_spectrum(np.zeros((ny, nx)), plan.latitude).shape[-1] if icfg.spectra else 0
    spec_members = np.full((nt, nl, nc, nd), np.nan)
    spec_mean = np.full((nt, nl, nc, nd), np.nan)
    member_rmse = np.full((nt, nm, nl, nc), np.nan)
    exceed = {c: np.full((nt, nl, len(t), ny, nx), np.nan, np.float32) for c, t in icfg.thresholds.items()}
    for i in range(nt):
        mine = [u for u in units if u.init == i]
        acc = None
        spec = None
        exc: dict[str, np.ndarray] = {}
        for u in mine:
            with np.load(run_dir / INLINE / f"{u.name}.npz") as z:
                acc = _merge(acc, {k: z[f"acc_{k}"] for k in _ACC_FIELDS})
                if "spec" in z:
                    spec = z["spec"] if spec is None else spec + z["spec"]
                for c in icfg.thresholds:
                    exc[c] = z[f"exceed_{c}"] if c not in exc else exc[c] + z[f"exceed_{c}"]
                member_rmse[i, z["members"]] = z["member_rmse"]
        assert acc is not None
        n = acc["count"]
        valid = n > 0
        fields["ensemble_mean"][i] = np.where(valid, acc["mean"], np.nan)
        fields["variance"][i] = np.where(n > 1, acc["m2"] / np.where(n > 1, n - 1, 1), np.nan)
        fields["best_member_abs_error"][i] = np.where(valid, acc["min_abs_err"], np.nan)
        count[i] = n.reshape(nl, -1).max(axis=1)
        rng = np.random.default_rng(seeds.derive_seed(0, plan.inits[i], 0, 0, seeds.PURPOSE_RANK_TIES))
        u = rng.random(n.shape)
        rank = (acc["n_less"] + np.floor(u * (acc["n_equal"] + 1))).astype(np.int64)
        full = n == n.reshape(nl, -1).max(axis=1)[:, None, None, None]
        for lead in range(nl):
            for c in range(nc):
                ok = full[lead, c] & valid[lead, c]
                rank_hist[i, lead, c] = np.bincount(rank[lead, c][ok], minlength=nm + 1)[: nm + 1]
        if spec is not None:
            spec_members[i] = spec / np.where(count[i] > 0, count[i], np.nan)[:, None, None]
            mean_f = np.nan_to_num(fields["ensemble_mean"][i].astype(np.float64))
            spec_mean[i] = power_spectrum(mean_f, plan.latitude)
            spec_mean[i][count[i] == 0] = np.nan
        for c in icfg.thresholds:
            exceed[c][i] = exc[c] / np.where(count[i] > 0, count[i], np.nan)[:, None, None, None]
        if icfg.crps:
            truth_ok = np.isfinite(acc["mean"]).all(axis=(1, 2, 3)) & (count[i] > 0)
            mms = [np.load(run_dir / INLINE / f"{u.name}.spill.npy", mmap_mode="r") for u in mine]
            rows = _band_rows(nm, nc, nx, icfg.memory_mb)
            truth = _truth(run_dir, plan, i)
            for lead in range(nl):
                if not truth_ok[lead]:
                    continue
                for r0 in range(0, ny, rows):
                    band = np.concatenate([m[:, lead, :, r0 : r0 + rows] for m in mms], axis=0)
                    band = band.astype(np.float64)  # differences of large values (z500): no float32 sums
                    fields["crps"][i, lead, :, r0 : r0 + rows] = crps_ensemble(
                        band, truth[lead, :, r0 : r0 + rows].astype(np.float64), member_axis=0, fair=True
                    )
            del mms

    # area-weighted aggregates (spread/skill with the sqrt((M+1)/M) factor, Fortin et al. 2014)
    def amean(a: np.ndarray) -> np.ndarray:
        return (np.asarray(a, np.float64).mean(-1) * w).mean(-1)

    truth_all = np.stack([_truth(run_dir, plan, i) for i in range(nt)])
    mse = amean((fields["ensemble_mean"].astype(np.float64) - truth_all) ** 2)
    spread = np.sqrt(amean(fields["variance"]))
    mcount = count[..., None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # lead 0 of an unperturbed control: 0 / 0
        ssr = np.sqrt((mcount + 1) / np.where(mcount > 0, mcount, np.nan)) * spread / np.sqrt(mse)
    dims5 = ("time", "prediction_timedelta", "channel", "latitude", "longitude")
    leads = np.arange(nl) * plan.step.astype("timedelta64[ns]")
    data: dict[str, Any] = {
        "variance": (dims5, fields["variance"]),
        "crps": (dims5, fields["crps"]),
        "best_member_abs_error": (dims5, fields["best_member_abs_error"]),
        "n_members": (("time", "prediction_timedelta"), count),
        "rank_histogram": (("time", "prediction_timedelta", "channel", "rank"), rank_hist),
        "member_rmse": (("time", "number", "prediction_timedelta", "channel"), member_rmse),
        "crps_global": (("time", "prediction_timedelta", "channel"), amean(fields["crps"])),
        "ensemble_mean_rmse": (("time", "prediction_timedelta", "channel"), np.sqrt(mse)),
        "spread": (("time", "prediction_timedelta", "channel"), spread),
        "spread_skill_ratio": (("time", "prediction_timedelta", "channel"), ssr),
    }
    if keep in ("mean", "members"):
        data["ensemble_mean"] = (dims5, fields["ensemble_mean"])
    if icfg.spectra:
        data["power_spectrum_members"] = (
            ("time", "prediction_timedelta", "channel", "wavenumber"),
            spec_members,
        )
        data["power_spectrum_mean"] = (("time", "prediction_timedelta", "channel", "wavenumber"), spec_mean)
    for c in icfg.thresholds:
        data[f"exceedance_probability_{c}"] = (
            ("time", "prediction_timedelta", f"threshold_{c}", "latitude", "longitude"),
            exceed[c],
        )
    coords: dict[str, Any] = {
        "time": plan.inits,
        "prediction_timedelta": leads,
        "channel": list(plan.channels),
        "latitude": plan.latitude,
        "longitude": plan.longitude,
        "number": np.arange(nm),
        "rank": np.arange(nm + 1),
        "wavenumber": np.arange(nd),
    }
    for c, t in icfg.thresholds.items():
        coords[f"threshold_{c}"] = np.asarray(t, np.float64)
    out = xr.Dataset(data, coords=coords)
    out.attrs = {
        "title": "wxens inline ensemble scores",
        "crps": "fair CRPS (Ferro 2014), per point",
        "wxens_plan": json.dumps(plan.to_json()),
    }
    tmp = run_dir / f".{SCORES}.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    out.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    final = run_dir / SCORES
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write(run_dir / INLINE / "MERGED", "ok")
    return final


def _truth(run_dir: Path, plan: Any, i: int) -> np.ndarray:
    """Verifying analyses of init ``i`` (reloaded from the run's analysis source)."""
    from pipeline.engine import _ANALYSIS_CACHE, verifying_truth

    ds = _ANALYSIS_CACHE.get(str(run_dir))
    if ds is None:
        from pipeline.config import load_config
        from pipeline.engine import open_analysis

        cfg = load_config(json.loads((run_dir / "config.json").read_text()))
        ds = open_analysis(cfg.analysis)
    return verifying_truth(ds, plan, plan.inits[i])


def open_scores(run_dir: str | Path) -> xr.Dataset:
    """Open a run's merged inline scores lazily."""
    return xr.open_zarr(Path(run_dir) / SCORES, consolidated=True, decode_timedelta=True)
