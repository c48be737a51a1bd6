"""Readers: any reanalysis or forecast zarr store -> the canonical in-memory form.

Canonical form (docs/architecture.md): one data variable per channel with canonical short names
(``z500``, ``t850``, ``t2m``, ...), dims ``(time, latitude, longitude)`` (plus ``number`` for an
ensemble store and ``prediction_timedelta`` for a forecast store), float32, latitude descending
(north to south), longitude ascending in [0, 360), CF ``units``/``long_name`` kept. Every reader
normalises once here; no other code assumes an input order.

Selections are applied on xarray's lazily indexed backend arrays *before* dask chunking, so opening
a decades-long hourly store and selecting a week builds a small dask graph.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from data_catalog import lexicon
from data_catalog.errors import UserError

__all__ = [
    "FORECAST_DIMS",
    "channel_sort_key",
    "normalise_dataset",
    "open_forecast_store",
    "open_raw",
    "open_reanalysis",
    "resolve_source",
    "store_format",
]

logger = logging.getLogger(__name__)

#: Leading dims of a forecast store (WeatherBench2 layout), in canonical order.
FORECAST_DIMS = ("time", "number", "prediction_timedelta")

_DIM_ALIASES: dict[str, str] = {
    "lat": "latitude",
    "lon": "longitude",
    "isobaricinhpa": "level",
    "pressure_level": "level",
    "plev": "level",
    "lev": "level",
    "pressure": "level",
    "member": "number",
    "ensemble": "number",
    "ensemble_member": "number",
    "realization": "number",
    "step": "prediction_timedelta",
    "lead_time": "prediction_timedelta",
    "lead": "prediction_timedelta",
    "init_time": "time",
    "forecast_reference_time": "time",
}
_KNOWN_DIMS = {"time", "number", "prediction_timedelta", "level", "latitude", "longitude"}
_METADATA_FILES = ("zarr.json", ".zgroup", ".zmetadata")


# ---------------------------------------------------------------------------------------------
# sources


def _builtin_store(name: str) -> str:
    """Path of a builtin store, built (and cached) on first use by ``data_catalog.world``: ``sphere-swe``
    (shallow water), ``qg3`` (three-level QG, :mod:`data_catalog.world.qg_store`) or ``qg3-analysis``
    (cycled analyses of ``qg3``, :mod:`data_catalog.world.qg_analysis`)."""
    if name == "sphere-swe":
        from data_catalog.world import world_store  # lazy: heavy, and built on first use

        return str(world_store())
    if name == "qg3":
        from data_catalog.world.qg_store import qg_world_store

        return str(qg_world_store())
    if name == "qg3-analysis":
        from data_catalog.world.qg_analysis import qg_analysis_store

        return str(qg_analysis_store())
    raise UserError(
        f"unknown builtin store 'builtin:{name}' "
        "(builtin stores: builtin:sphere-swe, builtin:qg3, builtin:qg3-analysis)"
    )


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def resolve_source(
    source: str | os.PathLike[str], catalog: str | os.PathLike[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """Turn a user's ``source`` into ``(location, storage_options, label)``.

    ``source`` is a local path, an fsspec URL (``gs://``, ``s3://``, ...), ``builtin:sphere-swe`` or
    the name of a catalog entry (default catalog, ``$WXENS_CATALOG`` and ``catalog``).
    """
    s = os.fspath(source).strip()
    if not s:
        raise UserError("empty data source")
    if s.startswith("builtin:"):
        return _builtin_store(s.split(":", 1)[1]), {}, s
    if s.startswith("file://"):
        s = s[len("file://") :]
    if _is_url(s):
        return s, {}, s
    path = Path(s).expanduser()
    if path.exists():
        return str(path), {}, s
    from data_catalog.catalog import load_catalog

    cat = load_catalog(catalog)
    if s in cat:
        entry = cat[s]
        loc = entry.resolved_location()
        if loc.startswith("builtin:"):
            return _builtin_store(loc.split(":", 1)[1]), dict(entry.storage_options), s
        if not _is_url(loc) and not Path(loc).exists():
            raise UserError(f"catalog entry '{s}' points to {loc}, which does not exist")
        return loc, dict(entry.storage_options), s
    names = ", ".join(sorted(cat)) or "none"
    raise UserError(f"no store at '{s}' and no catalog entry of that name (catalog entries: {names})")


def store_format(path: str | os.PathLike[str]) -> int:
    """Zarr format (2 or 3) of a local store, from its metadata files; raises UserError otherwise."""
    p = Path(path)
    if (p / "zarr.json").is_file():
        return 3
    if (p / ".zgroup").is_file() or (p / ".zmetadata").is_file():
        return 2
    raise UserError(f"{p} is not a zarr store (no zarr.json, .zgroup or .zmetadata)")


def open_raw(
    source: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open a zarr store (local path or fsspec URL) lazily, without dask chunking or caching.

    Consolidated metadata are used when present. Raises UserError for a path that is not a zarr
    store and for a store without data variables.
    """
    loc = os.fspath(source)
    if not _is_url(loc):
        p = Path(loc)
        if not p.exists():
            raise UserError(f"no such store: {p}")
        if not p.is_dir():
            raise UserError(f"{p} is not a zarr store (a file, not a folder)")
        store_format(p)
    kwargs: dict[str, Any] = {"engine": "zarr", "chunks": None, "cache": False}
    if storage_options:
        kwargs["storage_options"] = storage_options
    try:
        try:
            ds = xr.open_dataset(loc, consolidated=True, **kwargs)
        except (KeyError, FileNotFoundError, ValueError):
            ds = xr.open_dataset(loc, consolidated=False, **kwargs)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"cannot open {loc}: {exc} (install fsspec/gcsfs/s3fs for remote stores)") from exc
    except Exception as exc:  # zarr raises many types; the user sees one line
        raise UserError(f"cannot open {loc} as a zarr store: {type(exc).__name__}: {exc}") from exc
    if not ds.data_vars:
        raise UserError(f"store {loc} is empty (no data variables)")
    return ds


# ---------------------------------------------------------------------------------------------
# normalisation


def _fmt_level(level: float) -> str:
    v = float(level)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def _rename_dims(ds: xr.Dataset) -> xr.Dataset:
    renames: dict[Hashable, str] = {}
    names = set(ds.dims) | set(ds.coords)
    for name in names:
        target = _DIM_ALIASES.get(str(name).lower())
        if target and target not in names and target not in renames.values():
            renames[name] = target
    if "time" not in names and "time" not in renames.values() and "valid_time" in ds.dims:
        renames["valid_time"] = "time"
    ds = ds.rename(renames) if renames else ds
    # a single time (or level, member) stored as a scalar coordinate becomes a length-1 dim
    for dim in ("time",):
        if dim in ds.coords and dim not in ds.dims and ds[dim].ndim == 0:
            ds = ds.expand_dims(dim)
    return ds


def _level_hpa(ds: xr.Dataset) -> np.ndarray:
    lev = ds["level"]
    values = np.asarray(lev.values, dtype=np.float64)
    units = str(lev.attrs.get("units", "")).lower()
    if units in ("pa", "pascal", "pascals") or (units == "" and values.size and np.nanmax(values) > 1100):
        values = values / 100.0
    return values


def _order_latitude(ds: xr.Dataset, label: str) -> xr.Dataset:
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    if lat.size > 1 and np.unique(lat).size != lat.size:
        raise UserError(f"{label}: duplicate latitudes in the store")
    if lat.size > 1 and np.all(np.diff(lat) > 0):
        ds = ds.isel(latitude=slice(None, None, -1))
    elif lat.size > 1 and not np.all(np.diff(lat) < 0):
        ds = ds.isel(latitude=np.argsort(-lat, kind="stable"))
    return ds.assign_coords(latitude=ds["latitude"].astype(np.float64))


def _order_longitude(ds: xr.Dataset, label: str) -> xr.Dataset:
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    wrapped = np.mod(lon, 360.0)
    wrapped[np.isclose(wrapped, 360.0)] = 0.0
    order = np.argsort(wrapped, kind="stable")
    keep = np.ones(order.size, dtype=bool)
    keep[1:] = ~np.isclose(np.diff(wrapped[order]), 0.0)
    if not keep.all():
        logger.info("%s: dropping %d duplicate longitude(s) after wrapping to [0, 360)", label, (~keep).sum())
        order = order[keep]
    if not np.array_equal(order, np.arange(lon.size)):
        ds = ds.isel(longitude=order)
    attrs = dict(ds["longitude"].attrs)
    return ds.assign_coords(longitude=("longitude", wrapped[order], attrs))


def _check_times(ds: xr.Dataset, label: str) -> xr.Dataset:
    if "time" not in ds.dims:
        return ds
    idx = pd.DatetimeIndex(ds.indexes["time"]) if ds.sizes["time"] else None
    if idx is None:
        raise UserError(f"{label}: the store has no times")
    if idx.has_duplicates:
        dup = idx[idx.duplicated()]
        raise UserError(f"{label}: {dup.size} duplicate time(s) in the store, first {dup[0].isoformat()}")
    if not idx.is_monotonic_increasing:
        ds = ds.isel(time=np.argsort(idx.values, kind="stable"))
    return ds


def _channel_attrs(src: xr.DataArray, name: str, channel: str, level: float | None) -> dict[str, Any]:
    attrs = {k: v for k, v in src.attrs.items() if k not in ("coordinates", "_FillValue")}
    info = lexicon.channel_info(channel)
    if info is not None:
        attrs.setdefault("units", info.units)
        attrs.setdefault("long_name", info.long_name)
        if info.standard_name and attrs.get("standard_name") in (None, "", "unknown"):
            attrs["standard_name"] = info.standard_name
    if level is not None:
        ln = attrs.get("long_name", name)
        attrs["long_name"] = ln if "hPa" in str(ln) else f"{ln} at {_fmt_level(level)} hPa"
        attrs["level"] = _fmt_level(level)
        attrs["level_units"] = "hPa"
    attrs["source_name"] = name
    return attrs


def _preferred_chunks(var: xr.Variable) -> dict[Hashable, int]:
    pref = var.encoding.get("preferred_chunks")
    if isinstance(pref, dict):
        return dict(pref)
    chunks = var.encoding.get("chunks")
    if chunks is not None and len(chunks) == var.ndim:
        return dict(zip(var.dims, chunks, strict=True))
    return {}


def _select_time(ds: xr.Dataset, time: Any, label: str) -> xr.Dataset:
    if time is None:
        return ds
    if "time" not in ds.dims:
        raise UserError(f"{label}: the store has no time dimension to select from")
    idx = pd.DatetimeIndex(ds.indexes["time"])
    span = f"{idx[0].isoformat()} to {idx[-1].isoformat()}, {idx.size} times"
    if isinstance(time, slice):
        out = ds.sel(time=time)
        what = (
            f"{time.start} to {time.stop}"
            if time.start is not None and time.stop is not None
            else f"from {time.start}"
            if time.start is not None
            else f"up to {time.stop}"
        )
    elif isinstance(time, str):
        out = ds.sel(time=slice(time, time))
        what = time
    elif isinstance(time, (_dt.datetime, _dt.date, np.datetime64, pd.Timestamp)):
        return _select_time(ds, [time], label)
    elif isinstance(time, Iterable):
        try:
            wanted = pd.DatetimeIndex(pd.to_datetime(list(time)))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{label}: cannot read times {time!r}: {exc}") from exc
        missing = wanted.difference(idx)
        if missing.size:
            raise UserError(
                f"{label}: {missing.size} requested time(s) not in the store, first "
                f"{missing[0].isoformat()} (store covers {span})"
            )
        return ds.sel(time=wanted)
    else:
        raise UserError(f"{label}: cannot select time with {time!r} (use a slice, string, list or datetime)")
    if out.sizes["time"] == 0:
        raise UserError(f"{label}: no data for time {what} (store covers {span})")
    return out


def _select_levels(ds: xr.Dataset, levels: Sequence[float] | float | None, label: str) -> xr.Dataset:
    if "level" not in ds.dims:
        if levels is not None:
            logger.debug("%s: no level dim; levels=%s ignored", label, levels)
        return ds
    hpa = _level_hpa(ds)
    ds = ds.assign_coords(level=("level", hpa, {"units": "hPa", "long_name": "pressure level"}))
    if levels is None:
        return ds
    wanted = [float(levels)] if isinstance(levels, (int, float, np.number)) else [float(v) for v in levels]
    have = ", ".join(_fmt_level(v) for v in hpa)
    for lv in wanted:
        if not np.any(np.isclose(hpa, lv)):
            raise UserError(f"{label}: level {_fmt_level(lv)} hPa not in the store (levels: {have} hPa)")
    keep = [int(np.flatnonzero(np.isclose(hpa, lv))[0]) for lv in wanted]
    return ds.isel(level=keep)


def _resolve_channels(ds: xr.Dataset, variables: Sequence[str] | str | None, label: str) -> list[str] | None:
    """Canonical channel names requested (None: all)."""
    if variables is None:
        return None
    if isinstance(variables, str):
        variables = [variables]
    available = list(ds.data_vars)
    bases: dict[str, list[str]] = {}
    for ch in available:
        b, lv = lexicon.split_channel(str(ch))
        if lv is not None:
            bases.setdefault(b, []).append(str(ch))
    out: list[str] = []
    for req in variables:
        if req in ds.data_vars:
            picked = [req]
        else:
            c = lexicon.canonical_name(req)
            b, lv = lexicon.split_channel(c)
            if c in ds.data_vars:
                picked = [c]
            elif lv is None and c in bases:
                picked = bases[c]
            elif lv is not None and b in bases:
                levs = ", ".join(str(lexicon.split_channel(x)[1]) for x in bases[b])
                raise UserError(
                    f"{label}: variable {req} needs level {lv} hPa, not in the store ({b} levels: {levs} hPa)"
                )
            else:
                raise UserError(
                    f"{label}: unknown variable '{req}' (the store has: {', '.join(map(str, available))})"
                )
        out.extend(p for p in picked if p not in out)
    return out


def normalise_dataset(
    ds: xr.Dataset,
    *,
    variables: Sequence[str] | str | None = None,
    time: Any = None,
    levels: Sequence[float] | float | None = None,
    label: str = "dataset",
    leading: Sequence[str] = ("time", "number"),
) -> xr.Dataset:
    """Bring any lat-lon dataset into the canonical form and select from it.

    Dims are renamed (``lat`` -> ``latitude``, ``isobaricInhPa``/``pressure_level``/``plev`` ->
    ``level`` in hPa, ``member`` -> ``number``, ``step``/``lead_time`` -> ``prediction_timedelta``),
    each (variable, level) becomes one channel named by :mod:`data_catalog.lexicon`, latitude is
    ordered north to south, longitude wrapped into [0, 360) and sorted, data cast to float32 and
    chunked with dask. Time-invariant fields (land-sea mask, orography) become coordinates.

    ``leading`` lists the dims kept before ``(latitude, longitude)``, in that order.
    """
    ds = _rename_dims(ds)
    for dim in ("latitude", "longitude"):
        if dim not in ds.dims:
            raise UserError(f"{label}: no {dim} dimension (dims: {', '.join(map(str, ds.dims))})")
    ds = _check_times(ds, label)
    ds = _select_time(ds, time, label)
    ds = _select_levels(ds, levels, label)
    ds = _order_latitude(ds, label)
    ds = _order_longitude(ds, label)

    allowed = set(leading) | {"latitude", "longitude", "level"}
    channels: dict[str, xr.DataArray] = {}
    statics: dict[str, xr.DataArray] = {}
    aux: dict[str, xr.DataArray] = {}
    chunking: dict[str, dict[Hashable, int]] = {}
    for name, da in ds.data_vars.items():
        dims = set(da.dims)
        if not {"latitude", "longitude"} <= dims:
            if dims and dims <= set(leading):  # per-member/per-init metadata, e.g. nonfinite_step
                aux[str(name)] = da.reset_coords(drop=True)
            else:
                logger.debug("%s: skipping %s (dims %s): not a lat-lon field", label, name, da.dims)
            continue
        extra = dims - allowed
        if extra:
            logger.warning("%s: skipping %s: unsupported dims %s", label, name, sorted(map(str, extra)))
            continue
        pref = _preferred_chunks(da.variable)
        if "time" in leading and "time" not in dims and "time" in ds.dims:
            statics[lexicon.canonical_name(str(name))] = da
            continue
        if "level" in dims:
            for i, lv in enumerate(np.asarray(ds["level"].values, dtype=np.float64)):
                if not lexicon.holds_level(da.attrs, lv):
                    continue
                ch = lexicon.canonical_name(str(name), lv)
                if ch == str(name):
                    ch = f"{name}_{_fmt_level(lv)}"
                sub = da.isel(level=i, drop=True).reset_coords(drop=True)
                sub.attrs = _channel_attrs(da, str(name), ch, lv)
                if ch in channels:
                    logger.warning("%s: %s (from %s) duplicates a channel; kept the first", label, ch, name)
                    continue
                channels[ch] = sub
                chunking[ch] = pref
        else:
            ch = lexicon.canonical_name(str(name))
            if ch in channels:
                logger.warning("%s: %s (from %s) duplicates a channel; kept the first", label, ch, name)
                continue
            sub = da.reset_coords(drop=True)
            sub.attrs = _channel_attrs(da, str(name), ch, None)
            channels[ch] = sub
            chunking[ch] = pref
    if not channels:
        raise UserError(
            f"{label}: no lat-lon data variables with dims {', '.join((*leading, 'latitude', 'longitude'))}"
        )

    coords: dict[str, Any] = {}
    for c in ("time", *leading, "latitude", "longitude"):
        if c in ds.coords and c not in coords:
            coords[c] = ds[c]
    for name, c in ds.coords.items():  # member metadata (checkpoint, pair, sign) stays on number
        if name not in coords and c.dims and set(c.dims) <= set(leading) - {"time"}:
            coords[str(name)] = c
    out = xr.Dataset(channels, coords=coords, attrs=dict(ds.attrs))
    for name, da in statics.items():
        out = out.assign_coords({name: da.drop_vars([c for c in da.coords if c not in da.dims])})
    if aux:
        out = out.assign_coords(aux)

    out = out[sorted(out.data_vars, key=channel_sort_key)]
    out = _select_channels(out, variables, label)
    order = [d for d in leading if d in out.dims] + ["latitude", "longitude"]
    out = out.transpose(*order, ...)
    return _to_dask_float32(out, chunking)


def channel_sort_key(channel: Hashable) -> tuple[int, int, float, str]:
    """Canonical channel order: upper-air by base (z, t, u, v, w, q, r, vo, ...) then level
    ascending, then single-level channels in lexicon order, then unknown names alphabetically."""
    name = str(channel)
    base, level = lexicon.split_channel(name)
    bases, surface = list(lexicon.BASES), list(lexicon.SURFACE)
    if level is not None and base in lexicon.BASES:
        return (0, bases.index(base), float(level), name)
    if name in lexicon.SURFACE:
        return (1, surface.index(name), 0.0, name)
    return (2, 0, 0.0, name)


def _select_channels(ds: xr.Dataset, variables: Sequence[str] | str | None, label: str) -> xr.Dataset:
    wanted = _resolve_channels(ds, variables, label)
    return ds if wanted is None else ds[wanted]


def _to_dask_float32(ds: xr.Dataset, chunking: dict[str, dict[Hashable, int]]) -> xr.Dataset:
    new = {}
    for name, da in ds.data_vars.items():
        if da.chunks is None:
            pref = {d: c for d, c in chunking.get(str(name), {}).items() if d in da.dims}
            da = da.chunk(pref or "auto")
        if da.dtype != np.float32:
            da = da.astype(np.float32)
        new[name] = da
    return ds.assign(new)


# ---------------------------------------------------------------------------------------------
# public openers


def _open_any(source: str | os.PathLike[str] | xr.Dataset, catalog: Any) -> tuple[xr.Dataset, str]:
    if isinstance(source, xr.Dataset):
        return source, "dataset"
    loc, opts, label = resolve_source(source, catalog)
    return open_raw(loc, opts or None), label


def _select_members(ds: xr.Dataset, member: int | Sequence[int] | None, label: str) -> xr.Dataset:
    if member is None:
        return ds
    if "number" not in ds.dims:
        raise UserError(f"{label}: member={member} given but the store has no ensemble (number) dimension")
    have = np.asarray(ds["number"].values)
    wanted = [member] if isinstance(member, (int, np.integer)) else list(member)
    missing = [m for m in wanted if m not in have]
    if missing:
        raise UserError(
            f"{label}: member {missing[0]!r} not in the store (members: {have.min()!r}..{have.max()!r})"
        )
    return ds.sel(number=member)


def open_reanalysis(
    source: str | os.PathLike[str] | xr.Dataset,
    variables: Sequence[str] | str | None = None,
    time: Any = None,
    levels: Sequence[float] | float | None = None,
    *,
    member: int | Sequence[int] | None = None,
    lead: str | pd.Timedelta | np.timedelta64 | None = None,
    catalog: str | os.PathLike[str] | None = None,
) -> xr.Dataset:
    """Open a reanalysis store lazily in the canonical form.

    Parameters
    ----------
    source
        Local zarr path (v2 or v3), fsspec URL (``gs://...``, needs gcsfs), catalog entry name,
        ``builtin:sphere-swe``, or an in-memory ``xarray.Dataset``.
    variables
        Channel names or any lexicon alias (``z500``, ``geopotential_500``, ``2m_temperature``);
        a bare upper-air name (``geopotential``, ``t``) selects all its levels. Default: all.
    time
        ``slice`` (inclusive, strings or datetimes), a string (``"2017-01-01"`` selects that day),
        a datetime, or a list of times (each must exist).
    levels
        Pressure levels (hPa) to keep.
    member
        For an ensemble store (dim ``number``): ``None`` keeps the ``number`` dim (each channel is
        ``(time, number, latitude, longitude)``); an int selects that member and drops the dim; a
        list keeps the dim with those members.
    lead
        For a forecast-layout store (``prediction_timedelta``): the lead to read; ``time`` becomes
        the valid time ``init + lead``. Without it a forecast store is refused.
    catalog
        Extra catalog file for entry names.

    Returns
    -------
    xarray.Dataset
        One float32 dask-backed variable per channel, latitude descending, longitude in [0, 360).
    """
    raw, label = _open_any(source, catalog)
    raw = _rename_dims(raw)
    if "prediction_timedelta" in raw.dims:
        if lead is None:
            raise UserError(
                f"{label} is a forecast store (dim prediction_timedelta); use open_forecast_store, "
                "or pass lead= to read one lead as a reanalysis"
            )
        raw = _select_lead(raw, lead, label)
    # time selection happens after the valid-time shift, inside normalise_dataset
    raw = _select_members(raw, member, label)
    return normalise_dataset(
        raw, variables=variables, time=time, levels=levels, label=label, leading=("time", "number")
    )


def _hours(td: Any) -> str:
    return f"{pd.Timedelta(td) / pd.Timedelta(hours=1):g}h"


def _select_lead(ds: xr.Dataset, lead: Any, label: str) -> xr.Dataset:
    td = pd.Timedelta(lead)
    leads = pd.TimedeltaIndex(ds.indexes["prediction_timedelta"])
    if td not in leads:
        have = ", ".join(_hours(x) for x in leads)
        raise UserError(f"{label}: lead {_hours(td)} not in the store (leads: {have})")
    ds = ds.sel(prediction_timedelta=td, drop=True)
    valid = pd.DatetimeIndex(ds.indexes["time"]) + td
    return ds.assign_coords(time=("time", valid.values, ds["time"].attrs))


def open_forecast_store(
    source: str | os.PathLike[str] | xr.Dataset,
    variables: Sequence[str] | str | None = None,
    time: Any = None,
    levels: Sequence[float] | float | None = None,
    *,
    member: int | Sequence[int] | None = None,
    catalog: str | os.PathLike[str] | None = None,
) -> xr.Dataset:
    """Open a WeatherBench2-layout forecast store lazily with canonical channel names.

    Same normalisation as :func:`open_reanalysis` (channels per level, latitude descending,
    longitude in [0, 360), float32, dask), keeping the forecast dims that exist, in the order
    ``(time, number, prediction_timedelta, latitude, longitude)``; ``time`` is the initialisation.
    A deterministic store has no ``number`` dim; none is invented. ``time`` selects inits.
    """
    raw, label = _open_any(source, catalog)
    raw = _rename_dims(raw)
    raw = _select_members(raw, member, label)
    return normalise_dataset(
        raw, variables=variables, time=time, levels=levels, label=label, leading=FORECAST_DIMS
    )
