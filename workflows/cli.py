"""The ``wxens`` command line: a thin layer over functions a notebook can call.

Each layer contributes its commands (``data_catalog.cli``, ``models.cli``, ``pipeline.cli``,
``evaluation.cli``); this module composes them and turns :class:`UserError` into one line on stderr
and exit status 2.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import typer

from data_catalog.errors import UserError

app = typer.Typer(
    name="wxens",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Huge-ensemble ML weather forecasts: data, models, ensembles, scores.",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    json_logs: bool = typer.Option(
        False, "--json-logs", help="One JSON object per log line (batch systems)."
    ),
) -> None:
    """Huge-ensemble ML weather forecasts: data, models, ensembles, scores."""
    from workflows.logs import setup_logging

    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs)


@app.command()
def version() -> None:
    """Print the wxens version."""
    from wxens import __version__

    typer.echo(__version__)


# --------------------------------------------------------------------------------------------------
# workflow commands: run, status, info, submit
# --------------------------------------------------------------------------------------------------
_STAGE_HELP = "Stage to run (repeatable): prepare, train, skill, model_climate, forecast, score, report."


@app.command()
def run(
    workflow: Path | None = typer.Argument(None, help="Workflow YAML file.", show_default=False),
    stage: list[str] | None = typer.Option(None, "--stage", "-s", help=_STAGE_HELP),
    shard: str | None = typer.Option(None, "--shard", help="Run shard i of N of one stage: i/N."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Override the workflow's run_dir."),
    force: bool = typer.Option(False, "--force", help="Rerun stages even when done for this configuration."),
    explain: bool = typer.Option(
        False,
        "--explain",
        help="Describe every workflow key (with a workflow: also its stage plan) and exit.",
    ),
) -> None:
    """Run a workflow's stages in order; each is skipped when done for the same configuration."""
    import warnings

    from workflows.runner import parse_shard, run_workflow

    # zarr 3 notes that consolidated metadata is an extension; stores written here use it on purpose
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    from workflows.schema import explain as explain_schema
    from workflows.schema import load_workflow

    if explain:
        if workflow is None:
            typer.echo(explain_schema())
            return
        from workflows.plan import describe_plan

        typer.echo(describe_plan(load_workflow(workflow), run_dir))
        return
    if workflow is None:
        raise UserError("missing WORKFLOW (a workflow YAML file); see wxens run --help")
    wf = load_workflow(workflow)
    target = run_dir.resolve() if run_dir else wf.resolved_run_dir()
    results = run_workflow(
        wf,
        run_dir=target,
        stages=list(stage) if stage else None,
        shard=parse_shard(shard) if shard else None,
        force=force,
        progress=lambda line: typer.echo(line, err=True),
    )
    report = None
    for res in results:
        report = res.outputs.get("report", report)
    if report is None and (stage is None or "report" in stage):
        from workflows.runner import read_stage_record

        rec = read_stage_record(target, "report") or {}
        report = (rec.get("outputs") or {}).get("report")
    typer.echo(f"run directory: {target}")
    if report:
        typer.echo(f"report: {target / report}")


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Done / pending / failed per stage and shard, members written and throughput of a run."""
    import json

    from workflows.status import format_status, run_status

    st = run_status(run_dir)
    typer.echo(json.dumps(st, indent=2) if json_out else format_status(st))


@app.command()
def info(
    store: str = typer.Argument(..., help="Zarr store (path or URL)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Dims, variables, time range, members and provenance attributes of a zarr store."""
    import json

    from workflows.status import format_info, store_info

    meta = store_info(store)
    typer.echo(json.dumps(meta, indent=2) if json_out else format_info(meta))


@app.command()
def submit(
    workflow: Path = typer.Argument(..., help="Workflow YAML file."),
    scheduler: str = typer.Option(
        "slurm", "--scheduler", help="slurm (sbatch array jobs) or local (processes)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Write the job scripts and print the sbatch commands."
    ),
    stage: list[str] | None = typer.Option(None, "--stage", "-s", help=_STAGE_HELP),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Override the workflow's run_dir."),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition (all stages)."),
    account: str | None = typer.Option(None, "--account", help="SLURM account (all stages)."),
    time: str | None = typer.Option(None, "--time", help="Wall time per task, e.g. 02:00:00."),
    gpus: int | None = typer.Option(None, "--gpus", help="GPUs per task."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Local scheduler: shards run at once."),
) -> None:
    """Submit the workflow as chained SLURM array jobs (one shard per task), or run it locally."""
    from workflows.schema import load_workflow
    from workflows.submit import run_local, submit_slurm

    wf = load_workflow(workflow)
    overrides = {"partition": partition, "account": account, "time": time, "gpus": gpus}
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    if scheduler == "slurm":
        submit_slurm(
            wf, workflow, run_dir=run_dir, stages=stage, overrides=overrides, dry_run=dry_run, say=say
        )
    elif scheduler == "local":
        if dry_run:
            raise UserError("--dry-run applies to --scheduler slurm")
        run_local(wf, workflow, run_dir=run_dir, stages=stage, overrides=overrides, jobs=jobs, say=say)
    else:
        raise UserError(f"--scheduler must be slurm or local, got {scheduler!r}")


def _register() -> None:
    from data_catalog import cli as catalog_cli
    from evaluation import cli as evaluation_cli
    from models import cli as models_cli
    from pipeline import cli as pipeline_cli

    for mod in (catalog_cli, models_cli, pipeline_cli, evaluation_cli):
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


#: errno values of a full or read-only disk, reported in one line instead of a traceback
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    # outputs (run directories, stores, manifests) are never world-writable, whatever the umask
    # (group write follows the user's umask: shared project groups on clusters rely on it)
    os.umask(os.umask(0o002) | 0o002)
    _register()
    try:
        # without standalone mode click *returns* the code of typer.Exit(n) instead of raising it
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        # a full disk or quota is not a bug: finished work is in the manifest, a rerun resumes
        logging.getLogger("wxens").debug("storage error", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(
            f"error: {exc.strerror or exc}{where} (free space and rerun the same command; finished work is kept)",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        # click/typer usage errors (unknown command, bad option) carry their own message and code
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"error: {exc.format_message()}", file=sys.stderr)
            return int(exc.exit_code)
        logging.getLogger("wxens").debug("unexpected error", exc_info=True)
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
