"""Profile of the ensemble rollout: ``python -m benchmarks.profile [--members 32 --steps 8 --threads 1]``.

Prints (1) where ``pipeline.run_forecast`` spends its wall time (cProfile, cumulative, by function)
and (2) the top torch operators of the batched ``model.step`` (torch.profiler, self CPU time), the
figures recorded in docs/benchmarks.md. For a sampling profile of the same run use py-spy::

    py-spy record -r 200 -f raw -o rollout.txt -- python -m benchmarks.profile --no-torch
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def summarize_pyspy(path: Path, within: str = "run_forecast", top: int = 15) -> str:
    """Inclusive and self sample shares of a py-spy ``-f raw`` (collapsed stacks) file, restricted to
    stacks that pass through a frame whose name starts with ``within``."""
    import re
    from collections import Counter

    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \(.*?([\w./<>-]+):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        names = [f.split(" (")[0] for f in frames]
        if within not in names:
            continue
        frames = frames[names.index(within) :]
        k = int(n)
        total += k
        for f in set(frames):
            incl[f] += k
        self_[frames[-1]] += k
    lines = [f"{total} samples inside {within}", "", "| inclusive % | function |", "|---|---|"]
    lines += [f"| {100 * v / total:.1f} | `{f}` |" for f, v in incl.most_common(top)]
    lines += ["", "| self % | function |", "|---|---|"]
    lines += [f"| {100 * v / total:.1f} | `{f}` |" for f, v in self_.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--nlat", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-torch", action="store_true", help="skip the torch.profiler part")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--summarize", type=Path, default=None, help="summarise a py-spy raw file and exit")
    a = p.parse_args(argv)
    if a.summarize is not None:
        sys.stdout.write(summarize_pyspy(a.summarize, top=a.rows))
        return 0
    torch.set_num_threads(a.threads)
    from benchmarks.common import CHANNELS, write_analysis, write_checkpoints
    from benchmarks.ensemble import INIT, wxens_config
    from models.checkpoint import load_checkpoint
    from pipeline import run_forecast

    nlat, nlon = a.nlat, 2 * a.nlat
    with tempfile.TemporaryDirectory(prefix="wxens-prof-") as tmp:
        root = Path(tmp)
        ckpt = write_checkpoints(root / "ckpt", nlat, nlon, [0])[0]
        ana = write_analysis(root / "ana.zarr", nlat, nlon, periods=12 + a.steps)
        cfg = wxens_config(ana, ckpt, a.members, a.steps, "cpu")
        run_forecast(cfg, root / "warm")  # warm-up
        shutil.rmtree(root / "warm")
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        run_forecast(cfg, root / "run")
        prof.disable()
        wall = time.perf_counter() - t
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(a.rows + 15)
        sys.stdout.write(f"## run_forecast: {a.members} members x {a.steps} steps, {nlon}x{nlat}, ")
        sys.stdout.write(
            f"{a.threads} thread(s): {wall:.2f} s, {a.members * a.steps / wall:.1f} member-steps/s\n\n"
        )
        sys.stdout.write(out.getvalue())
        if a.no_torch:
            return 0
        from torch.profiler import ProfilerActivity, profile

        model = load_checkpoint(ckpt)
        g = torch.Generator().manual_seed(0)
        x = model._mean + model._std * torch.randn(a.members, len(CHANNELS), nlat, nlon, generator=g)
        for _ in range(2):
            model.step(x, INIT)
        with profile(activities=[ProfilerActivity.CPU]) as tp:
            for _ in range(a.steps):
                model.step(x, INIT)
        sys.stdout.write(f"\n## torch.profiler: model.step, batch {a.members}, {a.steps} steps\n\n")
        sys.stdout.write(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
