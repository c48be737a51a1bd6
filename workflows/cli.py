"""The ``wxens`` command line: a thin layer over functions a notebook can call.

Each layer contributes its commands (``data_catalog.cli``, ``models.cli``, ``pipeline.cli``,
``evaluation.cli``); this module composes them and turns :class:`UserError` into one line on stderr
and exit status 2.
"""

from __future__ import annotations

import logging
import sys

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
    json_logs: bool = typer.Option(False, "--json-logs", help="One JSON object per log line (batch systems)."),
) -> None:
    """Huge-ensemble ML weather forecasts: data, models, ensembles, scores."""
    from workflows.logs import setup_logging

    setup_logging(verbose=verbose, quiet=quiet, json_logs=json_logs)


@app.command()
def version() -> None:
    """Print the wxens version."""
    from wxens import __version__

    typer.echo(__version__)


def _register() -> None:
    from data_catalog import cli as catalog_cli
    from evaluation import cli as evaluation_cli
    from models import cli as models_cli
    from pipeline import cli as pipeline_cli

    for mod in (catalog_cli, models_cli, pipeline_cli, evaluation_cli):
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except Exception as exc:
        # click/typer usage errors (unknown command, bad option) carry their own message and code
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"error: {exc.format_message()}", file=sys.stderr)
            return int(exc.exit_code)
        logging.getLogger("wxens").debug("unexpected error", exc_info=True)
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
