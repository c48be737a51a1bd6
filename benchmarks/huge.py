"""Figure 4: the huge ensemble (HENS shape) with inline scoring, nothing but scores stored.

Each size runs in a fresh process (``python -m benchmarks.huge``) so that its peak RSS
(``VmHWM`` of ``/proc/self/status``) belongs to that size alone (not ``ru_maxrss``: Linux keeps it
across ``exec``, so a worker started by a large parent reported the parent's peak). Members are ``checkpoints x
per-checkpoint`` bred-vector members (HENS: 29 x 256 = 7424), 64x32, 40 steps (10 days), fixed member
block (the batch), ``output.keep: none``, inline CRPS / spread-skill / rank histogram / spectra.
The 29 "checkpoints" are untrained copies of the default SFNO with different seeds, saved with
``models.checkpoint.save_checkpoint``.

:func:`run` first runs the smallest size once as a warm-up (kept apart, in no ratio or fit), then each
size; :func:`summarize` fits ``time = a + b * members`` only from :data:`MIN_FIT_SIZES` sizes on and
reports its largest residual next to the time per member-step at each size and the marginal cost per
member-step between consecutive sizes.
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
    return [8, 16, 32] if ctx.quick else [64, 256, 512, 1024]


MIN_FIT_SIZES = 3  # an affine fit through two sizes has zero residual by construction


def _peak_rss_bytes() -> int:
    """Peak resident set of this process: ``VmHWM`` (reset by ``exec``, unlike ``ru_maxrss``), or
    ``ru_maxrss`` where ``/proc`` is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _RssSampler:
    """Peaks of ``VmRSS`` / ``RssAnon`` / ``RssFile`` (``/proc/self/status``, Linux) sampled by a
    thread, and (every ``disk_every`` samples) of the bytes of the inline CRPS spills under ``spill_root``
    (transient: deleted once an init is final)."""

    def __init__(self, interval: float = 0.05, spill_root: Path | None = None, disk_every: int = 10) -> None:
        import threading

        self.interval = interval
        self.spill_root = spill_root
        self.disk_every = disk_every
        self._n = 0
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
            if key in ("VmRSS", "RssAnon", "RssFile"):
                kib = int(rest.split()[0])
                self.peaks[key] = max(self.peaks.get(key, 0), kib * 1024)
        self._n += 1
        if self.spill_root is not None and self._n % self.disk_every == 1:
            total = 0
            for p in self.spill_root.glob("*/spill.npy"):
                try:
                    total += p.stat().st_size
                except OSError:  # deleted by the finalisation meanwhile
                    pass
            self.peaks["spill_bytes"] = max(self.peaks.get("spill_bytes", 0), total)

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


def worker(
    members: int, steps: int, batch: int, threads: int, workdir: Path, device: str = "cpu"
) -> dict[str, Any]:
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
        "device": device,
        "seed": 0,
        "progress": False,
        "inline": {"enabled": True, "crps": True, "spectra": True},
        "output": {"keep": "none"},
    }
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    rss0 = _peak_rss_bytes()
    sampler = _RssSampler(spill_root=run_dir / "inline")
    t0 = time.perf_counter()
    with sampler:
        summary = run_forecast(cfg, run_dir)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    peak = _peak_rss_bytes()
    # the per-unit member spills of the inline CRPS are transient (deleted once an init is final):
    # what is left after the run (0 for a complete run) and the peak seen by the sampler
    spill_left = sum(p.stat().st_size for p in (run_dir / "inline").rglob("*spill*.npy"))
    out = {
        "members": members,
        "checkpoints": n_ckpt,
        "per_checkpoint": per,
        "steps": steps,
        "batch": summary["block"],
        "threads": threads,
        "device": device,
        "wall_s": wall,
        "rollout_s": summary["seconds"],
        "member_steps": members * steps,
        "member_steps_per_s": members * steps / wall,
        "s_per_member_step": wall / (members * steps),
        "cpu_s": cpu,
        "cpu_s_per_member_step": cpu / (members * steps),
        # VmHWM: the whole process (includes the set-up before the run: imports, checkpoints)
        "peak_rss_mib": round(peak / 2**20, 1),
        "rss_before_run_mib": round(rss0 / 2**20, 1),
        # sampled every 50 ms during run_forecast only: total, anonymous memory (heap, tensors) and
        # file-backed pages (shared libraries; memory-mapped files)
        "peak_rss_run_mib": sampler.peak_mib("VmRSS"),
        "peak_rss_anon_mib": sampler.peak_mib("RssAnon"),
        "peak_rss_file_mib": sampler.peak_mib("RssFile"),
        "complete": summary["complete"],
        "scores_bytes": dir_bytes(run_dir / "scores.zarr") if (run_dir / "scores.zarr").exists() else 0,
        # peak bytes of the (transient) CRPS spills on disk, sampled every 0.5 s
        "spill_bytes": sampler.peaks.get("spill_bytes", 0),
        "spill_bytes_left": spill_left,
        "run_dir_bytes": dir_bytes(run_dir),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _spawn(
    members: int, steps: int, batch: int, threads: int, workdir: Path, device: str = "cpu"
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.huge",
        "--members",
        str(members),
        "--steps",
        str(steps),
        "--batch",
        str(batch),
        "--threads",
        str(threads),
        "--workdir",
        str(workdir),
        "--device",
        device,
    ]
    log.info("huge ensemble: %d members (%s)", members, " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"huge worker ({members} members) failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    ctx: Context, members: list[int] | None = None, warmup: bool = True, repeats: int | None = None
) -> dict[str, Any]:
    """One fresh process per size and repeat; first (``warmup``) a run of the smallest size whose
    numbers are kept apart and left out of every ratio and fit (it pays the checkpoints, the analysis
    store and a cold page cache). The sizes run ``repeats`` times (2, 1 with ``--quick``) in
    interleaved order and each size keeps its fastest run (wall), as ``timeit`` does: on a shared
    machine a size's rate varies by 10-15 % between runs, which a single run per size turns into a
    spurious non-linearity; every repeat's wall time is kept in ``repeat_wall_s``."""
    members = sorted(members or default_members(ctx))
    steps = 4 if ctx.quick else 40
    batch = 8 if ctx.quick else 32
    repeats = repeats or (1 if ctx.quick else 2)
    work = ctx.workdir / "huge"
    dev = ctx.device.type
    warm = _spawn(members[0], steps, batch, ctx.threads, work, dev) if warmup else None
    runs: dict[int, list[dict[str, Any]]] = {m: [] for m in members}
    for rep in range(repeats):
        for m in members:
            r = _spawn(m, steps, batch, ctx.threads, work, dev)
            runs[m].append(r)
            log.info(
                "huge %d (repeat %d/%d): %.1f s, %.1f member-steps/s, peak RSS %.0f MiB",
                m,
                rep + 1,
                repeats,
                r["wall_s"],
                r["member_steps_per_s"],
                r["peak_rss_mib"],
            )
    out = summarize([best_of(runs[m]) for m in members], steps)
    out["warmup"] = warm
    out["repeats"] = repeats
    return out


def best_of(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's row from its repeats: the times of the fastest run (wall), the worst ``peak_*`` memory
    and spill figures of all runs, and every run's wall time in ``repeat_wall_s``."""
    best = dict(min(repeats, key=lambda r: r["wall_s"]))
    best["repeat_wall_s"] = [r["wall_s"] for r in repeats]
    for k in [k for k in best if k.startswith("peak_")]:
        vals = [r[k] for r in repeats if r.get(k) is not None]
        best[k] = max(vals) if vals else best[k]
    return best


def _affine(x: list[float], y: list[float]) -> dict[str, float] | None:
    """Least-squares ``y = a + b x`` over at least :data:`MIN_FIT_SIZES` points (None with fewer):
    ``fixed`` a, ``per_member`` b, ``max_rel_residual`` max |a + b x - y| / y."""
    import numpy as np

    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if np.unique(xa).size < MIN_FIT_SIZES:
        return None
    b, a = np.polyfit(xa, ya, 1)
    return {
        "fixed": float(a),
        "per_member": float(b),
        "max_rel_residual": float(np.max(np.abs(a + b * xa - ya) / ya)),
    }


def _linearity(rows: list[dict[str, Any]], key: str, steps: int) -> dict[str, Any]:
    """How linear ``rows[key]`` (seconds) is in members: the affine fit, the time per member-step at
    each size, the marginal time per member-step between consecutive sizes
    ``(t_k - t_{k-1}) / ((m_k - m_{k-1}) steps)``, and the largest deviation of a marginal cost
    from the last one (a straight line has equal marginal costs)."""
    m = [float(r["members"]) for r in rows]
    t = [float(r[key]) for r in rows]
    per = [ti / (mi * steps) for mi, ti in zip(m, t, strict=True)]
    marg = [(t[k] - t[k - 1]) / ((m[k] - m[k - 1]) * steps) for k in range(1, len(m))]
    dev = max((abs(x / marg[-1] - 1) for x in marg), default=None) if marg and marg[-1] > 0 else None
    return {
        "fit": _affine(m, t),
        "s_per_member_step": per,
        "marginal_s_per_member_step": marg,
        "marginal_max_rel_deviation": dev if len(marg) >= 2 else None,
    }


def summarize(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Ratios against the smallest size, the linearity of wall and CPU time in members (affine fit
    ``time = a + b * members`` with a fixed start-up cost ``a``, only from :data:`MIN_FIT_SIZES` sizes
    on; marginal cost per member-step), the memory targets and the (labelled) HENS extrapolation."""
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
        run_rss, base_rss = r.get("peak_rss_run_mib"), base.get("peak_rss_run_mib")
        r["run_rss_ratio_vs_smallest"] = ratio(run_rss, base_rss) if run_rss and base_rss else None
    lin_w = _linearity(rows, "wall_s", steps)
    lin_c = _linearity(rows, "cpu_s", steps)
    fw, fc = lin_w["fit"], lin_c["fit"]
    hens = HENS_CHECKPOINTS * HENS_PER_CHECKPOINT
    big = rows[-1]
    extrap = None
    if fw is not None and fc is not None and fw["per_member"] > 0 and big["members"] < hens:
        extrap = {
            "members": hens,
            "from_members": big["members"],
            "wall_s": fw["fixed"] + fw["per_member"] * hens,
            "cpu_s": fc["fixed"] + fc["per_member"] * hens,
            "spill_bytes": big["spill_bytes"] / big["members"] * hens,
            "note": (
                f"affine fit time = a + b * members over {len(rows)} measured sizes, evaluated at "
                f"{hens}; spill bytes = peak transient spills of the largest size scaled by members; "
                "not a measurement"
            ),
        }
    fit = None
    if fw is not None and fc is not None:
        fit = {
            "wall_fixed_s": fw["fixed"],
            "wall_s_per_member": fw["per_member"],
            "wall_max_rel_residual": fw["max_rel_residual"],
            "cpu_fixed_s": fc["fixed"],
            "cpu_s_per_member": fc["per_member"],
            "cpu_max_rel_residual": fc["max_rel_residual"],
            "sizes": len(rows),
        }

    def within(f: dict[str, float] | None) -> bool | None:
        return None if f is None else bool(f["per_member"] > 0 and f["max_rel_residual"] <= 0.15)

    run_ratio = rows[-1].get("run_rss_ratio_vs_smallest")
    return {
        "rows": rows,
        "fit": fit,
        "linearity": {"wall": lin_w, "cpu": lin_c},
        "hens_extrapolation": extrap,
        "targets": {
            f"wall time affine-linear in members (>= {MIN_FIT_SIZES} sizes, max residual of the fit <= 15%)": within(
                fw
            ),
            f"CPU time affine-linear in members (>= {MIN_FIT_SIZES} sizes, max residual of the fit <= 15%)": within(
                fc
            ),
            "peak RSS <= 4 GiB": all(r["peak_rss_mib"] <= 4096 for r in rows),
            "peak anonymous RSS <= 4 GiB": all((r.get("peak_rss_anon_mib") or 0) <= 4096 for r in rows),
            "peak RSS bounded (largest / smallest <= 1.5)": (rows[-1]["rss_ratio_vs_smallest"] or 0) <= 1.5,
            "peak RSS during the run bounded (largest / smallest <= 1.5)": (
                None if run_ratio is None else run_ratio <= 1.5
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.huge")
    p.add_argument("--members", type=int, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    a.workdir.mkdir(parents=True, exist_ok=True)
    res = worker(a.members, a.steps, a.batch, a.threads, a.workdir, a.device)
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
