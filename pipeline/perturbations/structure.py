"""How are perturbations structured between levels? Against the analysis error they should represent.

``python -m pipeline.perturbations.structure`` draws perturbations of one checkpoint at init times of
an analysis and prints, per design, the correlation of the perturbation between pairs of channels
(e.g. the geopotential at 200, 500 and 800 hPa), pooled over inits, pairs and grid points with area
weights: ``r = sum(w a b) / sqrt(sum(w a^2) sum(w b^2))``, uncentred (perturbations and errors have
a near-zero mean). With ``--truth`` (the world the analyses observe) the first row is the analysis
error itself, ``analysis - truth`` at the same inits. Designs (``--designs``): ``noise`` (spherical
noise, as ensemble (d) of the experiment) and ``SEEDS:CYCLES`` for bred vectors, ``SEEDS`` one
channel or ``all`` (every channel of ``--channels``), e.g. ``z500:3,all:3,all:1,noise``.
Amplitudes are ``--alpha`` x the checkpoint's 48 h RMSE, as in the engine.
(docs/engine.md, "Does the ensemble work?": why the breeding seed should cover every level.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError, run_module_main


def channel_correlation(x: np.ndarray, i: int, j: int, weights: np.ndarray) -> float:
    """Area-weighted uncentred correlation of channels ``i`` and ``j`` of ``x`` ``(..., C, lat, lon)``,
    pooled over every leading dim; ``weights`` ``(lat,)``. NaN if either channel is zero."""
    w = np.asarray(weights, dtype=np.float64)[:, None]
    a = np.asarray(x[..., i, :, :], dtype=np.float64)
    b = np.asarray(x[..., j, :, :], dtype=np.float64)
    den = np.sqrt((w * a * a).sum() * (w * b * b).sum())
    return float((w * a * b).sum() / den) if den > 0 else float("nan")


def parse_designs(text: str) -> list[tuple[str, list[str] | None, int]]:
    """``z500:3,all:1,noise`` -> ``[(label, seeds or None for all, cycles), ...]``; noise has cycles 0."""
    out: list[tuple[str, list[str] | None, int]] = []
    for item in (t.strip() for t in text.split(",")):
        if item == "noise":
            out.append(("spherical noise", None, 0))
            continue
        seed, sep, cyc = item.partition(":")
        if not sep or not seed or not cyc.isdigit() or int(cyc) < 1:
            raise UserError(f"design {item!r} is not SEED:CYCLES (e.g. z500:3, all:1) or noise")
        seeds = None if seed == "all" else seed.split("+")
        label = f"bred, seed on {'every channel' if seeds is None else '+'.join(seeds)}, {cyc} cycle(s)"
        out.append((label, seeds, int(cyc)))
    return out


def structure(
    analysis: str,
    checkpoint: str,
    loader: str,
    channels: list[str],
    designs: list[tuple[str, list[str] | None, int]],
    inits: int = 20,
    pairs: int = 4,
    alpha: float = 0.35,
    truth: str | None = None,
    first: str = "2008-01-10T00",
    last: str = "2009-12-01T00",
    seed: int = 2024,
) -> dict[str, Any]:
    """Correlations ``{design label: {"a-b": r}}`` of the perturbations (and of the analysis error with
    ``truth``) between every pair of ``channels``, at ``inits`` init times from ``first`` to ``last``."""
    from data_catalog.grid import area_weights
    from pipeline.engine import load_model, open_analysis
    from pipeline.experiment import init_times
    from pipeline.perturbations.methods import BredVectors, SphericalNoise
    from pipeline.seeds import generator

    ds = open_analysis(analysis)
    model = load_model(loader, checkpoint, torch.device("cpu"))
    mch = list(model.channels)
    missing = [c for c in channels if c not in mch]
    if len(channels) < 2 or missing:
        raise UserError(f"need two or more model channels; not in the model: {', '.join(missing) or '-'}")
    lat, lon = ds["latitude"].values, ds["longitude"].values
    rmse = model.rmse_at(hours=48)
    amp = torch.tensor([alpha * float(rmse[c]) for c in mch], dtype=torch.float32)
    dt = np.timedelta64(int(model.time_step.total_seconds()), "s").astype("timedelta64[h]")
    kmax = max([c for _, _, c in designs] + [0])
    starts = json.loads(ds.attrs.get("trajectory_starts", "[]"))
    hours = kmax * float(dt / np.timedelta64(1, "h"))
    times = [np.datetime64(t, "h") for t in init_times(first, last, inits, starts, breed_hours=hours)]
    methods: dict[str, Any] = {}
    for label, seeds, cycles in designs:
        if cycles == 0:
            methods[label] = SphericalNoise(amp, lat, lon)
        else:
            idx = [mch.index(c) for c in (channels if seeds is None else seeds) if c in mch]
            if seeds is not None and len(idx) != len(seeds):
                raise UserError(f"seed channel(s) {'+'.join(seeds)} not all model channels")
            methods[label] = BredVectors(amp, lat, lon, idx, cycles=cycles)

    def read(source: Any, when: list) -> torch.Tensor:
        da = source[mch].sel(time=when).to_array("channel").transpose("time", "channel", ...)
        return torch.from_numpy(np.asarray(da.values, dtype=np.float32))

    world = open_analysis(truth) if truth else None
    fields: dict[str, list[np.ndarray]] = (
        {"analysis error (analysis - truth)": []} if world is not None else {}
    )
    fields.update({label: [] for label in methods})
    for t in times:
        past = [t - k * dt for k in range(kmax, -1, -1)]
        a = read(ds, past)
        if world is not None:
            fields["analysis error (analysis - truth)"].append((a[-1] - read(world, [t])[0]).numpy()[None])
        gens = [generator(seed, t, 0, p) for p in range(pairs)]
        with torch.inference_mode():
            for label, m in methods.items():
                c = m.cycles
                fields[label].append(m(model, a[kmax - c :], past[kmax - c :], gens).numpy())
    w = area_weights(lat)
    sel = [mch.index(c) for c in channels]
    out: dict[str, Any] = {"inits": len(times), "pairs": pairs, "channels": channels, "rows": {}}
    for label, chunks in fields.items():
        x = np.concatenate(chunks)
        out["rows"][label] = {
            f"{channels[p]}-{channels[q]}": channel_correlation(x, sel[p], sel[q], w)
            for p in range(len(sel))
            for q in range(p + 1, len(sel))
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analysis", required=True)
    ap.add_argument("--checkpoint", required=True, help="one checkpoint folder")
    ap.add_argument("--loader", default="models.checkpoint:load_checkpoint")
    ap.add_argument("--channels", default="z200,z500,z800", help="channels to correlate (comma-separated)")
    ap.add_argument(
        "--designs", default="z500:3,all:3,all:1,noise", help="SEEDS:CYCLES or noise, comma-separated"
    )
    ap.add_argument("--truth", default=None, help="the world the analyses observe (adds the analysis error)")
    ap.add_argument("--inits", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--first", default="2008-01-10T00")
    ap.add_argument("--last", default="2009-12-01T00")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.inits < 1 or args.pairs < 1:
        raise UserError("--inits and --pairs must be >= 1")
    torch.set_num_threads(args.threads)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    res = structure(
        args.analysis, args.checkpoint, args.loader, channels, parse_designs(args.designs),
        inits=args.inits, pairs=args.pairs, alpha=args.alpha, truth=args.truth, first=args.first, last=args.last,
    )  # fmt: skip
    from rich.console import Console

    out = Console(soft_wrap=True, highlight=False).print
    keys = list(next(iter(res["rows"].values())))
    out(
        f"correlation between channels, {res['inits']} inits x {res['pairs']} pairs (area-weighted, uncentred)"
    )
    out("| perturbation | " + " | ".join(keys) + " |")
    out("|---|" + "---|" * len(keys))
    for label, row in res["rows"].items():
        out(f"| {label} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    run_module_main(main)
