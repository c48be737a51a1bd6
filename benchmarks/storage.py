"""Figure 5: forecast storage: bytes per member-step, dtype/precision and codec options and their
error, write throughput of the engine's store writer vs a raw write of the same float32 bytes and vs
zarr's own ``array[...] = values`` on the same store.

The fields are smooth, realistic-magnitude states (the synthetic analysis plus spherical random-field
member perturbations); every option goes through ``pipeline.store.create_store`` + ``StoreWriter``
(zarr v3, one chunk per member block x lead; the writer encodes whole chunks and writes their files
itself) and is read back with ``pipeline.store.open_forecast`` to measure the error against the
float32 original. The same store written through zarr (``StoreWriter(direct=False)``) is the baseline
of ``× zarr``; the files are byte for byte the same (tests/pipeline/test_store.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import CHANNELS, Context, dir_bytes, grid, ratio

log = logging.getLogger(__name__)

#: (dtype, keepbits, codec) of each row
OPTIONS: tuple[tuple[str, int | None, str], ...] = (
    ("float32", None, "lz4"),
    ("float32", None, "zstd"),
    ("float32", None, "none"),
    ("float32", 16, "lz4"),
    ("float32", 10, "lz4"),
    ("float32", 10, "zstd"),
    ("bfloat16", None, "lz4"),
    ("bfloat16", None, "zstd"),
    ("float16", None, "lz4"),
)


def sizes(ctx: Context) -> dict[str, int]:
    if ctx.quick:
        return {"members": 4, "leads": 2, "nlat": 32, "nlon": 64}
    return {"members": 32, "leads": 8, "nlat": 32, "nlon": 64}


def make_fields(members: int, leads: int, nlat: int, nlon: int) -> np.ndarray:
    """``(leads, members, C, lat, lon)`` float32 member states."""
    from pipeline.perturbations.sphere import SphericalRandomField
    from pipeline.testing import STDS, synthetic_analysis

    ana = synthetic_analysis(periods=leads, nlat=nlat, nlon=nlon, seed=2)
    base = np.stack([ana[c].values for c in CHANNELS], axis=1).astype(np.float32)  # (L, C, lat, lon)
    lat, lon = grid(nlat, nlon)
    grf = SphericalRandomField(lat, lon, length_scale_km=800.0)
    g = torch.Generator().manual_seed(9)
    pert = torch.stack([grf.sample(len(CHANNELS), g) for _ in range(members)]).numpy()  # (M, C, lat, lon)
    pert = pert / pert.std(axis=(-2, -1), keepdims=True)
    sd = np.array([STDS[c] for c in CHANNELS], np.float32)[None, :, None, None]
    growth = (1 + np.arange(leads, dtype=np.float32))[:, None, None, None, None] * 0.05
    return (base[:, None] + growth * sd[None] * pert[None]).astype(np.float32)


def write_store(
    path: Path, fields: np.ndarray, dtype: str, keepbits: int | None, codec: str = "lz4", direct: bool = True
) -> float:
    """Create the store and write every lead through ``StoreWriter`` (``direct=False``: through zarr's
    ``array[...] = values``); returns the write seconds."""
    from pipeline.store import StoreWriter, create_store

    nl, nm, _, nlat, nlon = fields.shape
    lat, lon = grid(nlat, nlon)
    shutil.rmtree(path, ignore_errors=True)
    create_store(
        path,
        times=np.array([np.datetime64("2008-01-02T00", "ns")]),
        numbers=np.arange(nm),
        member_coords={
            "checkpoint": np.zeros(nm, np.int32),
            "pair": (np.arange(nm) // 2).astype(np.int32),
            "sign": np.where(np.arange(nm) % 2 == 0, 1, -1).astype(np.int8),
        },
        leads=np.arange(nl) * np.timedelta64(6, "h"),
        latitude=lat,
        longitude=lon,
        variables=list(CHANNELS),
        var_attrs={},
        chunk_members=nm,
        dtype=dtype,
        codec=codec,
        attrs={
            "wxens_chunk_members": nm,
            "wxens_dtype": dtype,
            "wxens_keepbits": keepbits,
            "wxens_variables": list(CHANNELS),
        },
    )
    writer = StoreWriter(path, direct=direct)
    members = np.arange(nm)
    t = time.perf_counter()
    for lead in range(nl):
        writer.write_lead(0, lead, members, torch.from_numpy(fields[lead]), list(CHANNELS))
    return time.perf_counter() - t


def raw_write(path: Path, fields: np.ndarray) -> float:
    """The same float32 bytes written with ``open().write`` (one file per lead and channel, like the
    store's chunks)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t = time.perf_counter()
    for lead in range(fields.shape[0]):
        for c in range(fields.shape[2]):
            with open(path / f"{lead}-{c}.bin", "wb") as f:
                f.write(np.ascontiguousarray(fields[lead, :, c]).tobytes())
    return time.perf_counter() - t


def npsave_write(path: Path, fields: np.ndarray) -> float:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    t = time.perf_counter()
    for lead in range(fields.shape[0]):
        for c in range(fields.shape[2]):
            np.save(path / f"{lead}-{c}.npy", np.ascontiguousarray(fields[lead, :, c]))
    return time.perf_counter() - t


def read_back(path: Path) -> np.ndarray:
    from pipeline.store import open_forecast

    ds = open_forecast(path, channels=True)
    # (L, M, C, lat, lon) like the input
    arr = np.stack([ds[c].isel(time=0).values for c in CHANNELS], axis=2)  # (M, L, C, lat, lon)
    return np.moveaxis(arr, 1, 0).astype(np.float32)


def _median(fn: Any, ctx: Context) -> float:
    times = [fn() for _ in range(ctx.repeats + ctx.warmup)][ctx.warmup :]
    return float(np.median(times))


def run(ctx: Context) -> dict[str, Any]:
    sz = sizes(ctx)
    root = ctx.workdir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    fields = make_fields(sz["members"], sz["leads"], sz["nlat"], sz["nlon"])
    nl, nm = fields.shape[:2]
    member_steps = nl * nm
    payload = fields.nbytes
    t_raw = _median(lambda: raw_write(root / "raw", fields), ctx)
    t_npy = _median(lambda: npsave_write(root / "npy", fields), ctx)
    rows = []
    sd = fields.std(axis=(0, 1, 3, 4))  # per channel
    for dtype, keepbits, codec in OPTIONS:
        path = root / f"store-{dtype}-{keepbits}-{codec}.zarr"
        via_zarr = _median(
            lambda p=path, d=dtype, k=keepbits, c=codec: write_store(p, fields, d, k, c, False), ctx
        )
        t = _median(lambda p=path, d=dtype, k=keepbits, c=codec: write_store(p, fields, d, k, c), ctx)
        back = read_back(path)
        err = back.astype(np.float64) - fields.astype(np.float64)
        rel = np.abs(err) / np.maximum(np.abs(fields.astype(np.float64)), 1e-30)
        chunk_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "/c/" in str(p))
        rows.append(
            {
                "dtype": dtype,
                "keepbits": keepbits,
                "codec": codec,
                "bytes_per_member_step": chunk_bytes / member_steps,
                "compression_ratio_vs_float32_raw": payload / chunk_bytes,
                "store_bytes_total": dir_bytes(path),
                "max_rel_error": {c: float(rel[:, :, i].max()) for i, c in enumerate(CHANNELS)},
                "rms_error_over_std": {
                    c: float(np.sqrt((err[:, :, i] ** 2).mean()) / sd[i]) for i, c in enumerate(CHANNELS)
                },
                "write_s": t,
                "write_mb_per_s": payload / t / 1e6,
                "zarr_write_s": via_zarr,
                "zarr_write_mb_per_s": payload / via_zarr / 1e6,
                "raw_write_mb_per_s": payload / t_raw / 1e6,
                "write_vs_raw": ratio(t_raw, t),
                "write_vs_zarr": ratio(via_zarr, t),
                "write_vs_np_save": ratio(t_npy, t),
            }
        )
    for p in root.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else os.remove(p)
    return {
        "sizes": sz,
        "payload_float32_bytes": payload,
        "raw_bytes_per_member_step": payload / member_steps,
        "raw_write_s": t_raw,
        "np_save_s": t_npy,
        "rows": rows,
        "targets": {},
    }
