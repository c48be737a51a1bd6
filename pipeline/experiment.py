"""The engine experiment of docs/engine.md: which source of spread helps on the embedded world?

Four ensembles scored inline against the world's own analysis (fair CRPS, spread/skill by lead):

(a) bred vectors x all checkpoints, (b) bred vectors x one checkpoint (same ensemble size),
(c) all checkpoints, no perturbation, (d) spherical Gaussian noise of the same amplitude x all
checkpoints.

Run: ``python -m pipeline.experiment OUT_DIR [--inits 20] [--leads 20] [--pairs 2]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)


def experiment_configs(
    checkpoints: list[str], inits: list[str], lead_steps: int, pairs: int, analysis: str, loader: str
) -> dict[str, dict[str, Any]]:
    """The four forecast configs (a)-(d)."""
    base = {
        "analysis": analysis,
        "init_times": inits,
        "model_loader": loader,
        "lead_steps": lead_steps,
        "batch_size": 2 * pairs * len(checkpoints),
        "seed": 2024,
        "progress": False,
        "output": {"keep": "none"},
        "inline": {"enabled": True, "spectra": False},
    }
    n = len(checkpoints)
    return {
        "a_bred_x_ckpts": {
            **base,
            "checkpoints": checkpoints,
            "perturbation": {"method": "bred", "n_pairs": pairs},
        },
        "b_bred_x_1ckpt": {
            **base,
            "checkpoints": checkpoints[:1],
            "perturbation": {"method": "bred", "n_pairs": pairs * n},
        },
        "c_ckpts_only": {**base, "checkpoints": checkpoints, "perturbation": {"method": "none"}},
        "d_noise_x_ckpts": {
            **base,
            "checkpoints": checkpoints,
            "perturbation": {"method": "spherical", "n_pairs": pairs},
        },
    }


def summarise(run_dirs: dict[str, Path], channels: list[str]) -> dict[str, Any]:
    """Mean over init times of area-weighted fair CRPS and spread/skill ratio, by lead."""
    out: dict[str, Any] = {}
    for name, rd in run_dirs.items():
        sc = xr.open_zarr(rd / "scores.zarr")
        lead_h = (sc["prediction_timedelta"].values / np.timedelta64(1, "h")).astype(int).tolist()
        crps = sc["crps_global"].mean("time")
        rmse = np.sqrt((sc["ensemble_mean_rmse"] ** 2).mean("time"))
        spread = np.sqrt((sc["spread"] ** 2).mean("time"))
        m = int(sc["n_members"].max())
        ssr = np.sqrt((m + 1) / m) * spread / rmse if m > 1 else spread * np.nan
        out[name] = {
            "members": m,
            "lead_hours": lead_h,
            "crps": {c: crps.sel(channel=c).values.round(6).tolist() for c in channels},
            "spread_skill": {c: ssr.sel(channel=c).values.round(3).tolist() for c in channels},
            "rmse_mean": {c: rmse.sel(channel=c).values.round(6).tolist() for c in channels},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from pipeline.engine import run_forecast

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--inits", type=int, default=20)
    ap.add_argument("--leads", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--checkpoints", default=None, help="folder of checkpoints (default: shipped)")
    ap.add_argument("--analysis", default="builtin:sphere-swe")
    ap.add_argument("--loader", default="models.checkpoint:load_checkpoint")
    ap.add_argument("--first", default="2008-01-10T00")
    ap.add_argument("--last", default="2009-12-01T00")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.checkpoints is None:
        from models import pretrained_dir

        folder = pretrained_dir("sphere-swe")
    else:
        folder = Path(args.checkpoints)
    ckpts = sorted(str(p) for p in Path(folder).iterdir() if p.is_dir())
    t0, t1 = np.datetime64(args.first, "h"), np.datetime64(args.last, "h")
    span = (t1 - t0) / max(args.inits - 1, 1)
    inits = [
        str(t0 + np.timedelta64(int(round(i * span / np.timedelta64(6, "h"))) * 6, "h"))
        for i in range(args.inits)
    ]
    out = Path(args.out_dir)
    cfgs = experiment_configs(ckpts, inits, args.leads, args.pairs, args.analysis, args.loader)
    dirs = {}
    for name, cfg in cfgs.items():
        s = run_forecast(cfg, out / name)
        log.info("%s: %s", name, {k: s[k] for k in ("units_computed", "member_steps_per_s", "complete")})
        dirs[name] = out / name
    from pipeline.config import load_config
    from pipeline.engine import load_model

    model = load_model(load_config(cfgs["a_bred_x_ckpts"]).model_loader, ckpts[0], torch.device("cpu"))
    res = summarise(dirs, list(model.channels))
    res["inits"] = inits
    (out / "summary.json").write_text(json.dumps(res, indent=1))
    log.info("wrote %s", out / "summary.json")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
