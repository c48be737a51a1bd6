"""Command-line commands of the data_catalog layer (composed into `wxens` by workflows.cli)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="data_catalog commands")
