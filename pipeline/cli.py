"""Command-line commands of the pipeline layer (composed into `wxens` by workflows.cli).

``wxens forecast CONFIG.yaml --run-dir D [--shard i/N]`` and ``wxens verify RUN_DIR [--delete]``.
"""

from __future__ import annotations

import json
import logging

import typer

from data_catalog.errors import UserError

app = typer.Typer(no_args_is_help=True, help="pipeline commands")
log = logging.getLogger(__name__)


def forecast_main(config: str, run_dir: str, shard: str | None = None) -> int:
    """Run one shard of a forecast; returns 0 when this shard's units are all done."""
    from pipeline.engine import run_forecast
    from pipeline.members import parse_shard

    summary = run_forecast(config, run_dir, shard=parse_shard(shard))
    return 0 if not summary["units_skipped_locked"] else 3


def register(root: typer.Typer) -> None:
    """Add ``forecast`` and ``verify`` to the ``wxens`` app."""

    @root.command("forecast")
    def forecast(
        config: str = typer.Argument(..., help="Forecast config YAML (pipeline.ForecastConfig)."),
        run_dir: str = typer.Option(..., "--run-dir", help="Run directory (resumes if it exists)."),
        shard: str = typer.Option(
            None, "--shard", help="i/N: this process's share (default: SLURM array variables, else 0/1)."
        ),
    ) -> None:
        """Run (or resume) an ensemble forecast: breed, roll out, write, score inline."""
        from pipeline.engine import run_forecast
        from pipeline.members import parse_shard

        summary = run_forecast(config, run_dir, shard=parse_shard(shard))
        typer.echo(
            f"{summary['units_computed']} unit(s) computed, "
            f"{summary['member_steps_per_s']:.1f} member-steps/s, complete={summary['complete']}"
        )
        if summary["units_skipped_locked"]:
            typer.echo(
                f"{len(summary['units_skipped_locked'])} unit(s) locked by other processes; rerun later"
            )
            raise typer.Exit(3)

    @root.command("verify")
    def verify_cmd(
        run_dir: str = typer.Argument(..., help="Run directory."),
        delete: bool = typer.Option(
            False, "--delete", help="Drop corrupted units so a rerun recomputes them."
        ),
    ) -> None:
        """Check the checksums of every finished work unit."""
        from pathlib import Path

        from pipeline.manifest import verify

        if not (Path(run_dir) / "plan.json").is_file():
            raise UserError(f"{run_dir} is not a forecast run directory")
        rep = verify(run_dir, delete=delete)
        typer.echo(
            json.dumps(
                {
                    "ok": len(rep["ok"]),
                    "corrupted": rep["corrupted"],
                    "missing": len(rep["missing"]),
                    "total": rep["total"],
                }
            )
        )
        if rep["corrupted"]:
            raise typer.Exit(1)
