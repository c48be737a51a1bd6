"""How predictable is the embedded world for a model that cannot see its hidden driver?

The world's variability is stirred by a storm-track vorticity source patterned by two Lorenz-96 rings
(:mod:`data_catalog.world.model`). The rings are not part of the stored fields, so no forecast model
trained on ``z500, u500, v500, vo500`` can know their state. This module measures the best any such
model could do, with the world's *own* equations as the forecast model:

* draw ``n_states`` true states (flow + ring state) from spun-up trajectories;
* rerun each one with the true rings (the truth) and with ``n_drivers`` ring states taken from the
  other trajectories (same flow, climatologically plausible but wrong driver);
* score the mean of those ``n_drivers`` runs (an estimate of the conditional mean given the flow, the
  RMSE-optimal deterministic forecast when the driver is unknown) against the truth, next to
  persistence and a monthly climatology of the stored training years.

The bound is optimistic in one way (the model is perfect) and pessimistic in another (a learned model
may infer part of the ring state from the flow's recent history, which the drawn drivers ignore).

Run: ``python -m data_catalog.world.predictability [--states 12] [--drivers 6] [--driver-error 1]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from data_catalog.grid import area_weights
from data_catalog.world.model import DAY, ShallowWaterModel, WorldParams
from data_catalog.world.spectral import PointSynthesis
from data_catalog.world.store import EPOCH, OUT_LAT, OUT_LON, SPLITS, VARIABLES, _single_thread

CHANNELS = tuple(VARIABLES)


def _fields(model: ShallowWaterModel, synth: PointSynthesis, s: torch.Tensor) -> np.ndarray:
    """Spectral states (B, 3, L, M) -> stored channels (B, 4, lat, lon) on the output grid."""
    p = model.p
    z = synth.scalar(s[:, 2] + model.phis_spec) + p.phi_bar
    uv = synth.uv(s[:, :2])
    vo = synth.scalar(s[:, 0])
    return torch.stack((z, uv[:, 0], uv[:, 1], vo), dim=1).numpy()


def _rmse(err: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(N, C, lat, lon) -> (C,): area-weighted mean square over points and cases, square-rooted."""
    return np.sqrt(((err**2) * w[:, None]).mean(axis=(0, 2, 3)) / w.mean())


def driver_bound(
    world: xr.Dataset | None = None,
    n_states: int = 12,
    n_drivers: int = 6,
    leads_days: Sequence[float] = (1, 2, 3, 5, 10),
    spinup_days: float = 120.0,
    start: str = "2008-01-01",
    spacing_days: float = 30.0,
    seed: int = 1,
    params: WorldParams | None = None,
    driver_error: float = 1.0,
) -> dict:
    """Perfect-model, unknown-driver forecast error of the world, per channel and lead.

    Parameters
    ----------
    world
        The stored world (for the monthly climatology of the training years); ``None`` skips it.
    n_states, n_drivers
        True states drawn (one per trajectory, ``spacing_days`` apart from ``start``) and wrong
        drivers per state (the other trajectories' ring states).
    leads_days
        Lead times scored.
    driver_error
        How wrong the drivers are: each wrong ring state is ``x + driver_error (x_other - x)``; 1 (the
        default) is an unrelated, climatologically plausible driver, 0.3 a driver known up to 30 % of
        the difference between two states (what a model that infers the driver from the flow might
        reach), 0 the true driver.

    Returns
    -------
    dict with ``channels``, ``leads_days`` and, each ``(lead, channel)`` lists of RMSE:
    ``driver_mean`` (mean over wrong drivers), ``driver_member`` (one wrong driver, averaged),
    ``persistence`` and ``climatology`` (absent without ``world``).
    """
    if n_drivers >= n_states:
        raise ValueError("n_drivers must be smaller than n_states (drivers come from other states)")
    p = params or WorldParams()
    with _single_thread():
        model = ShallowWaterModel(p)
        synth = PointSynthesis(OUT_LAT, len(OUT_LON), p.lmax, p.radius)
        t_start = float((np.datetime64(start, "ns") - EPOCH) / np.timedelta64(1, "s"))
        t_init = t_start + np.arange(n_states) * spacing_days * DAY
        gen = torch.Generator().manual_seed(seed)
        s, x = model.initial_state(t_init - spinup_days * DAY, gen)
        s, x, t = model.run(s, x, t_init - spinup_days * DAY, round(spinup_days * DAY / p.dt))
        f0 = _fields(model, synth, s)
        runs = n_drivers + 1
        S = torch.cat([s] * runs)
        X = torch.cat([x] + [x + driver_error * (x.roll(k + 1, dims=0) - x) for k in range(n_drivers)])
        T = np.concatenate([t] * runs)
        w = area_weights(OUT_LAT)
        clim = None
        if world is not None:
            train = world[list(CHANNELS)].sel(time=slice(*SPLITS["train"]))
            train = train.sortby("latitude").sortby("longitude")  # the output grid's order
            if not (np.allclose(train.latitude, OUT_LAT) and np.allclose(train.longitude, OUT_LON)):
                raise ValueError("world is not on the embedded world's 64x32 grid")
            monthly = train.groupby("time.month").mean("time")
            clim = {int(m): monthly.sel(month=m).to_array().values for m in monthly.month.values}
        out: dict = {"channels": list(CHANNELS), "leads_days": [float(v) for v in leads_days]}
        for key in ("driver_mean", "driver_member", "persistence", "climatology"):
            out[key] = []
        done = 0
        for lead in leads_days:
            n = round(lead * DAY / p.dt)
            S, X, T = model.run(S, X, T, n - done)
            done = n
            f = _fields(model, synth, S).reshape(runs, n_states, len(CHANNELS), len(OUT_LAT), len(OUT_LON))
            truth, wrong = f[0], f[1:]
            out["driver_mean"].append(_rmse(wrong.mean(axis=0) - truth, w).tolist())
            out["driver_member"].append(
                np.sqrt(np.mean([_rmse(m - truth, w) ** 2 for m in wrong], axis=0)).tolist()
            )
            out["persistence"].append(_rmse(f0 - truth, w).tolist())
            if clim is not None:
                months = (EPOCH + (T[:n_states] * 1e9).astype("timedelta64[ns]")).astype("datetime64[M]")
                months = months.astype(int) % 12 + 1
                cf = np.stack([clim[int(m)] for m in months])
                out["climatology"].append(_rmse(cf - truth, w).tolist())
        if clim is None:
            del out["climatology"]
    return out


def format_table(res: dict) -> str:
    """Markdown table: RMSE of the driver-unknown bound relative to climatology (or absolute)."""
    has_clim = "climatology" in res
    rows = ["| channel | lead (d) | bound | one wrong driver | persistence | climatology |", "|---" * 6 + "|"]
    for i, c in enumerate(res["channels"]):
        for k, lead in enumerate(res["leads_days"]):
            vals = [res[key][k][i] for key in ("driver_mean", "driver_member", "persistence")]
            ref = res["climatology"][k][i] if has_clim else float("nan")
            cells = [f"{v / ref:.2f}" if has_clim else f"{v:.4g}" for v in vals]
            rows.append(f"| {c} | {lead:g} | " + " | ".join(cells) + f" | {ref:.4g} |")
    if has_clim:
        rows.append("")
        rows.append(
            "bound, one wrong driver and persistence are RMSE / climatology RMSE (< 1 beats climatology)."
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--states", type=int, default=12)
    ap.add_argument("--drivers", type=int, default=6)
    ap.add_argument("--leads", default="1,2,3,5,10", help="lead times in days, comma separated")
    ap.add_argument(
        "--driver-error",
        type=float,
        default=1.0,
        help="wrong ring state = true + e (other - true): 1 unrelated driver, 0.3 driver known to 30 %%",
    )
    args = ap.parse_args(argv)
    from data_catalog.readers import open_reanalysis

    world = open_reanalysis("builtin:sphere-swe")
    res = driver_bound(
        world,
        n_states=args.states,
        n_drivers=args.drivers,
        leads_days=[float(v) for v in args.leads.split(",")],
        driver_error=args.driver_error,
    )
    from rich.console import Console
    from rich.table import Table

    title = "driver-unknown" if args.driver_error == 1.0 else f"driver error {args.driver_error:g}"
    table = Table(title=f"{title} forecast RMSE / climatology RMSE (< 1 beats climatology)")
    for col in ("channel", "lead (d)", "bound", "one wrong driver", "persistence", "climatology RMSE"):
        table.add_column(col)
    for i, c in enumerate(res["channels"]):
        for k, lead in enumerate(res["leads_days"]):
            ref = res["climatology"][k][i]
            ratios = [
                f"{res[key][k][i] / ref:.2f}" for key in ("driver_mean", "driver_member", "persistence")
            ]
            table.add_row(c, f"{lead:g}", *ratios, f"{ref:.4g}")
    Console().print(table)


if __name__ == "__main__":
    from data_catalog.errors import run_module_main

    run_module_main(main)
