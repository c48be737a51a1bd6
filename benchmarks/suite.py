"""The suite driver: parse flags, run the figures, write ``RESULTS.md`` and ``results.json``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Context, machine_info, matmul_peak

log = logging.getLogger("benchmarks")

FIGURES = ("ensemble", "scoring", "spectra", "huge", "storage")
HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="wxens performance suite")
    p.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--only", action="append", choices=FIGURES, help="run only this figure (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see docs/benchmarks.md)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median)")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md / results.json go")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--huge-members", default=None, help="comma-separated member counts of figure 4")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="merge these results.json files (runs of different figures) into --out and exit",
    )
    return p.parse_args(argv)


def merge(files: list[Path], out: Path) -> dict[str, Any]:
    """One results dict from several runs of the suite (each figure keeps its own run's machine line,
    command and matmul peak, since its ratios come from that run)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    res = dict(runs[0])
    res["figures"] = {}
    res["runs"] = []
    for i, r in enumerate(runs):
        for row in r["figures"].get("huge", {}).get("rows", []):
            row.setdefault("run", i + 1)
        res["runs"].append(
            {k: r[k] for k in ("command", "machine", "matmul_peak", "seconds") if k in r}
            | {"figures": list(r["figures"])}
        )
        for name, fig in r["figures"].items():
            if name == "huge" and "huge" in res["figures"] and "rows" in fig:
                from benchmarks.huge import summarize

                prev = res["figures"]["huge"]
                steps = fig["rows"][0]["steps"]
                merged = summarize(prev["rows"] + fig["rows"], steps)
                merged["command"] = prev["command"] + " ; " + r["command"]
                merged["seconds"] = prev.get("seconds", 0) + fig.get("seconds", 0)
                res["figures"]["huge"] = merged
                continue
            fig = dict(fig)
            fig["command"] = r["command"]
            fig["matmul_peak"] = fig.get("matmul_peak", r["matmul_peak"])
            res["figures"][name] = fig
    h = res["figures"].get("huge")
    if h and "rows" in h:  # one summary (ratios, fit, extrapolation) over all huge-ensemble rows
        from benchmarks.huge import summarize

        res["figures"]["huge"] = h | summarize(h["rows"], h["rows"][0]["steps"])
    res["command"] = " ; ".join(r["command"] for r in runs)
    res["seconds"] = max(r.get("seconds", 0) for r in runs)  # the runs ran in parallel
    _write(res, out)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.merge:
        merge(args.merge, args.out)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("distributed", "numcodecs", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available on this machine", file=sys.stderr)
        return 2
    import os

    n_threads = args.threads
    torch.set_num_threads(n_threads)
    device = torch.device(args.device)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="wxens-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        device=device,
        quick=args.quick,
        workdir=workdir,
        threads=n_threads,
        repeats=args.repeats or (1 if args.quick else 3),
        warmup=1,
    )
    selected = args.only or list(FIGURES)
    command = "python -m benchmarks " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine_info(n_threads, device),
        "quick": args.quick,
        "figures": {},
    }
    t_all = time.perf_counter()
    peak = matmul_peak(ctx)
    results["matmul_peak"] = peak
    log.info("fp32 matmul peak %.1f GFLOP/s (n=%d, %d threads)", peak["gflops"], peak["n"], n_threads)
    for name in selected:
        t0 = time.perf_counter()
        log.info("figure %s ...", name)
        try:
            fig = _run_figure(name, ctx, peak, args)
        except Exception as exc:  # a failing figure is reported, the others still run
            log.error("figure %s failed: %s", name, exc)
            fig = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        fig["seconds"] = time.perf_counter() - t0
        results["figures"][name] = fig
        log.info("figure %s done in %.1f s", name, fig["seconds"])
        results["seconds"] = time.perf_counter() - t_all
        results["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        _write(results, args.out)  # after every figure: a killed run keeps what it measured
    log.info(
        "wrote %s and %s (%.0f s)", args.out / "RESULTS.md", args.out / "results.json", results["seconds"]
    )
    if tmp is not None:
        tmp.cleanup()
    return 1 if any("error" in f for f in results["figures"].values()) else 0


def _write(results: dict[str, Any], out: Path) -> None:
    from benchmarks.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    (out / "RESULTS.md").write_text(write_report(results))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _run_figure(name: str, ctx: Context, peak: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    if name == "ensemble":
        from benchmarks import ensemble

        return ensemble.run(ctx, peak)
    if name == "scoring":
        from benchmarks import scoring

        return scoring.run(ctx)
    if name == "spectra":
        from benchmarks import spectra_efi

        return spectra_efi.run(ctx)
    if name == "huge":
        from benchmarks import huge

        members = [int(m) for m in args.huge_members.split(",")] if args.huge_members else None
        return huge.run(ctx, members, repeats=args.repeats)  # --repeats: rounds of the sizes
    if name == "storage":
        from benchmarks import storage

        return storage.run(ctx)
    raise ValueError(name)
