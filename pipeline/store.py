"""Forecast store: zarr v3 in the WeatherBench2 layout, written chunk by chunk by work units.

Dims ``time`` (init), ``number`` (member), ``prediction_timedelta``, ``latitude``, ``longitude``; one
array per variable; chunks ``(1, member block, 1, lat, lon)`` so each work unit owns whole chunks and
concurrent writers never touch the same file. The full metadata (shapes, coordinates, attributes) is
created up front; units then write raw chunks with ``write_empty_chunks`` on, so every chunk a unit
owns exists as a file and can be checksummed.

Storage dtypes (error measured in docs/engine.md):

* ``float32`` exact.
* ``float16``: relative error <= 2**-11 for normal numbers; values with ``|x| > 65504`` overflow and
  ``|x| < 6.1e-5`` lose precision (subnormals): refused for channels whose range does not fit.
* ``bfloat16``: float32 rounded to 8 significant bits (round to nearest even) and stored as float32
  (readers see float32; zstd compresses the zero low bytes); relative error <= 2**-8 (= keepbits 7).
* ``keepbits=k``: float32 mantissa rounded to ``k`` bits (bit rounding, Klöwer et al. 2021);
  relative error <= 2**-(k+1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

STORE_NAME = "forecast.zarr"
FLOAT16_MAX = 65504.0


def round_mantissa(x: np.ndarray, keepbits: int) -> np.ndarray:
    """Round float32 ``x`` to ``keepbits`` mantissa bits, ties to even (bit rounding)."""
    if not 0 <= keepbits <= 23:
        raise ValueError("keepbits must be in [0, 23]")
    if keepbits == 23:
        return np.asarray(x, dtype=np.float32)
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    drop = 23 - keepbits
    half = np.uint32((1 << (drop - 1)) - 1)
    lsb = (b >> np.uint32(drop)) & np.uint32(1)
    mask = np.uint32(0xFFFFFFFF ^ ((1 << drop) - 1))
    r = ((b + half + lsb) & mask).astype(np.uint32)
    finite = np.isfinite(np.asarray(x, dtype=np.float32))
    return np.where(finite, r.view(np.float32), x).astype(np.float32)


def encode(x: torch.Tensor, dtype: str, keepbits: int | None) -> np.ndarray:
    """Convert a float tensor to the stored representation (see module docstring)."""
    if dtype == "bfloat16":
        a = x.to(torch.bfloat16).to(torch.float32).cpu().numpy()
    else:
        a = x.float().cpu().numpy()
    if keepbits is not None:
        a = round_mantissa(a, keepbits)
    if dtype == "float16":
        a = a.astype(np.float16)
    return a


def storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float16) if dtype == "float16" else np.dtype(np.float32)


def create_store(
    path: Path,
    *,
    times: np.ndarray,
    numbers: np.ndarray,
    member_coords: dict[str, np.ndarray],
    leads: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    variables: list[str],
    var_attrs: dict[str, dict[str, Any]],
    chunk_members: int,
    dtype: str,
    attrs: dict[str, Any],
) -> None:
    """Write the full store metadata and coordinates (no data chunks) to ``path``."""
    import dask.array as da

    nt, nn, nl = len(times), len(numbers), len(leads)
    ny, nx = len(latitude), len(longitude)
    sdt = storage_dtype(dtype)
    shape = (nt, nn, nl, ny, nx)
    chunks = (1, chunk_members, 1, ny, nx)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for v in variables:
        data_vars[v] = (
            ("time", "number", "prediction_timedelta", "latitude", "longitude"),
            da.zeros(shape, chunks=chunks, dtype=sdt),
            dict(var_attrs.get(v, {})),
        )
        encoding[v] = {"chunks": chunks, "_FillValue": np.nan}
    data_vars["nonfinite_step"] = (
        ("time", "number"),
        da.full((nt, nn), -1, chunks=(1, chunk_members), dtype=np.int32),
        {"long_name": "first lead step with a non-finite value (-1: none)", "units": "1"},
    )
    encoding["nonfinite_step"] = {"chunks": (1, chunk_members)}
    coords: dict[str, Any] = {
        "time": ("time", np.asarray(times, dtype="datetime64[ns]"), {"long_name": "initialization time"}),
        "number": ("number", np.asarray(numbers, dtype=np.int32), {"long_name": "ensemble member number"}),
        "prediction_timedelta": (
            "prediction_timedelta",
            np.asarray(leads, dtype="timedelta64[ns]"),
            {"long_name": "lead time"},
        ),
        "latitude": (
            "latitude",
            np.asarray(latitude, dtype=np.float64),
            {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
        ),
        "longitude": (
            "longitude",
            np.asarray(longitude, dtype=np.float64),
            {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
        ),
    }
    for k in ("checkpoint", "pair", "sign"):
        coords[k] = ("number", member_coords[k], {"long_name": f"member {k}"})
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    enc_time = {
        "time": {"units": "hours since 1970-01-01", "dtype": "int64"},
        "prediction_timedelta": {"units": "hours", "dtype": "int64"},
    }
    encoding.update(enc_time)
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=True)


class StoreWriter:
    """Writes work-unit chunks into an existing store and returns their files for checksumming."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        group: Any = zarr.open_group(str(self.path), mode="r+")
        self.group = group
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        numbers = np.asarray(group["number"][:])
        self._index = {int(n): i for i, n in enumerate(numbers)}
        self.chunk_members = int(self.attrs["wxens_chunk_members"])
        self.dtype = str(self.attrs["wxens_dtype"])
        self.keepbits = self.attrs.get("wxens_keepbits")
        self.variables = list(self.attrs["wxens_variables"])
        # opened once, not per lead; every chunk is written, even one equal to the fill value (NaN):
        # the manifest checksums each chunk file of a unit (the array's own config: writer threads
        # must not depend on zarr's global config, which a `with zarr.config.set` changes for all)
        self._arrays = {v: group[v].with_config({"write_empty_chunks": True}) for v in self.variables}

    def positions(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept members among ``members`` (boolean mask) and their store indices."""
        keep = np.array([int(m) in self._index for m in members], dtype=bool)
        idx = np.array([self._index[int(m)] for m in members if int(m) in self._index], dtype=np.int64)
        return keep, idx

    def _runs(self, idx: np.ndarray) -> list[tuple[int, int, int]]:
        # contiguous runs (store start, store stop, offset into the kept list)
        runs, start = [], 0
        for j in range(1, len(idx) + 1):
            if j == len(idx) or idx[j] != idx[j - 1] + 1:
                runs.append((int(idx[start]), int(idx[j - 1]) + 1, start))
                start = j
        return runs

    def write_lead(
        self,
        init: int,
        lead: int,
        members: np.ndarray,
        state: torch.Tensor,
        channels: list[str],
        variables: list[str] | None = None,
    ) -> list[str]:
        """Write one lead of a block ``state`` ``(B, C, lat, lon)`` (all stored variables, or
        ``variables``); returns relative chunk paths. Different variables may be written from
        different threads at once."""
        keep, idx = self.positions(members)
        if not keep.any():
            return []
        sel = state[torch.from_numpy(np.flatnonzero(keep))]
        files: list[str] = []
        for v in self.variables if variables is None else variables:
            data = encode(sel[:, channels.index(v)], self.dtype, self.keepbits)
            arr = self._arrays[v]  # write_empty_chunks in its own config (no global state)
            for a, b, off in self._runs(idx):
                arr[init, a:b, lead] = data[off : off + (b - a)]
            for cn in sorted({int(i) // self.chunk_members for i in idx}):
                files.append(f"{v}/c/{init}/{cn}/{lead}/0/0")
        return files

    def write_nonfinite(self, init: int, members: np.ndarray, steps: np.ndarray) -> list[str]:
        keep, idx = self.positions(members)
        if not keep.any():
            return []
        arr = self.group["nonfinite_step"]
        with zarr.config.set({"array.write_empty_chunks": True}):
            vals = np.asarray(steps, dtype=np.int32)[keep]
            for a, b, off in self._runs(idx):
                arr[init, a:b] = vals[off : off + (b - a)]
        return [f"nonfinite_step/c/{init}/{cn}" for cn in sorted({int(i) // self.chunk_members for i in idx})]


def resolve_store(path: str | Path) -> Path:
    """The store path for a run directory or a store path."""
    p = Path(path)
    if (p / STORE_NAME).is_dir():
        return p / STORE_NAME
    if (p / "zarr.json").is_file():
        return p
    raise UserError(f"no forecast store at {p}")


def open_forecast(path: str | Path, *, chunks: Any = None) -> xr.Dataset:
    """Open a forecast store (or a run directory) lazily as an ``xarray.Dataset``.

    Adds the boolean ``nonfinite`` (``nonfinite_step >= 0``) on ``(time, number)``. Units still being
    computed read as NaN (the fill value); ``attrs['wxens_complete']`` is False until a run finishes
    (the run directory's ``COMPLETE`` marker), see :func:`pipeline.manifest.verify`.
    """
    store = resolve_store(path)
    ds = xr.open_zarr(store, consolidated=True, decode_timedelta=True, chunks=chunks if chunks else {})
    if "nonfinite_step" in ds:
        ds = ds.assign(nonfinite=ds["nonfinite_step"] >= 0)
        ds["nonfinite"].attrs = {"long_name": "member had a non-finite value at some lead", "units": "1"}
    ds.attrs["wxens_complete"] = (store.parent / "COMPLETE").is_file()
    if "wxens_config" in ds.attrs and isinstance(ds.attrs["wxens_config"], str):
        ds.attrs["wxens_config"] = json.loads(ds.attrs["wxens_config"])
    return ds


def encoding_errors(
    values: np.ndarray, encodings: list[tuple[str, int | None]] | None = None
) -> dict[str, dict]:
    """Measured relative error ``|enc(x) - x| / |x|`` (max and RMS over non-zero ``x``) of each
    storage encoding ``(dtype, keepbits)``; the table of docs/engine.md comes from this."""
    encodings = encodings or [("float16", None), ("bfloat16", None), ("float32", 12), ("float32", 4)]
    x = np.asarray(values, dtype=np.float32)
    nz = np.isfinite(x) & (x != 0)
    out = {}
    for dt_, kb in encodings:
        e = encode(torch.from_numpy(x), dt_, kb).astype(np.float64)
        rel = np.abs(e[nz] - x[nz]) / np.abs(x[nz].astype(np.float64))
        out[dt_ if kb is None else f"keepbits={kb}"] = {
            "max_rel": float(rel.max()),
            "rms_rel": float(np.sqrt((rel**2).mean())),
        }
    return out
