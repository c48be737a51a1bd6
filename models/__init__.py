"""Forecast models: the ForecastModel protocol, SFNO, training and checkpoints."""

from models.base import ForecastModel

__all__ = ["ForecastModel"]
