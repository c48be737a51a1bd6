"""Forecast models: the ForecastModel protocol, SFNO, training and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.base import ForecastModel

__all__ = ["ForecastModel", "check_compatible", "list_checkpoints", "load_checkpoint", "pretrained_dir"]

_PRETRAINED = Path(__file__).resolve().parent / "pretrained"


def pretrained_dir(world: str = "sphere-swe") -> Path:
    """Folder of the checkpoints shipped for ``world`` (one ``seed-<S>/`` directory each)."""
    from data_catalog.errors import UserError

    name = world.removeprefix("builtin:")
    path = _PRETRAINED / name
    if not path.is_dir():
        shipped = sorted(p.name for p in _PRETRAINED.iterdir() if p.is_dir()) if _PRETRAINED.is_dir() else []
        raise UserError(f"no shipped checkpoints for '{world}' (available: {shipped or 'none'})")
    return path


def __getattr__(name: str) -> Any:  # lazy: importing models stays light
    if name in ("load_checkpoint", "check_compatible", "list_checkpoints", "save_checkpoint"):
        from models import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
