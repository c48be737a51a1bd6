"""The prepared GPU check: ensemble-rollout throughput and bf16 autocast correctness in one short run.

Meant for a session that is lent a GPU for a few minutes (never for CI)::

    python -m benchmarks.gpu_check --write-subset runs/gpu-subset.zarr     # here, on CPU: 2008 states
    python -m benchmarks.gpu_check --analysis runs/gpu-subset.zarr --out OUT  # there, on the GPU

It writes ``OUT/gpu_check.json`` and prints a table:

1. **bf16 correctness** (shipped checkpoints, 8 inits in the first half of the held-out year 2008,
   40 steps): the
   latitude-weighted RMSE against the truth of the float32 rollout and of the bf16-autocast rollout
   (pointwise layers in bfloat16, spherical transforms in float32) per channel at 1 / 2 / 5 / 10 days, and
   their relative difference. bf16 passes when it is within 2 % of float32 at every lead to 5 days.
2. **Throughput** of ``pipeline.run_forecast`` (bred vectors, batched rollout, zarr output of every
   lead) on the device with the shipped checkpoints at 64x32: member-steps/s for float32 and bf16 and
   the peak device memory, for each ``--members``; plus the model alone (untrained default SFNO) at
   64x32, 128x64 and, unless ``--quick``, 721x1440: batched member-steps/s for each ``--batches``.
3. **Inline scoring** (fair CRPS and spectra, nothing but scores stored) for each ``--inline-members``:
   member-steps/s with the reductions and the CRPS sort on the CPU (``inline.on_device: false``) and on
   the device (the default), and the largest relative difference of the area-mean CRPS between them.

``--device cpu`` runs the same code on the CPU (bf16 is then a no-op): the smoke test does that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError, run_module_main

LEADS_H = (24, 48, 120, 240)
T0 = np.datetime64("2008-01-15T00")


def write_subset(path: Path, start: str = "2008-01-01", end: str = "2008-06-30T18") -> Path:
    """Copy the embedded world's states ``start .. end`` (held-out test year; ~25 MB) into a zarr store
    small enough to travel to the GPU machine, instead of building the world there."""
    from data_catalog.readers import open_reanalysis

    ds = open_reanalysis("builtin:sphere-swe").sel(time=slice(start, end)).load()
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bf16_check(analysis: str, device: torch.device, n_inits: int = 8) -> dict[str, Any]:
    """RMSE vs truth of float32 and bf16-autocast rollouts of every shipped checkpoint."""
    from data_catalog.readers import open_reanalysis
    from models import load_checkpoint, pretrained_dir
    from models.skill import rollout, weighted_rmse

    ckpts = sorted(pretrained_dir("sphere-swe").glob("seed-*"))
    ds = open_reanalysis(analysis).sel(time=slice("2008-01-01", "2008-06-30T18"))
    n_steps = max(LEADS_H) // 6
    idx = np.linspace(0, ds.sizes["time"] - n_steps - 1, n_inits).astype(int)
    out: dict[str, Any] = {"inits": [str(t)[:13] for t in ds.time.values[idx]], "lead_hours": list(LEADS_H)}
    rows = []
    for p in ckpts:
        m = load_checkpoint(p, device)
        ch = list(m.channels)
        arr = np.stack([ds[c].values for c in ch], axis=1).astype(np.float32)
        data = torch.from_numpy(arr)
        times = ds.time.values
        x0 = data[idx].to(device)
        res: dict[str, Any] = {"checkpoint": p.name}
        for name, flag in (("float32", False), ("bf16", True)):
            m.autocast_bf16 = flag
            _sync(device)
            t0 = time.perf_counter()
            fc = rollout(m, x0, times[idx], n_steps)
            _sync(device)
            res[f"{name}_seconds"] = time.perf_counter() - t0
            res[f"{name}_finite"] = bool(torch.isfinite(fc).all())
            rm = {}
            for h in LEADS_H:
                truth = data[idx + h // 6].to(device)
                r = weighted_rmse(fc[h // 6 - 1].float() - truth, m.latitude)
                rm[str(h)] = {c: float(r[i]) for i, c in enumerate(ch)}
            res[f"{name}_rmse"] = rm
        m.autocast_bf16 = False
        res["rel_diff"] = {
            h: {c: res["bf16_rmse"][h][c] / res["float32_rmse"][h][c] - 1 for c in res["float32_rmse"][h]}
            for h in res["float32_rmse"]
        }
        rows.append(res)
    out["checkpoints"] = rows
    worst = max(abs(v) for r in rows for h, d in r["rel_diff"].items() if int(h) <= 120 for v in d.values())
    out["max_rel_diff_to_5_days"] = worst
    out["bf16_ok"] = bool(worst <= 0.02 and all(r["bf16_finite"] for r in rows))
    return out


def _shipped_checkpoints() -> list[str]:
    from models import pretrained_dir

    return [str(p) for p in sorted(pretrained_dir("sphere-swe").glob("seed-*"))]


def _engine_config(
    analysis: str, device: torch.device, ckpts: list[str], n: int, **over: Any
) -> dict[str, Any]:
    """The check's forecast: shipped checkpoints, bred vectors (n members in all), 40 steps, one init."""
    cfg: dict[str, Any] = {
        "analysis": analysis,
        "init_times": ["2008-01-15T00"],
        "checkpoints": ckpts,
        "perturbation": {"method": "bred", "n_pairs": max(1, n // (2 * len(ckpts))), "alpha": 0.1},
        "lead_steps": 40,
        "batch_size": max(1, n // len(ckpts)),
        "device": device.type,
        "seed": 0,
        "progress": False,
    }
    return cfg | over


def engine_throughput(
    analysis: str, device: torch.device, members: list[int], work: Path, emit: Callable[[dict], None]
) -> list[dict[str, Any]]:
    """``pipeline.run_forecast`` member-steps/s (float32 and bf16) with the shipped checkpoints."""
    from pipeline import run_forecast

    ckpts = _shipped_checkpoints()
    rows = []
    for n in members:
        n_pairs = max(1, n // (2 * len(ckpts)))
        for bf16 in (False, True):
            cfg = _engine_config(
                analysis, device, ckpts, n, bf16=bf16, inline={"enabled": False}, output={"dtype": "float32"}
            )
            run_dir = work / f"run-{n}-{int(bf16)}"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            s = run_forecast(cfg, run_dir)
            _sync(device)
            wall = time.perf_counter() - t0
            m_total = 2 * n_pairs * len(ckpts)
            row = {"members": m_total, "bf16": bf16, "wall_s": wall, "member_steps_per_s": m_total * 40 / wall,
                   "complete": s["complete"], "peak_device_mib": _peak_mib(device)}  # fmt: skip
            rows.append(row)
            emit(row)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def inline_throughput(
    analysis: str, device: torch.device, members: list[int], work: Path, emit: Callable[[dict], None]
) -> list[dict[str, Any]]:
    """``run_forecast`` with inline scores only (fair CRPS, spectra; ``output.keep: none``), the
    reductions on the CPU (``inline.on_device: false``) and on the device, interleaved; each row also
    gives the largest relative difference of the area-mean CRPS from the CPU-reduced run's."""
    import xarray as xr

    from pipeline import run_forecast

    ckpts = _shipped_checkpoints()
    rows = []
    for n in members:
        n_pairs = max(1, n // (2 * len(ckpts)))
        ref = None
        for on_device in (False, True):
            inline = {"enabled": True, "crps": True, "spectra": True, "on_device": on_device}
            cfg = _engine_config(analysis, device, ckpts, n, inline=inline, output={"keep": "none"})
            run_dir = work / f"inline-{n}-{int(on_device)}"
            t0 = time.perf_counter()
            s = run_forecast(cfg, run_dir)
            _sync(device)
            wall = time.perf_counter() - t0
            crps = xr.open_zarr(run_dir / "scores.zarr")["crps_global"].values
            ref = crps if ref is None else ref
            m_total = 2 * n_pairs * len(ckpts)
            row = {"inline_members": m_total, "on_device": on_device, "wall_s": wall,
                   "member_steps_per_s": m_total * 40 / wall, "complete": s["complete"],
                   "crps_max_rel_diff": float(np.nanmax(np.abs(crps - ref) / np.abs(ref)))}  # fmt: skip
            rows.append(row)
            emit(row)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def model_throughput(
    device: torch.device, batches: list[int], quick: bool, emit: Callable[[dict], None]
) -> list[dict[str, Any]]:
    """The model alone (untrained default SFNO): batched member-steps/s per grid, batch and precision."""
    from benchmarks.common import untrained_model

    rows: list[dict[str, Any]] = []
    grids = [(32, 64), (64, 128)] + ([] if quick else [(721, 1440)])
    for nlat, nlon in grids:
        t0 = time.perf_counter()
        wrap = untrained_model(nlat, nlon, 0).to(device)
        build_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in wrap.net.parameters())
        for b in batches:
            if nlat > 200 and b > 4:
                continue
            x = torch.randn(b, len(wrap.channels), nlat, nlon, device=device)
            for bf16 in (False, True):
                wrap.autocast_bf16 = bf16
                row: dict[str, Any] = {"grid": f"{nlon}x{nlat}", "batch": b, "bf16": bf16, "params": n_params,
                                       "build_s": build_s}  # fmt: skip
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    wrap.step(x, T0)  # warm-up
                    _sync(device)
                    reps = 5
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        wrap.step(x, T0)
                    _sync(device)
                    dt = (time.perf_counter() - t0) / reps
                    row.update(member_steps_per_s=b / dt, peak_device_mib=_peak_mib(device))
                except torch.cuda.OutOfMemoryError:
                    row["oom"] = True
                    torch.cuda.empty_cache()
                rows.append(row)
                emit(row)
        del wrap
    return rows


def main(argv: list[str] | None = None) -> int | None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--analysis", default="builtin:sphere-swe", help="world store (or a --write-subset copy)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json (default: print only)")
    ap.add_argument("--members", default="64,256,1024", help="engine ensemble sizes (comma-separated)")
    ap.add_argument("--batches", default="1,8,32,128", help="model-only batch sizes (comma-separated)")
    ap.add_argument("--inline-members", default="1024",
                    help="ensemble sizes of the inline-scoring runs, reductions on CPU vs device ('' = none)")  # fmt: skip
    ap.add_argument("--inits", type=int, default=8, help="inits of the bf16 check")
    ap.add_argument("--quick", action="store_true", help="skip the 721x1440 model")
    ap.add_argument("--write-subset", default=None, metavar="PATH", help="write the 2008 states and exit")
    args = ap.parse_args(argv)
    if args.write_subset:
        print(f"wrote {write_subset(Path(args.write_subset))}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device here; pass --device cpu to run the check on the CPU")
    device = torch.device(args.device)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = Path(args.out) if args.out else None

    def save() -> None:  # after every row: a run cut short still leaves what it measured
        res["seconds"] = time.perf_counter() - t0
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_check.json").write_text(json.dumps(res, indent=1))

    def emit(r: dict) -> None:
        kind = "inline" if "inline_members" in r else "engine" if "members" in r else "model"
        res["throughput"][kind].append(r)
        save()
        if kind == "inline":
            print(f"inline scores {r['inline_members']} members on_device={r['on_device']}: "
                  f"{r['member_steps_per_s']:.1f} member-steps/s ({r['wall_s']:.2f} s), "
                  f"CRPS max rel diff {r['crps_max_rel_diff']:.1e}", flush=True)  # fmt: skip
            return
        rate = (
            "OOM"
            if r.get("oom")
            else f"{r['member_steps_per_s']:.1f} member-steps/s, peak {r['peak_device_mib']} MiB"
        )
        what = f"engine {r['members']} members" if "members" in r else f"model {r['grid']} batch {r['batch']}"
        print(f"{what} bf16={r['bf16']}: {rate}", flush=True)

    res["bf16"] = bf16_check(args.analysis, device, args.inits)
    save()
    b = res["bf16"]
    print(f"device {res['device']}: bf16 max |rel RMSE diff| to 5 days {b['max_rel_diff_to_5_days']:.4f} "
          f"({'ok' if b['bf16_ok'] else 'NOT ok'})", flush=True)  # fmt: skip
    res["throughput"] = {"model": [], "engine": [], "inline": []}
    model_throughput(device, [int(v) for v in args.batches.split(",")], args.quick, emit)
    with tempfile.TemporaryDirectory(prefix="wxens-gpu-") as tmp:
        engine_throughput(args.analysis, device, [int(v) for v in args.members.split(",")], Path(tmp), emit)
        if args.inline_members:
            sizes = [int(v) for v in args.inline_members.split(",")]
            inline_throughput(args.analysis, device, sizes, Path(tmp), emit)
    save()
    return 0


if __name__ == "__main__":
    run_module_main(main)
