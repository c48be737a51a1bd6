"""Figure 4: the huge ensemble (HENS shape) with inline scoring, nothing but scores stored.

Each size runs in a fresh process (``python -m benchmarks.huge``) so that its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that size alone. Members are ``checkpoints x
per-checkpoint`` bred-vector members (HENS: 29 x 256 = 7424), 64x32, 40 steps (10 days), fixed member
block (the batch), ``output.keep: none``, inline CRPS / spread-skill / rank histogram / spectra.
The 29 "checkpoints" are untrained copies of the default SFNO with different seeds, saved with
``models.checkpoint.save_checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, dir_bytes, ratio

log = logging.getLogger(__name__)

NLAT, NLON = 32, 64
HENS_CHECKPOINTS, HENS_PER_CHECKPOINT = 29, 256


def layout_for(members: int) -> tuple[int, int]:
    """``(checkpoints, per_checkpoint)``: up to 256 per checkpoint, as HENS."""
    if members <= HENS_PER_CHECKPOINT:
        return 1, members
    if members % HENS_PER_CHECKPOINT:
        raise ValueError(f"{members} members is not a multiple of {HENS_PER_CHECKPOINT}")
    return members // HENS_PER_CHECKPOINT, HENS_PER_CHECKPOINT


def default_members(ctx: Context) -> list[int]:
    return [8, 16] if ctx.quick else [32, 64, 128]


class _RssSampler:
    """Peaks of ``RssAnon`` / ``RssFile`` (``/proc/self/status``, Linux) sampled by a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                kib = int(rest.split()[0])
                self.peaks[key] = max(self.peaks.get(key, 0), kib * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak_mib(self, key: str) -> float | None:
        return round(self.peaks[key] / 2**20, 1) if key in self.peaks else None


def worker(members: int, steps: int, batch: int, threads: int, workdir: Path) -> dict[str, Any]:
    """One huge-ensemble run in this process; returns time, peak RSS and disk use."""
    import torch

    torch.set_num_threads(threads)
    from benchmarks.common import write_analysis, write_checkpoints
    from pipeline import run_forecast

    n_ckpt, per = layout_for(members)
    ckpts = write_checkpoints(workdir / "ckpt", NLAT, NLON, list(range(n_ckpt)))
    ana = write_analysis(workdir / f"analysis-{NLON}x{NLAT}-{steps}.zarr", NLAT, NLON, periods=steps + 8)
    run_dir = workdir / f"run-{members}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = {
        "analysis": str(ana),
        "init_times": ["2008-01-02T00"],
        "checkpoints": ckpts,
        "perturbation": {"method": "bred", "n_pairs": per // 2, "alpha": 0.35, "cycles": 3},
        "lead_steps": steps,
        "batch_size": min(batch, per),
        "device": "cpu",
        "seed": 0,
        "progress": False,
        "inline": {"enabled": True, "crps": True, "spectra": True},
        "output": {"keep": "none"},
    }
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    rss0 = ru0.ru_maxrss * 1024
    sampler = _RssSampler()
    t0 = time.perf_counter()
    with sampler:
        summary = run_forecast(cfg, run_dir)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # the per-unit member spills of the inline CRPS (kept on disk after the run, see docs/benchmarks.md)
    spill = sum(p.stat().st_size for p in (run_dir / "inline").rglob("*spill*.npy"))
    out = {
        "members": members,
        "checkpoints": n_ckpt,
        "per_checkpoint": per,
        "steps": steps,
        "batch": summary["block"],
        "threads": threads,
        "wall_s": wall,
        "rollout_s": summary["seconds"],
        "member_steps": members * steps,
        "member_steps_per_s": members * steps / wall,
        "s_per_member_step": wall / (members * steps),
        "cpu_s": cpu,
        "cpu_s_per_member_step": cpu / (members * steps),
        "peak_rss_mib": round(peak / 2**20, 1),
        "rss_before_run_mib": round(rss0 / 2**20, 1),
        # peak RSS split (sampled every 50 ms): anonymous memory (heap, tensors) vs file-backed pages
        # (the memory-mapped inline CRPS spills, reclaimable page cache)
        "peak_rss_anon_mib": sampler.peak_mib("RssAnon"),
        "peak_rss_file_mib": sampler.peak_mib("RssFile"),
        "complete": summary["complete"],
        "scores_bytes": dir_bytes(run_dir / "scores.zarr") if (run_dir / "scores.zarr").exists() else 0,
        "spill_bytes": spill,
        "run_dir_bytes": dir_bytes(run_dir),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def run(ctx: Context, members: list[int] | None = None) -> dict[str, Any]:
    members = members or default_members(ctx)
    steps = 4 if ctx.quick else 40
    batch = 8 if ctx.quick else 32
    rows = []
    for m in members:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.huge",
            "--members",
            str(m),
            "--steps",
            str(steps),
            "--batch",
            str(batch),
            "--threads",
            str(ctx.threads),
            "--workdir",
            str(ctx.workdir / "huge"),
        ]
        log.info("huge ensemble: %d members (%s)", m, " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"huge worker ({m} members) failed: {proc.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log.info(
            "huge %d: %.1f s, %.1f member-steps/s, peak RSS %.0f MiB",
            m,
            rows[-1]["wall_s"],
            rows[-1]["member_steps_per_s"],
            rows[-1]["peak_rss_mib"],
        )
    return summarize(rows, steps)


def _affine(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b, max |residual| / y)``."""
    import numpy as np

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 2:
        return 0.0, float(ya[0] / xa[0]), 0.0
    b, a = np.polyfit(xa, ya, 1)
    return float(a), float(b), float(np.max(np.abs(a + b * xa - ya) / ya))


def summarize(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Ratios against the smallest size, an affine fit ``time = a + b * members`` (fixed start-up cost
    ``a``, cost per member ``b``), the memory targets and the (labelled) HENS extrapolation."""
    rows = sorted(rows, key=lambda r: r["members"])
    base = rows[0]
    for r in rows:
        r["time_ratio_vs_smallest"] = ratio(r["wall_s"], base["wall_s"])
        r["members_ratio_vs_smallest"] = r["members"] / base["members"]
        r["time_per_member_step_vs_smallest"] = ratio(r["s_per_member_step"], base["s_per_member_step"])
        r["cpu_per_member_step_vs_smallest"] = ratio(
            r["cpu_s_per_member_step"], base["cpu_s_per_member_step"]
        )
        r["rss_ratio_vs_smallest"] = ratio(r["peak_rss_mib"], base["peak_rss_mib"])
    m = [float(r["members"]) for r in rows]
    a_w, b_w, res_w = _affine(m, [r["wall_s"] for r in rows])
    a_c, b_c, res_c = _affine(m, [r["cpu_s"] for r in rows])
    hens = HENS_CHECKPOINTS * HENS_PER_CHECKPOINT
    big = rows[-1]
    extrap = {
        "members": hens,
        "from_members": big["members"],
        "wall_s": a_w + b_w * hens,
        "cpu_s": a_c + b_c * hens,
        "spill_bytes": big["spill_bytes"] / big["members"] * hens,
        "note": "affine fit time = a + b * members over the measured sizes, evaluated at 7424; not a measurement",
    }
    return {
        "rows": rows,
        "fit": {
            "wall_fixed_s": a_w,
            "wall_s_per_member": b_w,
            "wall_max_rel_residual": res_w,
            "cpu_fixed_s": a_c,
            "cpu_s_per_member": b_c,
            "cpu_max_rel_residual": res_c,
        },
        "hens_extrapolation": extrap if big["members"] < hens else None,
        "targets": {
            "wall time affine-linear in members (max residual of the fit <= 15%)": res_w <= 0.15,
            "CPU time affine-linear in members (max residual of the fit <= 15%)": res_c <= 0.15,
            "peak RSS <= 4 GiB": all(r["peak_rss_mib"] <= 4096 for r in rows),
            "peak anonymous RSS <= 4 GiB": all((r.get("peak_rss_anon_mib") or 0) <= 4096 for r in rows),
            "peak RSS bounded (largest / smallest <= 1.5)": (rows[-1]["rss_ratio_vs_smallest"] or 0) <= 1.5,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.huge")
    p.add_argument("--members", type=int, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    a.workdir.mkdir(parents=True, exist_ok=True)
    res = worker(a.members, a.steps, a.batch, a.threads, a.workdir)
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
