"""Forecast store: zarr v3 in the WeatherBench2 layout, written chunk by chunk by work units.

Dims ``time`` (init), ``number`` (member), ``prediction_timedelta``, (``level``,) ``latitude``,
``longitude``; one array per variable; chunks ``(1, member block, 1, (1,) lat, lon)`` so each work unit
owns whole chunks and concurrent writers never touch the same file.

Layouts (``output.layout``, see :func:`store_layout`):

* ``wb2`` (default): WeatherBench2 names; channels with a pressure level go into one array per
  variable with a ``level`` dim (``z200``, ``z500`` -> ``geopotential`` at levels 200, 500). The
  ``level`` coordinate is the union over variables; a (variable, level) the model does not have is
  never written and reads as NaN (the variable's ``wxens_levels`` attribute lists the levels it holds).
  Single-level channels get their WeatherBench2 names (``t2m`` -> ``2m_temperature``).
* ``channels``: one array per model channel under its canonical name (``z500``), no ``level`` dim.

``open_forecast(path, channels=True)`` reads either layout as one variable per channel. The full metadata (shapes, coordinates, attributes) is
created up front; units then write raw chunks with ``write_empty_chunks`` on, so every chunk a unit
owns exists as a file and can be checksummed.

Storage dtypes (error measured in docs/engine.md):

* ``float32`` exact.
* ``float16``: relative error <= 2**-11 for normal numbers; values with ``|x| > 65504`` overflow and
  ``|x| < 6.1e-5`` lose precision (subnormals): refused for channels whose range does not fit.
* ``bfloat16``: float32 rounded to 8 significant bits (round to nearest even) and stored as float32
  (readers see float32; the codec compresses the zero low bytes); relative error <= 2**-8 (= keepbits 7).
* ``keepbits=k``: float32 mantissa rounded to ``k`` bits (bit rounding, Klöwer et al. 2021);
  relative error <= 2**-(k+1).

Chunk codecs (``output.codec``, lossless; sizes and speeds in docs/engine.md "Store"): ``lz4``
(default: Blosc LZ4 with bit shuffle), ``zstd`` (zarr's default, the default before 2026-11-28) and
``none``. :class:`StoreWriter` encodes a work unit's whole chunks with the array's own codecs and writes
each chunk file itself (atomically: a temporary file renamed into place), byte for byte the file zarr
would write; any other write (a chunk a unit only partly owns) goes through zarr.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from data_catalog.errors import UserError
from data_catalog.hashing import sha256_file
from data_catalog.lexicon import BASES, channel_info, split_channel, wb2_name
from pipeline.manifest import fsync_file

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


#: chunk codecs of the member store (``output.codec``), see the module docstring
CODECS = ("lz4", "zstd", "none")


def compressors(codec: str) -> list[Any] | None:
    """The zarr v3 compressors of ``codec`` (one of :data:`CODECS`)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
    if codec == "zstd":
        return [ZstdCodec(level=0, checksum=False)]
    if codec == "none":
        return None
    raise UserError(f"unknown output codec {codec!r} (choose from {', '.join(CODECS)})")


class ChunkFiles:
    """Whole chunks of one zarr v3 array on the local disk, encoded with the array's own codecs and
    written as files without zarr's per-call machinery (an event loop and a thread per chunk: ~1 ms
    of a 256 KiB chunk's write, docs/engine.md "Store").

    :meth:`for_array` returns ``None`` for arrays whose chunks it cannot write byte for byte as zarr
    does (sharding, transposes, big-endian data, other codecs); those go through zarr.
    """

    def __init__(self, root: Path, name: str, dtype: np.dtype, chunks: tuple[int, ...], codec: Any) -> None:
        self.root, self.name, self.dtype, self.chunks, self.codec = root, name, dtype, chunks, codec

    @classmethod
    def for_array(cls, root: Path, name: str, arr: Any) -> ChunkFiles | None:
        import numcodecs
        from zarr.codecs import BytesCodec

        meta = arr.metadata
        if getattr(meta, "zarr_format", None) != 3:
            return None
        key = meta.chunk_key_encoding.to_dict()
        if key.get("name") != "default" or key.get("configuration", {}).get("separator", "/") != "/":
            return None
        codecs = list(meta.codecs)
        dtype = np.dtype(arr.dtype)
        if not codecs or not isinstance(codecs[0], BytesCodec) or dtype.kind != "f":
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and endian != "little":
            return None
        if len(codecs) == 1:
            return cls(root, name, dtype.newbyteorder("<"), tuple(arr.chunks), None)
        if len(codecs) > 2:
            return None
        spec = codecs[1].to_dict()
        conf = dict(spec.get("configuration", {}))
        if spec["name"] == "zstd":
            codec = numcodecs.Zstd(
                level=int(conf.get("level", 0)), checksum=bool(conf.get("checksum", False))
            )
        elif spec["name"] == "blosc" and "typesize" in conf:
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(conf["shuffle"])]
            codec = numcodecs.Blosc.from_config(
                {
                    "cname": conf["cname"],
                    "clevel": int(conf["clevel"]),
                    "shuffle": shuffle,
                    "blocksize": int(conf.get("blocksize", 0)),
                    "typesize": int(conf["typesize"]),
                }
            )
        else:
            return None
        return cls(root, name, dtype.newbyteorder("<"), tuple(arr.chunks), codec)

    def encode(self, data: np.ndarray) -> bytes:
        """The file bytes of one whole chunk holding ``data`` (its size in C order)."""
        raw = np.ascontiguousarray(data, dtype=self.dtype)
        if raw.size != int(np.prod(self.chunks)):
            raise ValueError(f"a chunk of {self.name} holds {np.prod(self.chunks)} values, got {raw.size}")
        if self.codec is None:
            return raw.tobytes()
        return bytes(self.codec.encode(raw.view(np.uint8).reshape(-1)))

    def write(self, key: str, payload: bytes, durable: bool) -> str:
        """Write the chunk file ``<name>/<key>`` atomically (``durable``: fsynced before the rename);
        returns the sha256 of its bytes."""
        path = self.root / self.name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return hashlib.sha256(payload).hexdigest()


LAYOUTS = ("wb2", "channels")
DIMS = ("time", "number", "prediction_timedelta", "latitude", "longitude")
LEVEL_DIMS = ("time", "number", "prediction_timedelta", "level", "latitude", "longitude")


@dataclass(frozen=True)
class StoreLayout:
    """Where each model channel lives in a forecast store.

    ``variables``: store variable -> its levels (``None``: no level dim); ``slots``: channel ->
    (store variable, index into ``levels`` or ``None``); ``levels``: the ``level`` coordinate (the
    ascending union of all variables' levels; empty without levelled variables)."""

    variables: dict[str, list[int | float] | None]
    slots: dict[str, tuple[str, int | None]]
    levels: list[int | float]


def store_layout(channels: list[str], layout: str = "wb2") -> StoreLayout:
    """The store layout of ``channels`` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown output layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if layout == "channels":
        return StoreLayout({c: None for c in channels}, {c: (c, None) for c in channels}, [])
    named = {c: wb2_name(c) for c in channels}
    levels = sorted({lev for _, lev in named.values() if lev is not None})
    variables: dict[str, list[int | float] | None] = {}
    slots: dict[str, tuple[str, int | None]] = {}
    for c, (name, lev) in named.items():
        if name in variables and (lev is None or variables[name] is None):
            raise UserError(f"channels {c!r} and another both map to the store variable {name!r}")
        if lev is None:
            variables[name] = None
            slots[c] = (name, None)
        else:
            have = variables.setdefault(name, [])
            assert have is not None
            if lev in have:
                raise UserError(f"two channels map to {name!r} at level {lev}")
            have.append(lev)
            slots[c] = (name, levels.index(lev))
    for v in variables.values():
        if v is not None:
            v.sort()
    return StoreLayout(variables, slots, levels)


def _variable_attrs(
    name: str, channels: list[str], var_attrs: dict[str, dict[str, Any]], lay: StoreLayout
) -> dict:
    attrs = dict(var_attrs.get(channels[0], {}))
    levels = lay.variables[name]
    if levels is not None:
        base, _ = split_channel(channels[0])
        info = BASES.get(base)
        if info is not None:  # "Geopotential", not the first channel's "Geopotential at 200 hPa"
            attrs.update(long_name=info.long_name, units=attrs.get("units", info.units))
            if info.standard_name:
                attrs["standard_name"] = info.standard_name
        attrs["wxens_levels"] = list(levels)
    return attrs


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
    layout: str = "wb2",
    codec: str = "lz4",
) -> None:
    """Write the full store metadata and coordinates (no data chunks) to ``path``; ``variables`` are
    the model channels to store, placed by :func:`store_layout`, their chunks compressed by ``codec``
    (:data:`CODECS`)."""
    import dask.array as da

    nt, nn, nl = len(times), len(numbers), len(leads)
    ny, nx = len(latitude), len(longitude)
    sdt = storage_dtype(dtype)
    lay = store_layout(list(variables), layout)
    comp = compressors(codec)
    attrs = {**attrs, "wxens_layout": layout, "wxens_codec": codec}
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for name, levels in lay.variables.items():
        mine = [c for c in variables if lay.slots[c][0] == name]
        dims: tuple[str, ...]
        shape: tuple[int, ...]
        chunks: tuple[int, ...]
        if levels is None:
            dims, shape, chunks = DIMS, (nt, nn, nl, ny, nx), (1, chunk_members, 1, ny, nx)
        else:
            nlev = len(lay.levels)
            dims, shape, chunks = LEVEL_DIMS, (nt, nn, nl, nlev, ny, nx), (1, chunk_members, 1, 1, ny, nx)
        data_vars[name] = (
            dims,
            da.zeros(shape, chunks=chunks, dtype=sdt),
            _variable_attrs(name, mine, var_attrs, lay),
        )
        encoding[name] = {"chunks": chunks, "_FillValue": np.nan, "compressors": comp}
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
    if lay.levels:
        integer = all(float(lev).is_integer() for lev in lay.levels)
        lev_values = np.asarray(lay.levels, dtype=np.int64 if integer else np.float64)
        coords["level"] = ("level", lev_values, {"units": "hPa", "long_name": "pressure level"})
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    enc_time = {
        "time": {"units": "hours since 1970-01-01", "dtype": "int64"},
        "prediction_timedelta": {"units": "hours", "dtype": "int64"},
    }
    encoding.update(enc_time)
    with warnings.catch_warnings():  # zarr notes that consolidated metadata is a v3 extension: on purpose
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(path, mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=True)


class StoreWriter:
    """Writes work-unit chunks into an existing store and returns their files for checksumming."""

    def __init__(self, path: Path, direct: bool = True) -> None:
        """``direct=False`` writes every chunk through zarr (the reference the direct files equal)."""
        self.path = Path(path)
        group: Any = zarr.open_group(str(self.path), mode="r+")
        self.group = group
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        numbers = np.asarray(group["number"][:])
        self._index = {int(n): i for i, n in enumerate(numbers)}
        self.chunk_members = int(self.attrs["wxens_chunk_members"])
        self.dtype = str(self.attrs["wxens_dtype"])
        self.keepbits = self.attrs.get("wxens_keepbits")
        self.variables = list(self.attrs["wxens_variables"])  # the stored channels
        # stores written before layouts existed hold one array per channel
        self.layout = store_layout(self.variables, str(self.attrs.get("wxens_layout", "channels")))
        # opened once, not per lead; every chunk is written, even one equal to the fill value (NaN):
        # the manifest checksums each chunk file of a unit (the array's own config: writer threads
        # must not depend on zarr's global config, which a `with zarr.config.set` changes for all)
        self._arrays = {v: group[v].with_config({"write_empty_chunks": True}) for v in self.layout.variables}
        self._files = {
            v: ChunkFiles.for_array(self.path, v, a) if direct else None for v, a in self._arrays.items()
        }
        self._nmembers = len(numbers)

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
        durable: bool = False,
    ) -> dict[str, str]:
        """Write one lead of a block ``state`` ``(B, C, lat, lon)`` (all stored channels, or the
        channels ``variables``); returns ``{chunk file relative to the store: sha256}``, every file
        fsynced first when ``durable``. Different channels may be written from different threads at
        once (each owns its chunks, also within a levelled array)."""
        keep, idx = self.positions(members)
        if not keep.any():
            return {}
        sel = state[torch.from_numpy(np.flatnonzero(keep))]
        cm = self.chunk_members
        out: dict[str, str] = {}
        for v in self.variables if variables is None else variables:
            data = encode(sel[:, channels.index(v)], self.dtype, self.keepbits)
            name, li = self.layout.slots[v]
            where = f"{lead}" if li is None else f"{lead}/{li}"
            direct = self._files[name]
            via_zarr: list[str] = []
            for a, b, off in self._runs(idx):
                for cn in range(a // cm, (b - 1) // cm + 1):
                    lo, hi = cn * cm, min((cn + 1) * cm, self._nmembers)  # the chunk's members
                    key = f"c/{init}/{cn}/{where}/0/0"
                    if direct is not None and a <= lo and hi <= b:  # the whole chunk: write its file
                        rows = data[off + lo - a : off + hi - a]
                        if hi - lo < cm:  # an edge chunk is stored at full size, padded with NaN
                            pad = np.full((cm - (hi - lo), *rows.shape[1:]), np.nan, rows.dtype)
                            rows = np.concatenate([rows, pad])
                        out[f"{name}/{key}"] = direct.write(key, direct.encode(rows), durable)
                    else:
                        s, e = max(a, lo), min(b, hi)
                        region = data[off + s - a : off + e - a]
                        if li is None:
                            self._arrays[name][init, s:e, lead] = region
                        else:
                            self._arrays[name][init, s:e, lead, li] = region
                        via_zarr.append(f"{name}/{key}")
            for f in via_zarr:
                p = self.path / f
                if durable:
                    fsync_file(p)
                out[f] = sha256_file(p)
        return out

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


def open_forecast(path: str | Path, *, chunks: Any = None, channels: bool = False) -> xr.Dataset:
    """Open a forecast store (or a run directory) lazily as an ``xarray.Dataset``.

    As stored (the WeatherBench2 layout: ``ds.geopotential.sel(level=500)``), or with
    ``channels=True`` one variable per model channel (``ds.z500``), whatever the store's layout.
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
    return as_channels(ds) if channels else ds


def as_channels(ds: xr.Dataset) -> xr.Dataset:
    """A forecast store's Dataset with one variable per stored model channel and no ``level`` dim."""
    if "wxens_variables" not in ds.attrs:
        raise UserError("not a wxens forecast store (no wxens_variables attribute)")
    chans = list(ds.attrs["wxens_variables"])
    lay = store_layout(chans, str(ds.attrs.get("wxens_layout", "channels")))
    out = {}
    for c in chans:
        name, li = lay.slots[c]
        da_ = ds[name] if li is None else ds[name].isel(level=li, drop=True)
        attrs = {k: v for k, v in ds[name].attrs.items() if k != "wxens_levels"}
        info = channel_info(c)
        if li is not None and info is not None:
            attrs["long_name"] = info.long_name
        out[c] = da_.assign_attrs(attrs).rename(c)
    data: dict[str, xr.DataArray] = {}
    for v in ds.data_vars:  # the store's order, each levelled array replaced by its channels
        if v in lay.variables:
            data.update({c: out[c] for c in chans if lay.slots[c][0] == v})
        else:
            data[str(v)] = ds[v]
    res = xr.Dataset(data, attrs=ds.attrs)
    return res.drop_vars("level", errors="ignore")


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
