"""The forecast-model protocol: the whole extension surface the ensemble engine relies on.

Tensors are ``(member, channel, lat, lon)`` in **physical units**, latitude ordered north to south
(90 -> -90, the canonical order of :mod:`data_catalog`), longitude ascending in [0, 360).
Normalisation and residual prediction live inside the implementation.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class ForecastModel(Protocol):
    """A one-step autoregressive forecast model.

    Attributes
    ----------
    channels
        Canonical channel names, in tensor order; input and output channels are the same list.
    latitude, longitude
        Grid coordinates in degrees (latitude descending, longitude ascending in [0, 360)).
    time_step
        Length of one :meth:`step`.
    device
        Where the parameters live; :meth:`step` accepts tensors on this device.

    Optional, for a stochastic model: an attribute ``noise_channels`` (> 0) and a method
    ``draw_noise(generators) -> (len(generators), K, lat, lon)`` drawing member ``i``'s noise only from
    ``generators[i]``; the engine then calls ``step(x, time, noise)`` with fresh noise every step
    (:class:`models.wrapper.SFNOForecastModel` with a ``noise:K:L`` feature).
    """

    channels: tuple[str, ...]
    latitude: np.ndarray
    longitude: np.ndarray
    time_step: dt.timedelta
    device: torch.device

    def step(self, x: torch.Tensor, time: np.datetime64 | None = None) -> torch.Tensor:
        """Advance a batch ``(B, C, lat, lon)`` valid at ``time`` by one :attr:`time_step`."""
        ...

    def to(self, device: torch.device | str) -> ForecastModel:
        """Move the model to ``device`` and return it."""
        ...
