"""Shared pieces of the benchmark suite: machine description, timing, peak memory, matmul peak, and
the untrained SFNO checkpoints / synthetic analyses the figures run on.

Every figure is a ratio against a baseline measured in the same run; absolute numbers are reported
beside it. Timings are medians over ``repeats`` after ``warmup`` untimed calls.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

log = logging.getLogger(__name__)

#: channels of the embedded world (and of the shipped sphere-swe checkpoints)
CHANNELS = ("z500", "u500", "v500", "vo500")


@dataclass
class Context:
    """What every figure needs: device, sizes, scratch directory, thread count."""

    device: torch.device
    quick: bool
    workdir: Path
    threads: int
    repeats: int = 3
    warmup: int = 1
    notes: list[str] = field(default_factory=list)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------------ machine
def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), cores, RAM, torch version, threads, GPU (if any)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in have)
                break
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": psutil.cpu_count(logical=True),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    for mod in ("numpy", "xarray", "zarr", "dask", "torch_harmonics", "xskillscore", "earth2studio"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod.replace("_", "-"))
        except Exception:
            info[mod] = "not installed"
    return info


# -------------------------------------------------------------------------------------------- timing
def timeit(
    fn: Callable[[], Any], ctx: Context, repeats: int | None = None, warmup: int | None = None
) -> dict:
    """Median wall time of ``fn()`` over ``repeats`` after ``warmup`` calls (seconds), and the median
    CPU time of this process (``time.process_time``: all its threads), which the other jobs on a shared
    machine disturb much less than the wall time."""
    r = ctx.repeats if repeats is None else repeats
    w = ctx.warmup if warmup is None else warmup
    for _ in range(w):
        fn()
        ctx.sync()
    times, cpu = [], []
    for _ in range(r):
        gc.collect()
        ctx.sync()
        c = time.process_time()
        t = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "cpu_median_s": statistics.median(cpu),
        "cpu_min_s": min(cpu),
    }


class PeakRSS:
    """Peak resident set size while the block runs, sampled every ``interval`` s (psutil).

    ``peak_delta`` is the peak minus the RSS on entry; on CUDA ``cuda_peak`` is
    ``torch.cuda.max_memory_allocated`` over the block.
    """

    def __init__(self, device: torch.device | None = None, interval: float = 0.02) -> None:
        self.interval = interval
        self.device = device
        self.proc = psutil.Process()
        self.start = 0
        self.peak = 0
        self.cuda_peak: int | None = None
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        if self.device is not None and self.device.type == "cuda":
            self.cuda_peak = int(torch.cuda.max_memory_allocated(self.device))

    @property
    def peak_delta(self) -> int:
        return self.peak - self.start


def mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def matmul_peak(ctx: Context, n: int | None = None) -> dict[str, float]:
    """Measured fp32 matmul rate (GFLOP/s) of an ``n x n`` sgemm on this device, ``2 n^3`` flops."""
    n = n or (512 if ctx.quick else 2048)
    if ctx.device.type == "cuda":
        n = 8192
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(ctx.device)
    b = torch.randn(n, n, generator=g).to(ctx.device)
    reps = 3 if ctx.device.type == "cpu" else 10

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    t = timeit(run, ctx, repeats=5, warmup=1)
    # best of the repeats: the machine is shared, the peak is what the hardware can do
    return {
        "n": n,
        "gflops": 2 * n**3 * reps / t["min_s"] / 1e9,
        "gflops_median": 2 * n**3 * reps / t["median_s"] / 1e9,
        # per second of this process's CPU time (what the other jobs on a shared machine disturb least)
        "gflops_cpu": 2 * n**3 * reps / t["cpu_min_s"] / 1e9 if t["cpu_min_s"] > 0 else None,
    }


# ----------------------------------------------------------------------------------- model and data
def grid(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    """WeatherBench2-style midpoint grid without poles, latitude descending."""
    from pipeline.testing import grid as g

    return g(nlat, nlon)


def default_architecture(nlat: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The SFNO hyperparameters and input features of the shipped checkpoints (``models.train``
    defaults: ``TrainConfig()``) for the embedded world's 4 channels on a grid with ``nlat`` rows."""
    from models.train import TrainConfig, architecture

    cfg = TrainConfig()
    return architecture(cfg, len(CHANNELS), nlat), tuple(cfg.features)


def untrained_model(nlat: int, nlon: int, seed: int = 0) -> Any:
    """An untrained :class:`models.wrapper.SFNOForecastModel` with the default architecture.

    Weights from ``torch.Generator().manual_seed(seed)``; static input fields (if the default features
    use any) are smooth random fields from ``numpy.random.default_rng(seed)``.
    """
    from models.wrapper import build_model
    from pipeline.testing import MEANS, STDS

    lat, lon = grid(nlat, nlon)
    arch, features = default_architecture(nlat)
    n_static = sum(f.startswith("static:") for f in features)
    static = None
    if n_static:
        rng = np.random.default_rng(seed)
        raw = rng.normal(size=(n_static, nlat, nlon))
        # smooth along longitude a little (cheap), then normalise
        raw = np.real(np.fft.ifft(np.fft.fft(raw, axis=-1) * (np.arange(nlon) < 6), axis=-1))
        static = ((raw - raw.mean()) / (raw.std() + 1e-12)).astype(np.float32)
    stats = {
        "mean": [MEANS[c] for c in CHANNELS],
        "std": [STDS[c] for c in CHANNELS],
        "tendency_std": [0.1 * STDS[c] for c in CHANNELS],
    }
    model = build_model(
        arch,
        list(CHANNELS),
        lat,
        lon,
        stats,
        features,
        static_fields=static,
        generator=torch.Generator().manual_seed(seed),
        metadata={"seed": seed, "note": "untrained benchmark copy (same architecture as shipped)"},
    )
    model.net.eval()
    return model


def skill_for_perturbation() -> dict[str, Any]:
    """A ``skill.json`` with a 48 h RMSE per channel (half the climatological spread)."""
    from pipeline.testing import STDS

    return {"lead_hours": [48], "rmse": {c: [0.5 * STDS[c]] for c in CHANNELS}}


def write_checkpoints(root: Path, nlat: int, nlon: int, seeds: list[int]) -> list[str]:
    """Untrained checkpoints (``models.checkpoint.save_checkpoint``), one directory per seed."""
    from models.checkpoint import save_checkpoint

    out = []
    for s in seeds:
        p = root / f"sfno-{nlat}x{nlon}-seed{s:03d}"
        if not (p / "metadata.json").is_file():
            save_checkpoint(untrained_model(nlat, nlon, s), p, skill=skill_for_perturbation())
        out.append(str(p))
    return out


def write_analysis(path: Path, nlat: int, nlon: int, periods: int) -> Path:
    """A canonical synthetic analysis store (``pipeline.testing.synthetic_analysis``) 6-hourly from
    2008-01-01T00."""
    from pipeline.testing import synthetic_analysis

    if not (path / "zarr.json").is_file():
        synthetic_analysis(periods=periods, nlat=nlat, nlon=nlon, seed=1).to_zarr(
            path, mode="w", zarr_format=3
        )
    return path


def dir_bytes(path: Path) -> int:
    """Total size of the files below ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def ratio(a: float, b: float) -> float | None:
    return None if not b else a / b
