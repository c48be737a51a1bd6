"""Does a world with growing modes reward bred vectors? A perfect-analysis probe on the three-level
QG world (:mod:`data_catalog.world.qg`; docs/world.md, "A chaotic three-level world").

``python -m pipeline.qg_probe`` prints the world's climate and error growth
(:func:`data_catalog.world.qg.climate`, :func:`~data_catalog.world.qg.error_growth`), then the probe:
the truth is the world, the forecast model is the same equations with slightly wrong parameters (model
error: relaxation 12 instead of 10 days, upper jet 57 instead of 60 m/s), the analysis is the truth;
centred +/- ensembles of random perturbations (``cycles 0``: white streamfunction noise up to the
truncation) or of bred vectors (``cycles K``: K breeding cycles of 6 h through the past analyses, each
rescaled to the same amplitude, ``alpha`` x the control's 48 h RMSE of the 500 hPa geopotential);
fair CRPS of the 500 hPa geopotential by lead, area-weighted, mean over the init times.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch

from data_catalog.errors import UserError, run_module_main
from data_catalog.world.qg import (
    QGParams,
    ThreeLevelQG,
    attractor_state,
    climate,
    error_growth,
    row_weights,
    weighted_rms,
)
from evaluation.metrics import crps_ensemble


def bred_vs_noise(
    truth_params: QGParams | None = None,
    model_params: QGParams | None = None,
    inits: int = 10,
    pairs: int = 8,
    cycles: Sequence[int] = (0, 3, 12, 28),
    alpha: float = 0.35,
    lead_days: Sequence[int] = (1, 2, 3, 5, 7, 10),
    spacing_days: int = 12,
    seed: int = 3,
    spinup_days: float = 100.0,
) -> dict:
    """Fair CRPS (500 hPa, area-weighted, mean over inits) by lead of centred ensembles of ``2 pairs``
    members from random perturbations (``cycles`` 0) or bred vectors (``cycles`` K > 0); see the
    module docstring. Returns ``{"amplitude", "control_rmse_48h", "crps": {K: {day: value}},
    "initial_rms": {K: max relative deviation of the perturbations' RMS from the amplitude}}``."""
    truth = ThreeLevelQG(truth_params)
    fc = ThreeLevelQG(model_params or QGParams(tau_relax_days=12.0, u_top=57.0))
    p, tr = truth.p, truth.tr
    s6 = round(6 * 3600 / p.dt)
    w = row_weights(truth)
    q, t = attractor_state(truth, seed=seed, spinup_days=spinup_days, day=0.0)
    first = max(max(cycles), 8) + 1  # room for the breeding cycles before the first init
    n6 = first + (inits - 1) * spacing_days * 4 + 4 * max(lead_days) + 1
    traj: list[torch.Tensor] = [q[0]]
    truth.run(q, t, (n6 - 1) * s6, lambda k, qq, tt: traj.append(qq[0].clone()), s6)
    t_start = float(t[0])
    starts = [first + i * spacing_days * 4 for i in range(inits)]

    def when(k: int, n: int) -> np.ndarray:
        return np.full(n, t_start + k * 6 * 3600.0)

    def z500(qq: torch.Tensor) -> np.ndarray:
        return truth.geopotential(qq)[:, 1].numpy()

    def zrms(psi: torch.Tensor) -> torch.Tensor:
        g = p.f0 * tr.to_grid(psi[:, 1])
        return (g**2 * torch.as_tensor(w)).mean(dim=(-2, -1)).sqrt()

    errs = []
    for k0 in starts:
        qf, _ = fc.run(traj[k0 - 8][None], when(k0 - 8, 1), 8 * s6)
        errs.append(weighted_rms(z500(qf)[0] - z500(traj[k0][None])[0], w))
    amplitude = alpha * float(np.mean(errs))
    result: dict = {
        "amplitude": amplitude,
        "control_rmse_48h": float(np.mean(errs)),
        "crps": {},
        "initial_rms": {},
    }
    for k_cycles in cycles:
        gen = torch.Generator().manual_seed(seed + 1)
        scores: dict[int, list[float]] = {d: [] for d in lead_days}
        dev = 0.0
        for k0 in starts:
            grid = torch.randn(pairs, 3, p.nlat, p.nlon, generator=gen, dtype=torch.float64)
            d = tr.to_spec(grid) * tr.invlap * truth.triangle
            d = d * (amplitude / zrms(d))[:, None, None, None]
            for c in range(k_cycles, 0, -1):  # breed through the analyses k0 - c .. k0
                base = traj[k0 - c][None]
                both = torch.cat([base, base + fc.q_from_psi(d)])
                adv, _ = fc.run(both, when(k0 - c, pairs + 1), s6)
                diff = fc.psi_from_q(adv[1:] - adv[:1])
                d = diff * (amplitude / zrms(diff))[:, None, None, None]
            dev = max(dev, float((zrms(d) / amplitude - 1).abs().max()))
            dq = fc.q_from_psi(d)
            ens = torch.cat([traj[k0][None] + dq, traj[k0][None] - dq])

            def score(k: int, qq: torch.Tensor, tt: np.ndarray, k0: int = k0, scores: dict = scores) -> None:
                if k % 4 == 0 and k // 4 in scores:
                    c = crps_ensemble(z500(qq), z500(traj[k0 + k][None])[0])
                    scores[k // 4].append(float(np.mean(w * c)))

            fc.run(ens, when(k0, 2 * pairs), 4 * max(lead_days) * s6, score, s6)
        result["crps"][k_cycles] = {d: float(np.mean(v)) for d, v in scores.items()}
        result["initial_rms"][k_cycles] = dev
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inits", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--cycles", default="0,3,12,28", help="breeding cycles to compare (0 = random noise)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--climate-days", type=int, default=80, help="days of the climate statistics")
    ap.add_argument("--growth-days", type=int, default=60, help="days of the twin runs")
    ap.add_argument("--spinup-days", type=float, default=60.0, help="days onto the attractor")
    args = ap.parse_args(argv)
    try:
        cycles = [int(c) for c in args.cycles.split(",")]
    except ValueError:
        raise UserError(f"--cycles must be comma-separated integers, not {args.cycles!r}") from None
    if min(cycles) < 0 or args.inits < 1 or args.pairs < 1:
        raise UserError("--cycles must be >= 0, --inits and --pairs >= 1")
    torch.set_num_threads(args.threads)
    model = ThreeLevelQG()
    q, t = attractor_state(model, spinup_days=args.spinup_days)
    cl = climate(model, q, t, days=args.climate_days)
    q, t = cl["state"]
    eg = error_growth(model, q, t, days=args.growth_days)
    sat = float(np.mean(eg["distance"][-15:])) / (math.sqrt(2) * cl["std"][1])
    from rich.console import Console

    out = Console(soft_wrap=True, highlight=False).print
    out(
        "geopotential std (200/500/800 hPa) "
        + " / ".join(f"{s:.0f}" for s in cl["std"])
        + f" m2 s-2; 500 hPa autocorrelation {cl['autocorr_1d']:.2f} (1 d), {cl['autocorr_3d']:.2f} (3 d);"
        f" strongest zonal-mean wind {cl['max_zonal_wind']:.1f} m/s"
    )
    out(f"error growth: e-folding {eg['efold_days']:.1f} d, saturated distance / (sqrt 2 std) {sat:.2f}")
    res = bred_vs_noise(inits=args.inits, pairs=args.pairs, cycles=cycles, spinup_days=args.spinup_days + 40)
    out(f"control 48 h RMSE {res['control_rmse_48h']:.1f}, perturbation amplitude {res['amplitude']:.1f}")
    days = list(next(iter(res["crps"].values())))
    out("| perturbation | " + " | ".join(f"CRPS {d} d" for d in days) + " |")
    out("|---|" + "---|" * len(days))
    for k, row in res["crps"].items():
        name = "random noise" if k == 0 else f"bred, {k} cycles"
        out(f"| {name} | " + " | ".join(f"{row[d]:.1f}" for d in days) + " |")
    return 0


if __name__ == "__main__":
    run_module_main(main)
