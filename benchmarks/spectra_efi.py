"""Figure 3: angular power spectra and EFI/SOT throughput (fields per second).

* spectra: ``evaluation.spectra.power_spectrum`` on a stack of fields (float64, its exact midpoint-grid
  transform) vs the bare ``torch_harmonics.RealSHT`` + ``|a_lm|^2`` sum on the same array size (the
  library transform on its own equiangular grid: the floor a wrapper can reach);
* EFI and SOT: ``evaluation.extremes.efi`` / ``sot`` vs ``earthkit.meteo.extreme.efi`` / ``sot`` on the
  same ensembles (values checked equal). A "field" is one member on the whole grid.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from benchmarks.common import Context, grid, ratio, timeit

log = logging.getLogger(__name__)


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {"grids": [(32, 64)], "fields": 16, "members": 11, "points": 512, "cases": 2}
    return {"grids": [(32, 64), (64, 128)], "fields": 256, "members": 51, "points": 32 * 64, "cases": 8}


def spectra_rows(ctx: Context, grids: list[tuple[int, int]], n: int) -> list[dict[str, Any]]:
    import torch_harmonics as th

    from evaluation.spectra import power_spectrum

    rows = []
    g = torch.Generator().manual_seed(3)
    for nlat, nlon in grids:
        lat, lon = grid(nlat, nlon)
        x = torch.randn(n, nlat, nlon, generator=g, dtype=torch.float64)
        xn = x.numpy()
        t_ours = timeit(lambda lat=lat, xn=xn: power_spectrum(xn, lat), ctx)
        sht = th.RealSHT(nlat, nlon, lmax=nlat, mmax=nlat, grid="equiangular").double()

        def bare(x: torch.Tensor = x, sht: Any = sht) -> torch.Tensor:
            a = sht(x)
            p = a.abs() ** 2
            return p[..., 0] + 2 * p[..., 1:].sum(-1)

        t_bare = timeit(bare, ctx)
        rows.append(
            {
                "what": "power_spectrum",
                "grid": f"{nlon}x{nlat}",
                "fields": n,
                "wxens_fields_per_s": n / t_ours["median_s"],
                "baseline": "torch_harmonics.RealSHT + power sum",
                "baseline_fields_per_s": n / t_bare["median_s"],
                "ratio_vs_baseline": ratio(t_bare["median_s"], t_ours["median_s"]),
            }
        )
    return rows


def extreme_rows(ctx: Context, members: int, points: int, cases: int) -> list[dict[str, Any]]:
    from earthkit.meteo import extreme as ek

    from evaluation import extremes as E

    rng = np.random.default_rng(5)
    clim = np.sort(rng.normal(size=(cases, 101, points)) * 2 + 1, axis=1)
    ens = rng.normal(size=(cases, members, points)) * rng.uniform(
        0.5, 2, size=(cases, 1, points)
    ) + rng.normal(size=(cases, 1, points))
    fields = cases * members
    rows = []
    for what, ours, ref in (
        ("efi", lambda c, e: E.efi(c, e), lambda c, e: ek.efi(c, e)),
        ("sot90", lambda c, e: E.sot(c, e, 90), lambda c, e: ek.sot(c, e, 90)),
    ):
        t_o = timeit(lambda ours=ours: [ours(clim[i], ens[i]) for i in range(cases)], ctx)
        t_r = timeit(lambda ref=ref: [ref(clim[i], ens[i]) for i in range(cases)], ctx)
        a = np.stack([ours(clim[i], ens[i]) for i in range(cases)])
        b = np.stack([ref(clim[i], ens[i]) for i in range(cases)])
        ok = np.isfinite(a) & np.isfinite(b)
        rows.append(
            {
                "what": what,
                "grid": f"{points} points",
                "fields": fields,
                "members": members,
                "wxens_fields_per_s": fields / t_o["median_s"],
                "baseline": f"earthkit.meteo.extreme.{what[:3]}",
                "baseline_fields_per_s": fields / t_r["median_s"],
                "ratio_vs_baseline": ratio(t_r["median_s"], t_o["median_s"]),
                "max_abs_diff_vs_baseline": float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None,
                "nan_pattern_equal": bool(np.array_equal(np.isnan(a), np.isnan(b))),
            }
        )
    return rows


def run(ctx: Context) -> dict[str, Any]:
    sz = sizes(ctx)
    rows = spectra_rows(ctx, sz["grids"], sz["fields"])
    rows += extreme_rows(ctx, sz["members"], sz["points"], sz["cases"])
    return {
        "rows": rows,
        "targets": {
            "EFI/SOT equal to earthkit-meteo (1e-9)": all(
                (r.get("max_abs_diff_vs_baseline") or 0) < 1e-9
                for r in rows
                if "max_abs_diff_vs_baseline" in r
            ),
        },
    }
