"""Command-line commands of the evaluation layer (composed into `wxens` by workflows.cli):

``wxens score FORECAST --truth SOURCE --out SCORES.nc`` and ``wxens report SCORES --out DIR``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import typer

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="evaluation commands")


def _split(values: list[str] | None) -> list[str] | None:
    """``["z500,t850", "u10m"]`` -> ``["z500", "t850", "u10m"]``."""
    if not values:
        return None
    out = [p.strip() for v in values for p in v.split(",") if p.strip()]
    return out or None


def _thresholds(values: list[str] | None) -> dict[str, list[float]] | None:
    """``["t850=273.15", "z500=54000,55000"]`` -> ``{"t850": [273.15], "z500": [54000.0, 55000.0]}``."""
    if not values:
        return None
    out: dict[str, list[float]] = {}
    for item in values:
        name, sep, rest = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--threshold wants VARIABLE=VALUE[,VALUE...], got {item!r}")
        try:
            out.setdefault(name.strip(), []).extend(float(x) for x in rest.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--threshold {item!r}: values must be numbers") from None
    return out


@contextlib.contextmanager
def scheduler_context(scheduler: str | None, workers: int = 2) -> Iterator[None]:
    """Run dask work under ``scheduler``: ``None``/``threads`` (default threaded), ``sync``,
    ``local`` (a ``dask.distributed.LocalCluster`` with ``workers`` workers) or the address of a
    running scheduler (``tcp://host:8786``, e.g. one started by dask-jobqueue's ``SLURMCluster``)."""
    import dask

    if scheduler in (None, "", "threads", "sync", "synchronous", "processes"):
        with dask.config.set(scheduler=scheduler or "threads"):
            yield
        return
    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster),
        ):
            log.info("dask LocalCluster with %d workers", workers)
            yield
        return
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot connect to dask scheduler {scheduler}: {exc}") from exc
    with client:
        log.info("dask scheduler %s", scheduler)
        yield


def score_cmd(
    forecast: Path = typer.Argument(..., help="Forecast store (WeatherBench2 layout zarr)."),
    truth: str = typer.Option(..., "--truth", help="Verifying data: catalog source name or zarr path."),
    out: Path = typer.Option(
        ..., "--out", help="Scores file (.nc or .zarr); a tidy CSV is written beside it."
    ),
    baseline: list[str] = typer.Option(
        [], "--baseline", help="climatology | probclim | persistence (repeatable)."
    ),
    variables: list[str] = typer.Option(
        [], "--variables", help="Channels to score (comma-separated or repeated)."
    ),
    region: list[str] = typer.Option(
        [], "--region", help="Regions (default global, nh/sh extratropics, tropics)."
    ),
    threshold: list[str] = typer.Option(
        [], "--threshold", help="VARIABLE=VALUE[,VALUE] exceedance thresholds."
    ),
    reference: str | None = typer.Option(
        None, "--reference", help="Reference period START:END of the climatologies."
    ),
    standard: bool = typer.Option(False, "--standard-crps", help="Standard instead of fair CRPS/Brier."),
    per_init: bool = typer.Option(False, "--per-init", help="Keep one value per initialisation."),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="threads (default) | local | ADDRESS of a dask scheduler."
    ),
    workers: int = typer.Option(2, "--workers", help="Workers of --scheduler local."),
    seed: int = typer.Option(0, "--seed", help="Seed of the rank-histogram tie-breaking."),
    lat_chunk: int | None = typer.Option(
        None, "--lat-chunk", help="Latitude rows per task (default: ~128 MiB)."
    ),
    time_chunk: int = typer.Option(1, "--time-chunk", help="Initialisations per task (fewer, larger tasks)."),
) -> None:
    """Score an ensemble forecast store against truth (fair CRPS, RMSE, spread, ranks, ...)."""
    from evaluation.score import DEFAULT_REGIONS, score_forecast, write_scores

    if out.suffix.lower() not in (".nc", ".zarr"):
        raise UserError(f"--out must end in .nc or .zarr, got {out.name}")
    ref = None
    if reference:
        start, sep, end = reference.partition(":")
        if not sep:
            raise UserError("--reference wants START:END, e.g. 2000:2006")
        ref = (start, end)
    with scheduler_context(scheduler, workers):
        scores = score_forecast(
            forecast,
            truth,
            variables=_split(variables),
            regions=_split(region) or DEFAULT_REGIONS,
            fair=not standard,
            thresholds=_thresholds(threshold),
            baselines=_split(baseline),
            per_init=per_init,
            seed=seed,
            reference=ref,
            lat_chunk=lat_chunk,
            time_chunk=time_chunk,
        )
    path = write_scores(scores, out)
    typer.echo(f"scores: {path} and {path.with_suffix('.csv')}")


def report_cmd(
    scores: Path = typer.Argument(..., help="Scores written by `wxens score`."),
    out: Path = typer.Option(..., "--out", help="Report folder (report.html + PNGs)."),
    forecast: Path | None = typer.Option(
        None, "--forecast", help="Forecast store, for maps, plumes, spectra, EFI."
    ),
    truth: str | None = typer.Option(
        None, "--truth", help="Truth source or path, for spectra, EFI and plumes."
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Baseline of the scorecards (default: first found)."
    ),
    region: str = typer.Option("global", "--region", help="Region of the summary, curves and scorecards."),
    variables: list[str] = typer.Option([], "--variables", help="Variables to show (default: all scored)."),
) -> None:
    """Write an HTML report (scorecards, score curves, rank histograms, maps) from scores."""
    from evaluation.report import write_report

    if truth is not None and forecast is None:
        raise UserError("--truth needs --forecast")
    path = write_report(
        scores,
        out,
        forecast=forecast,
        truth=truth,
        baseline=baseline,
        region=region,
        variables=_split(variables),
    )
    typer.echo(f"report: {path}")


def register(root: typer.Typer) -> None:
    """Add ``score`` and ``report`` to the root ``wxens`` app (once)."""
    if any(c.name in ("score", "report") for c in root.registered_commands):
        return
    root.command("score")(score_cmd)
    root.command("report")(report_cmd)
