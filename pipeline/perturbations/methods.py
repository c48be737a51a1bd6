"""Perturbation methods: hemispheric-centred bred vectors and the baselines (Gaussian noise,
spherical Gaussian random fields, none).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.perturbations.base import HemisphericNorm
from pipeline.perturbations.sphere import SphericalRandomField

log = logging.getLogger(__name__)


def _stack_draws(draw, generators: Sequence[torch.Generator]) -> torch.Tensor:
    # one independent stream per pair (per-member reproducibility); the draws are tiny, all the
    # arithmetic on them below is vectorised over pairs.
    return torch.stack([draw(g) for g in generators])


class NoPerturbation:
    """The control: a zero perturbation (one member per checkpoint)."""

    cycles = 0

    def __call__(self, model, analyses, times, generators) -> torch.Tensor:
        p = len(generators)
        return torch.zeros((p, *analyses.shape[1:]), dtype=analyses.dtype, device=analyses.device)


class GaussianNoise:
    """Independent Gaussian noise per grid point, standard deviation ``amplitude[c]`` per channel."""

    cycles = 0

    def __init__(self, amplitude: torch.Tensor) -> None:
        self.amplitude = amplitude.to(torch.float32)

    def __call__(self, model, analyses, times, generators) -> torch.Tensor:
        shape = tuple(analyses.shape[1:])
        z = _stack_draws(lambda g: torch.randn(shape, generator=g, dtype=torch.float32), generators)
        return (z * self.amplitude[:, None, None]).to(analyses.device, analyses.dtype)


class SphericalNoise:
    """Spherical Gaussian random fields on every channel, each scaled to the channel's amplitude.

    Each field is rescaled to an area-weighted global RMS of exactly ``amplitude[c]``.
    """

    cycles = 0

    def __init__(
        self,
        amplitude: torch.Tensor,
        latitude: np.ndarray,
        longitude: np.ndarray,
        length_scale_km: float = 500.0,
    ) -> None:
        from data_catalog.grid import area_weights

        self.amplitude = amplitude.to(torch.float32)
        self.grf = SphericalRandomField(latitude, longitude, length_scale_km)
        self._w = torch.from_numpy(area_weights(np.asarray(latitude))).to(torch.float64)

    def __call__(self, model, analyses, times, generators) -> torch.Tensor:
        c = analyses.shape[1]
        z = _stack_draws(lambda g: self.grf.sample(c, g), generators)  # (P, C, lat, lon) float64
        rms = torch.sqrt(((z**2).mean(-1) * self._w).mean(-1))  # (P, C)
        z = z / torch.where(rms > 0, rms, 1.0)[..., None, None]
        return (z * self.amplitude.double()[:, None, None]).to(analyses.device, analyses.dtype)


class BredVectors:
    """Hemispheric-centred bred vectors (HENS; Toth & Kalnay 1993, Mahesh et al. 2024).

    With analyses ``a_{-K}, ..., a_0`` spaced by the model step, the seed ``d`` is a spherical Gaussian
    random field on the seed channel only (or independent fields on each of several seed channels,
    e.g. the geopotential at every level), rescaled to the target. For ``k = -K, ..., -1``:
    ``c = M(a_k)`` (the control, advanced once for all pairs), ``p = M(clip(a_k + d))``,
    ``d = R(p - c)``, where ``R`` rescales each channel's extratropical hemispheric norms to
    ``target = alpha x RMSE_48h`` (:class:`HemisphericNorm`) and the bred perturbation is re-centred on the
    next analysis ``a_{k+1}``. Members are ``a_0 +/- d``. All pairs are bred together as one batch.
    With ``noise_fraction`` f > 0 the final ``d`` becomes ``R(sqrt(1 - f) d + sqrt(f) R(n))``, ``n`` a
    spherical random field on every channel drawn after the seed from the pair's generator: the bred
    vector keeps the flow's growing structures, the noise covers the error the breeding cannot see
    (scales and channels the model's dynamics do not carry within the cycles).
    """

    def __init__(
        self,
        amplitude: torch.Tensor,
        latitude: np.ndarray,
        longitude: np.ndarray,
        seed_channel: int | Sequence[int],
        cycles: int = 3,
        boundary: float = 20.0,
        length_scale_km: float = 500.0,
        nonnegative: torch.Tensor | None = None,
        noise_fraction: float = 0.0,
    ) -> None:
        if cycles < 1:
            raise ValueError("bred vectors need at least one breeding cycle")
        if not 0.0 <= noise_fraction <= 1.0:
            raise ValueError("noise_fraction must be in [0, 1]")
        self.noise_fraction = float(noise_fraction)
        self.amplitude = amplitude.to(torch.float32)
        seeds = [seed_channel] if isinstance(seed_channel, int) else list(seed_channel)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("bred vectors need one or more distinct seed channels")
        self.seed_channels = [int(c) for c in seeds]
        self.cycles = int(cycles)
        self.norm = HemisphericNorm(latitude, boundary)
        self.grf = SphericalRandomField(latitude, longitude, length_scale_km)
        self.nonnegative = nonnegative

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        if self.nonnegative is None or not bool(self.nonnegative.any()):
            return x
        mask = self.nonnegative.to(x.device)[:, None, None]
        return torch.where(mask & (x < 0), torch.zeros((), dtype=x.dtype, device=x.device), x)

    def __call__(self, model, analyses, times, generators) -> torch.Tensor:
        k1, c, nlat, nlon = analyses.shape
        if k1 != self.cycles + 1:
            raise ValueError(f"bred vectors need {self.cycles + 1} analyses, got {k1}")
        p = len(generators)
        ns = len(self.seed_channels)
        seed = _stack_draws(lambda g: self.grf.sample(ns, g), generators).to(
            torch.float32
        )  # (P, S, lat, lon)
        noise = None
        if self.noise_fraction > 0:  # drawn now, after the seed, from each pair's own generator
            noise = _stack_draws(lambda g: self.grf.sample(c, g), generators).to(torch.float32)
        d = torch.zeros((p, c, nlat, nlon), dtype=torch.float32)
        d[:, self.seed_channels] = seed
        d = d.to(analyses.device)
        target = self.amplitude.to(analyses.device)
        d = self.norm.rescale(d, target)
        for k in range(self.cycles):
            a = analyses[k]
            control = model.step(a[None], times[k])  # (1, C, lat, lon): once for all pairs
            perturbed = model.step(self._clip(a[None] + d.to(a.dtype)), times[k])
            diff = (perturbed - control).float()
            d = self.norm.rescale(diff, target)
            if not torch.isfinite(d).all():
                log.warning("non-finite bred perturbation at cycle %d; zeroing those values", k)
                d = torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
        if noise is not None:
            f = self.noise_fraction
            n = self.norm.rescale(noise.to(d.device), target)
            d = self.norm.rescale((1.0 - f) ** 0.5 * d + f**0.5 * n, target)
        return d.to(analyses.dtype)
