"""Command-line commands of the data_catalog layer (composed into `wxens` by workflows.cli).

``wxens catalog list``, ``wxens catalog show NAME_OR_PATH``, ``wxens catalog check NAME_OR_PATH``,
``wxens catalog stats NAME_OR_PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True, help="Data sources: the catalog, store descriptions, statistics.")

_CATALOG_OPT = typer.Option(None, "--catalog", "-c", help="Extra catalog YAML file (besides $WXENS_CATALOG).")
_JSON_OPT = typer.Option(False, "--json", help="Machine-readable JSON output.")


def register(root: typer.Typer) -> None:
    """Add the ``catalog`` command group to the root ``wxens`` app."""
    root.add_typer(app, name="catalog")


def _grid_line(g: dict[str, Any]) -> str:
    res = f", {g['dlat']:g} x {g['dlon']:g} deg" if g.get("dlat") and g.get("dlon") else ""
    lr, nr = g["latitude_range"], g["longitude_range"]
    scope = "global" if g["global"] else f"latitude {lr[0]:g}..{lr[1]:g}, longitude {nr[0]:g}..{nr[1]:g}"
    return f"{g['nlon']}x{g['nlat']} {g['kind']}{res}, {scope}"


@app.command("list")
def list_entries(catalog: Path | None = _CATALOG_OPT, as_json: bool = _JSON_OPT) -> None:
    """List catalog entries (name, where, grid, time range)."""
    from data_catalog.catalog import load_catalog

    cat = load_catalog(catalog)
    if as_json:
        typer.echo(json.dumps([cat[n].as_dict() for n in cat], indent=1))
        return
    width = max((len(n) for n in cat), default=4)
    for name in cat:
        e = cat[name]
        where = "remote" if e.remote else "local"
        span = f"{e.time_start or '?'} .. {e.time_end or 'now'}"
        typer.echo(f"{name:<{width}}  {where:<6}  {e.grid or '-'}  {span}  {e.time_step or ''}".rstrip())
    typer.echo(f"({len(cat)} entries from {', '.join(cat.files)})")


@app.command("show")
def show(
    source: str = typer.Argument(..., help="Catalog entry name, zarr path or builtin:sphere-swe."),
    catalog: Path | None = _CATALOG_OPT,
    as_json: bool = _JSON_OPT,
) -> None:
    """Describe a store: dims, channels, time range, grid, size on disk (remote entries: catalog only)."""
    from data_catalog.describe import describe_source, format_bytes

    info = describe_source(source, catalog)
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    entry: dict[str, Any] = info.get("catalog") or {}
    typer.echo(f"source: {info['name']}")
    typer.echo(f"location: {info['location']}")
    if entry.get("description"):
        typer.echo(f"description: {entry['description']}")
    if not info.get("opened"):
        typer.echo("remote entry (catalog metadata only; not opened)")
        typer.echo(f"variables: {', '.join(entry['variables']) or '-'}")
        typer.echo(
            f"time: {entry['time']['start'] or '?'} .. {entry['time']['end'] or 'now'} every {entry['time_step'] or '?'}"
        )
        typer.echo(f"grid: {entry['grid'] or '-'}")
        return
    typer.echo(f"format: {info['format']}, layout: {info['layout']}")
    typer.echo("dims: " + ", ".join(f"{d}={n}" for d, n in info["dims"].items()))
    if "time" in info:
        t = info["time"]
        step = f", every {t['step']}" if t["step"] else ""
        typer.echo(f"time: {t['start']} .. {t['end']} ({t['count']} times{step})")
    if "members" in info:
        typer.echo(f"members: {info['members']}")
    if "leads" in info:
        typer.echo(f"leads: {', '.join(info['leads'])}")
    typer.echo(f"grid: {_grid_line(info['grid'])}")
    typer.echo(f"channels ({len(info['channels'])}):")
    for ch in info["channels"]:
        typer.echo(f"  {ch['name']:<8} {ch['units']:<12} {ch['long_name']}  (from {ch['source_name']})")
    if info["static"]:
        typer.echo(f"static fields: {', '.join(info['static'])}")
    typer.echo(f"size on disk: {format_bytes(info['size_bytes'])}")


@app.command("check")
def check(
    source: str = typer.Argument(..., help="Catalog entry name, zarr path or builtin:sphere-swe."),
    start: str | None = typer.Option(None, help="First time (inclusive)."),
    end: str | None = typer.Option(None, help="Last time (inclusive)."),
    variable: list[str] | None = typer.Option(None, "--variable", "-V", help="Channel (repeatable)."),
    regional: bool = typer.Option(False, "--regional", help="Accept a regional (non-global) grid."),
    catalog: Path | None = _CATALOG_OPT,
) -> None:
    """Check a store is usable for training/verification: opens in canonical form, unique times,
    a uniform global grid (unless --regional) and finite values in the selection."""
    from data_catalog.checks import check_finite, check_global_grid
    from data_catalog.grid import describe_grid
    from data_catalog.readers import open_reanalysis

    time = slice(start, end) if (start or end) else None
    ds = open_reanalysis(source, variables=variable or None, time=time, catalog=catalog)
    g = (
        check_global_grid(ds)
        if not regional
        else describe_grid(ds["latitude"].values, ds["longitude"].values)
    )
    check_finite(ds)
    typer.echo(
        f"ok: {len(ds.data_vars)} channels, {ds.sizes['time']} times, {_grid_line(g)}, all values finite"
    )


@app.command("stats")
def stats(
    source: str = typer.Argument(..., help="Catalog entry name, zarr path or builtin:sphere-swe."),
    start: str | None = typer.Option(None, help="First time (inclusive), e.g. 2000-01-01."),
    end: str | None = typer.Option(None, help="Last time (inclusive), e.g. 2006-12-31T18."),
    variable: list[str] | None = typer.Option(None, "--variable", "-V", help="Channel (repeatable)."),
    refresh: bool = typer.Option(False, help="Recompute even when the cache is valid."),
    catalog: Path | None = _CATALOG_OPT,
    as_json: bool = _JSON_OPT,
) -> None:
    """Area-weighted mean, std and 6-hour tendency std per channel (cached)."""
    from data_catalog.stats import channel_statistics

    time = slice(start, end) if (start or end) else None
    doc = channel_statistics(source, time=time, variables=variable or None, refresh=refresh, catalog=catalog)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    p = doc["provenance"]
    typer.echo(f"{p['source']}: {p['time_range'][0]} .. {p['time_range'][1]} ({p['n_times']} times)")
    typer.echo(f"{'channel':<8} {'mean':>14} {'std':>14} {'tendency_std':>14}")
    for name, s in doc["channels"].items():
        tend = f"{s['tendency_std']:14.6g}" if s["tendency_std"] is not None else f"{'-':>14}"
        typer.echo(f"{name:<8} {s['mean']:14.6g} {s['std']:14.6g} {tend}")
