"""The perturbation protocol and the hemispheric rescaling shared by all methods.

A perturbation method returns, for a batch of pairs, the perturbation ``delta`` (``(P, C, lat, lon)``,
physical units) around the analysis at the init time; the engine builds the centred members
``analysis + delta`` (sign +1) and ``analysis - delta`` (sign -1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from data_catalog.grid import area_weights


@runtime_checkable
class Perturbation(Protocol):
    """Perturbation method: ``delta = method(model, analyses, times, generators)``.

    Parameters
    ----------
    model
        The :class:`models.base.ForecastModel` of the checkpoint being perturbed.
    analyses
        ``(K + 1, C, lat, lon)`` analyses at ``times`` (ending with the init time), on the model device.
    times
        Valid times of ``analyses`` (``numpy.datetime64``), oldest first.
    generators
        One CPU ``torch.Generator`` per pair (see :mod:`pipeline.seeds`); the result for pair ``p``
        uses only ``generators[p]``.

    Returns
    -------
    torch.Tensor
        ``(P, C, lat, lon)`` perturbations, ``P = len(generators)``.
    """

    cycles: int

    def __call__(
        self,
        model: object,
        analyses: torch.Tensor,
        times: Sequence[np.datetime64],
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor: ...


class HemisphericNorm:
    """Per-channel extratropical hemispheric norms and the latitude-dependent rescaling to a target.

    For each hemisphere ``h`` the norm of a field ``d`` is the area-weighted RMS poleward of the
    boundary ``b``: ``N_h = sqrt(sum_{i in h} w_i d_i^2 / sum_{i in h} w_i)`` over points with
    ``|lat| >= b``. The rescaling factor is ``s_h = target / N_h`` (0 where ``N_h = 0``, so a constant
    channel gives a zero perturbation), applied as ``s_N`` north of ``b``, ``s_S`` south of ``-b`` and
    linearly interpolated in latitude in between (HENS, Mahesh et al. 2024; breeding after Toth &
    Kalnay 1993). Works for any latitude order.
    """

    def __init__(self, latitude: np.ndarray, boundary: float = 20.0) -> None:
        lat = np.asarray(latitude, dtype=np.float64)
        if not 0.0 <= boundary < 90.0:
            raise ValueError("hemisphere boundary must lie in [0, 90) degrees")
        w = area_weights(lat)
        north = (lat >= boundary).astype(np.float64) * w
        south = (lat <= -boundary).astype(np.float64) * w
        if north.sum() == 0 or south.sum() == 0:
            raise ValueError(f"no grid rows poleward of {boundary} degrees in one hemisphere")
        self.boundary = float(boundary)
        self._wn = torch.from_numpy(north / north.sum()).to(torch.float32)
        self._ws = torch.from_numpy(south / south.sum()).to(torch.float32)
        # interpolation weight of the northern factor: 1 north of b, 0 south of -b, linear between
        frac = np.clip((lat + boundary) / (2.0 * boundary), 0.0, 1.0) if boundary > 0 else (lat >= 0) * 1.0
        self._fn = torch.from_numpy(frac).to(torch.float32)

    def norms(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Northern and southern norms ``(..., C)`` of fields ``(..., C, lat, lon)``."""
        sq = (d.float() ** 2).mean(dim=-1)  # (..., C, lat)
        wn, ws = self._wn.to(d.device), self._ws.to(d.device)
        return torch.sqrt((sq * wn).sum(-1)), torch.sqrt((sq * ws).sum(-1))

    def rescale(self, d: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``d`` rescaled so that each channel's hemispheric norms equal ``target`` (``(C,)``)."""
        nn_, ns = self.norms(d)
        tgt = target.to(d.device, torch.float32)
        sn = torch.where(nn_ > 0, tgt / torch.where(nn_ > 0, nn_, 1.0), 0.0)
        ss = torch.where(ns > 0, tgt / torch.where(ns > 0, ns, 1.0), 0.0)
        fn = self._fn.to(d.device)
        factor = sn[..., None] * fn + ss[..., None] * (1.0 - fn)  # (..., C, lat)
        return (d.float() * factor[..., None]).to(d.dtype)
