"""Spectral packs of QG stores: a QG world or analysis store carried as its streamfunction coefficients.

Every field of a QG store (:mod:`data_catalog.world.qg_store`, :mod:`data_catalog.world.qg_analysis`)
is a function of one spectral streamfunction per level: the geopotential is a reference plus ``f0 psi``
and the winds and vorticity follow from it. So a store is fully described by the ``3 x 484`` real
degrees of freedom of the triangular truncation per time, against ``12 x 64 x 32`` grid values: a pack
is 17x smaller in float32 and 34x in float16 than the raw grid data. That is what lets years of the
world travel where it cannot be built in time, e.g. to a GPU machine lent for a few minutes with no
internet and a 64 MiB limit on what it is sent.

* :func:`pack` reads the geopotential of a store, fits the coefficients exactly (the store's fields
  are band-limited: :class:`~data_catalog.world.spectral.PointAnalysis`), checks that the winds and
  vorticity rebuilt from them equal the store's (else it is not a QG store: one-line error) and writes
  an ``.npz`` with the coefficients (in units of geopotential, ``f0 psi``, scaled per level by a power
  of two so float16 cannot overflow), the coordinates, the orography, every attribute and the largest
  rebuild error of each variable relative to its RMS.
* :func:`unpack` rebuilds the store's dataset (raw layout, float32) in memory; :func:`unpack_store`
  writes it as a zarr v3 store that ``open_reanalysis`` and ``wxens train --dataset`` read.

float16 rounds each coefficient to 11 significant bits (relative error <= 2**-11 per coefficient, so
at every scale): the rebuilt fields differ from the store by about 1e-4 of their RMS (measured by
:func:`pack` and stored as ``rebuild_error``), far below the analyses' own error (6-9 % of the z500
anomaly). float32 is exact to the store's float32 rounding.

Command line::

    python -m data_catalog.world.qg_pack pack builtin:qg3-analysis OUT.npz --years 2000-2007 --dtype float16
    python -m data_catalog.world.qg_pack unpack OUT.npz STORE.zarr
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from data_catalog.errors import UserError, run_module_main
from data_catalog.world.qg import QGParams, ThreeLevelQG, params_from
from data_catalog.world.qg_analysis import parse_years
from data_catalog.world.qg_store import LEVELS, VARIABLES, qg_fields, reference_geopotential
from data_catalog.world.spectral import PointAnalysis, PointSynthesis
from data_catalog.world.store import write_world

log = logging.getLogger(__name__)

PACK_VERSION = "qg-pack-v1"
DTYPES = ("float16", "float32")
#: largest rebuild error (relative to the variable's RMS) a float32 pack may show: above it the
#: store's fields are not those of one streamfunction per level (not a QG store)
CHECK_TOLERANCE = {"float32": 1e-4, "float16": 2e-3}
_CHUNK = 1460  # times per block (one year of 6-hourly states)


def _open(store: str | Path | xr.Dataset) -> xr.Dataset:
    if isinstance(store, xr.Dataset):
        return store
    text = str(store)
    if text.startswith("builtin:"):
        from data_catalog.readers import _builtin_store

        text = _builtin_store(text.removeprefix("builtin:"))
    if not Path(text).exists():
        raise UserError(f"no such store: {text}")
    try:
        return xr.open_zarr(text, consolidated=None)
    except Exception as e:  # zarr's own errors (no group, bad metadata) or an unreadable path
        raise UserError(f"cannot open {text} as a zarr store ({type(e).__name__})") from None


def _params(attrs: dict[str, Any]) -> QGParams:
    """The QG parameters the store's fields were made with (recorded in ``world_spec``)."""
    try:
        params = json.loads(str(attrs["world_spec"]))["params"]
    except (KeyError, ValueError, TypeError):
        raise UserError(
            "not a QG store: its attributes lack world_spec (see data_catalog.world.qg_store)"
        ) from None
    return params_from({k: v for k, v in params.items() if k != "mountains" and not isinstance(v, bool)})


def _tools(lat: np.ndarray, nlon: int, p: QGParams) -> tuple[ThreeLevelQG, PointSynthesis, PointAnalysis]:
    model = ThreeLevelQG(p)
    synth = PointSynthesis(lat, nlon, p.lmax, p.radius)
    return model, synth, PointAnalysis(synth, p.lmax)


def _years(ds: xr.Dataset, years: tuple[int, int] | None) -> xr.Dataset:
    if years is None:
        return ds
    t = pd.DatetimeIndex(ds["time"].values)
    keep = np.flatnonzero((t.year >= years[0]) & (t.year <= years[1]))
    if keep.size == 0:
        raise UserError(f"the store has no times in {years[0]}-{years[1]}")
    return ds.isel(time=keep)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def pack(
    store: str | Path | xr.Dataset,
    out: str | Path,
    years: tuple[int, int] | None = None,
    dtype: str = "float16",
) -> dict[str, float]:
    """Write the spectral pack of ``store`` (a QG store path, ``builtin:qg3[-analysis]`` or a raw-layout
    Dataset) for the calendar ``years`` to ``out`` (``.npz``); returns the rebuild error of each
    variable (largest absolute difference over its RMS, over every time)."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    ds = _years(_open(store), years)
    missing = [v for v in VARIABLES if v not in ds or "level" not in ds[v].dims]
    if missing or [int(v) for v in ds["level"].values] != list(LEVELS):
        raise UserError(f"not a QG store: needs {', '.join(VARIABLES)} on levels {LEVELS}")
    p = _params(ds.attrs)
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    model, synth, analysis = _tools(lat, lon.size, p)
    ref = reference_geopotential().numpy()
    n = ds.sizes["time"]
    dofs = np.empty((n, len(LEVELS), analysis.basis.shape[0]), dtype=np.float64)
    worst = dict.fromkeys(VARIABLES, 0.0)
    sq = dict.fromkeys(VARIABLES, 0.0)
    order = ("time", "level", "latitude", "longitude")
    with torch.no_grad():
        for a in range(0, n, _CHUNK):
            block = ds.isel(time=slice(a, a + _CHUNK))
            grids = {v: block[v].transpose(*order).values.astype(np.float64) for v in VARIABLES}
            flat = torch.from_numpy((grids["geopotential"] - ref).reshape(-1, lat.size * lon.size))
            d = flat @ analysis.pinv.T  # (T * 3, dofs), units of geopotential (f0 psi)
            dofs[a : a + len(block["time"])] = d.reshape(-1, len(LEVELS), d.shape[-1]).numpy()
            rebuilt = _fields(model, synth, analysis, d.reshape(-1, len(LEVELS), d.shape[-1]), p.f0)
            for v in VARIABLES:
                worst[v] = max(worst[v], float(np.abs(rebuilt[v] - grids[v]).max()))
                sq[v] += float(np.square(grids[v] - (ref if v == "geopotential" else 0.0)).sum())
    count = n * len(LEVELS) * lat.size * lon.size
    rel = {v: worst[v] / max(np.sqrt(sq[v] / count), 1e-30) for v in VARIABLES}
    bad = {v: e for v, e in rel.items() if e > CHECK_TOLERANCE["float32"]}
    if bad:
        raise UserError(
            "not a QG store: its fields are not those of one streamfunction per level "
            f"(rebuild error {', '.join(f'{v} {e:.1e}' for v, e in bad.items())} of the RMS)"
        )
    # per-level power-of-two scale: the largest stored magnitude is below 2**14 (float16 max 65504)
    big = np.abs(dofs).max(axis=(0, 2))
    shift = np.ceil(np.log2(np.maximum(big, 1e-30) / 2.0**14)).astype(np.int64)
    scale = np.exp2(shift.astype(np.float64))
    stored = (dofs / scale[None, :, None]).astype(dtype)
    if dtype == "float16":  # measure what float16 costs, on the rebuilt fields, against the store
        rel = _rebuild_error(ds, stored, scale, p, model, synth, analysis)
    hours = (ds["time"].values - np.datetime64("2000-01-01T00", "ns")) // np.timedelta64(1, "h")
    var_attrs = {v: dict(ds[v].attrs) for v in VARIABLES}
    extra: dict[str, Any] = (
        {"orography": ds["orography"].values.astype(np.float32)} if "orography" in ds else {}
    )
    oro_attrs = dict(ds["orography"].attrs) if "orography" in ds else {}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:  # np.savez would append ".npz" to any other name
        np.savez(
            fh,
            coefficients=stored,
            scale=scale,
            hours_since_2000=hours.astype(np.int64),
            latitude=lat,
            longitude=lon,
            meta=np.array(
                json.dumps(
                    {
                        "version": PACK_VERSION,
                        "dtype": dtype,
                        "attrs": {k: _jsonable(v) for k, v in ds.attrs.items()},
                        "variable_attrs": var_attrs,
                        "orography_attrs": oro_attrs,
                        "rebuild_error": rel,
                    }
                )
            ),
            **extra,
        )
    log.info("packed %d times into %s (%.1f MB)", n, out, out.stat().st_size / 1e6)
    return rel


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (str, int, float, bool, list, dict)) or v is None else str(v)


def _fields(
    model: ThreeLevelQG, synth: PointSynthesis, analysis: PointAnalysis, dofs: torch.Tensor, f0: float
) -> dict[str, np.ndarray]:
    """The store's variables (float64 arrays ``(T, 3, lat, lon)``) from coefficients ``(T, 3, dofs)``
    in units of geopotential."""
    psi = torch.einsum("tkd,dlm->tklm", dofs.to(torch.complex128) / f0, analysis.basis)
    return {k: v.numpy() for k, v in qg_fields(model, synth, psi).items()}


def _rebuild_error(
    ds: xr.Dataset,
    stored: np.ndarray,
    scale: np.ndarray,
    p: QGParams,
    model: ThreeLevelQG,
    synth: PointSynthesis,
    analysis: PointAnalysis,
) -> dict[str, float]:
    ref = reference_geopotential().numpy()
    worst = dict.fromkeys(VARIABLES, 0.0)
    sq = dict.fromkeys(VARIABLES, 0.0)
    order = ("time", "level", "latitude", "longitude")
    with torch.no_grad():
        for a in range(0, stored.shape[0], _CHUNK):
            d = torch.from_numpy(stored[a : a + _CHUNK].astype(np.float64) * scale[None, :, None])
            rebuilt = _fields(model, synth, analysis, d, p.f0)
            block = ds.isel(time=slice(a, a + _CHUNK))
            for v in VARIABLES:
                g = block[v].transpose(*order).values.astype(np.float64)
                worst[v] = max(worst[v], float(np.abs(rebuilt[v].astype(np.float32) - g).max()))
                sq[v] += float(np.square(g - (ref if v == "geopotential" else 0.0)).sum())
    count = stored.shape[0] * stored.shape[1] * ds.sizes["latitude"] * ds.sizes["longitude"]
    return {v: worst[v] / max(np.sqrt(sq[v] / count), 1e-30) for v in VARIABLES}


def unpack(path: str | Path) -> xr.Dataset:
    """The dataset a pack describes (raw QG store layout, float32 fields, every attribute)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such pack: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        coeff, scale = z["coefficients"], z["scale"]
        hours, lat, lon = z["hours_since_2000"], z["latitude"], z["longitude"]
        oro = z["orography"] if "orography" in z.files else None
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is not a QG spectral pack ({e})") from None
    if meta.get("version") != PACK_VERSION:
        raise UserError(
            f"{path} is a pack of version {meta.get('version')!r}; this code reads {PACK_VERSION}"
        )
    attrs = meta["attrs"]
    p = _params(attrs)
    model, synth, analysis = _tools(lat, lon.size, p)
    n = coeff.shape[0]
    out = {v: np.empty((n, len(LEVELS), lat.size, lon.size), dtype=np.float32) for v in VARIABLES}
    with torch.no_grad():
        for a in range(0, n, _CHUNK):
            d = torch.from_numpy(coeff[a : a + _CHUNK].astype(np.float64) * scale[None, :, None])
            for v, arr in _fields(model, synth, analysis, d, p.f0).items():
                out[v][a : a + d.shape[0]] = arr.astype(np.float32)
    dims = ("time", "level", "latitude", "longitude")
    data_vars: dict[str, Any] = {v: (dims, out[v], meta["variable_attrs"][v]) for v in VARIABLES}
    if oro is not None:
        data_vars["orography"] = (("latitude", "longitude"), oro, meta["orography_attrs"])
    times = np.datetime64("2000-01-01T00", "ns") + hours.astype("timedelta64[h]")
    coords = {
        "time": ("time", times.astype("datetime64[ns]")),
        "level": ("level", np.array(LEVELS, dtype=np.int64), {"units": "hPa", "long_name": "pressure level"}),
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    attrs = {**attrs, "packed_as": f"{PACK_VERSION} {meta['dtype']} (data_catalog.world.qg_pack)"}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def unpack_store(path: str | Path, out: str | Path) -> Path:
    """Rebuild a pack into the zarr v3 store ``out`` (refuses to overwrite)."""
    out = Path(out)
    if out.exists():
        raise UserError(f"store already exists: {out}")
    write_world(unpack(path), out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Spectral packs of QG stores (17-34x smaller than the grid).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="store -> pack (.npz)")
    a.add_argument("store", help="QG store: a zarr path, builtin:qg3 or builtin:qg3-analysis")
    a.add_argument("out", help="pack to write (.npz)")
    a.add_argument("--years", default=None, help="YEAR or YEAR-YEAR (default: all)")
    a.add_argument("--dtype", default="float16", help="float16 (default) or float32")
    b = sub.add_parser("unpack", help="pack -> zarr store")
    b.add_argument("pack")
    b.add_argument("out", help="store to write (zarr v3)")
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if args.cmd == "pack":
        err = pack(args.store, args.out, parse_years(args.years) if args.years else None, args.dtype)
        size = Path(args.out).stat().st_size / 1e6
        console.print(
            f"{args.out}: {size:.1f} MB; rebuild error / RMS: "
            + ", ".join(f"{k} {v:.1e}" for k, v in err.items())
        )
    else:
        console.print(str(unpack_store(args.pack, args.out)))
    return 0


__all__ = ["PACK_VERSION", "pack", "unpack", "unpack_store"]

if __name__ == "__main__":
    run_module_main(main)
