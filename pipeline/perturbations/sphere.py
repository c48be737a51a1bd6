"""Gaussian random fields on the sphere, synthesised on any latitude set (with or without poles, any order).

A field ``f(lat, lon) = sum_{l<=L} sum_{|m|<=l} a_lm Y_lm`` with independent complex Gaussian
coefficients of variance ``C_l = exp(-l (l + 1) (s / R)^2 / 2)`` has (for ``s << R``) an isotropic
covariance close to a Gaussian kernel of length scale ``s`` (``R`` = Earth radius 6371 km).
The associated Legendre functions are evaluated directly at the grid latitudes with the standard
fully-normalised three-term recursion, so no quadrature grid is assumed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0


@functools.lru_cache(maxsize=16)
def legendre_table(latitude: tuple[float, ...], lmax: int, mmax: int) -> np.ndarray:
    """Fully normalised associated Legendre functions ``P[m, l, lat]`` (zero for ``l < m``).

    Normalised so that ``P_l^m(sin lat) e^{i m lon}`` are orthonormal spherical harmonics.
    """
    x = np.sin(np.deg2rad(np.asarray(latitude, dtype=np.float64)))
    s = np.sqrt(np.clip(1.0 - x * x, 0.0, None))
    out = np.zeros((mmax + 1, lmax + 1, x.size))
    pmm = np.full_like(x, 1.0 / np.sqrt(4.0 * np.pi))
    for m in range(mmax + 1):
        if m > 0:
            pmm = -np.sqrt((2.0 * m + 1.0) / (2.0 * m)) * s * pmm
        if m > lmax:
            break
        out[m, m] = pmm
        if m + 1 <= lmax:
            out[m, m + 1] = np.sqrt(2.0 * m + 3.0) * x * pmm
        for ell in range(m + 2, lmax + 1):
            a = np.sqrt((4.0 * ell * ell - 1.0) / (ell * ell - m * m))
            b = np.sqrt(((ell - 1.0) ** 2 - m * m) / (4.0 * (ell - 1.0) ** 2 - 1.0))
            out[m, ell] = a * (x * out[m, ell - 1] - b * out[m, ell - 2])
    return out


class SphericalRandomField:
    """Sampler of isotropic Gaussian random fields on a latitude-longitude grid.

    Parameters
    ----------
    latitude, longitude
        Grid coordinates in degrees (any latitude order; longitude equally spaced from any origin).
    length_scale_km
        Correlation length ``s`` of the Gaussian spectrum ``C_l = exp(-l(l+1)(s/R)^2/2)``.
    """

    def __init__(self, latitude: np.ndarray, longitude: np.ndarray, length_scale_km: float = 500.0) -> None:
        self.nlat = int(np.size(latitude))
        self.nlon = int(np.size(longitude))
        self.lmax = self.nlat - 1
        self.mmax = min(self.lmax, self.nlon // 2)
        lat = tuple(float(v) for v in np.asarray(latitude))
        table = legendre_table(lat, self.lmax, self.mmax)  # (m, l, lat)
        ell = np.arange(self.lmax + 1)
        cl = np.exp(-ell * (ell + 1) * (length_scale_km / EARTH_RADIUS_KM) ** 2 / 2.0)
        cl[0] = 0.0  # no global mean
        self._table = torch.from_numpy(table * np.sqrt(cl)[None, :, None])  # float64
        self._coslat = np.cos(np.deg2rad(np.asarray(latitude, dtype=np.float64)))
        lon0 = float(np.asarray(longitude)[0]) if self.nlon else 0.0
        m = np.arange(self.mmax + 1)
        self._phase = torch.from_numpy(np.exp(1j * np.deg2rad(lon0) * m))

    def unit_rms(self) -> float:
        """Expected area-mean RMS of :meth:`sample` fields (unit-variance coefficients).

        The variance at a latitude is ``sum_l P_l0^2 + 2 sum_{m>0} sum_l P_lm^2`` (``P`` scaled by the
        spectrum), averaged over latitude with ``cos(lat)`` weights.
        """
        t2 = (self._table**2).sum(dim=1).numpy()  # (m, lat)
        var = t2[0] + 2.0 * t2[1:].sum(axis=0)
        return float(np.sqrt((var * self._coslat).sum() / self._coslat.sum()))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` independent fields ``(n, lat, lon)`` (float64, CPU), unit-variance coefficients."""
        shape = (n, self.mmax + 1, self.lmax + 1)
        re = torch.randn(shape, generator=generator, dtype=torch.float64)
        im = torch.randn(shape, generator=generator, dtype=torch.float64)
        im[:, 0] = 0.0
        re[:, 0] *= np.sqrt(2.0)
        coef = torch.complex(re, im) / np.sqrt(2.0)
        # X[n, m, lat] = sum_l a_lm P_lm(lat)
        spec = torch.einsum("nml,mlk->nkm", coef, self._table.to(torch.complex128)) * self._phase
        full = torch.zeros((n, self.nlat, self.nlon // 2 + 1), dtype=torch.complex128)
        full[..., : self.mmax + 1] = spec
        return torch.fft.irfft(full, n=self.nlon, dim=-1) * self.nlon
