"""Spherical harmonic transforms at the latitudes of a data grid.

torch-harmonics builds its transforms on three latitude families: ``equiangular`` (Clenshaw-Curtis,
both poles included), ``legendre-gauss`` and ``lobatto``. The WeatherBench2 64x32 / 128x64 grids use
*midpoint* latitudes (``+-87.1875`` ..., no poles), which none of these match. Rather than resampling
the data, the model transforms **at the data latitudes themselves**:

* quadrature weights ``q_k`` are the interpolatory weights of the nodes ``x_k = cos(theta_k)``,
  found from the Legendre moments ``sum_k q_k P_j(x_k) = int_{-1}^{1} P_j(x) dx = 2 delta_{j0}``,
  ``j < nlat``. For midpoint nodes this is Fejer's first rule, for pole-including equiangular nodes
  Clenshaw-Curtis (what torch-harmonics uses), for Gauss nodes the Gauss weights (Trefethen 2008,
  "Is Gauss quadrature better than Clenshaw-Curtis?", SIAM Review 50).
* the forward transform of order ``m`` is the weighted least-squares fit
  ``c_m = (B_m^T Q B_m)^{-1} B_m^T Q f_m`` with ``B_m[k, l] = Pbar_l^m(x_k)`` (orthonormal, Condon-Shortley
  phase as torch-harmonics). When the quadrature integrates ``Pbar_l^m Pbar_l'^m`` exactly
  (``2 (lmax - 1) <= nlat - 1``) this *is* the quadrature transform ``c = 2 pi B^T Q f``; above that, up to
  ``lmax <= nlat``, it still recovers every band-limited field exactly, where plain quadrature aliases.
* the inverse transform evaluates ``Pbar_l^m`` at the data latitudes (exact for any nodes).

Both are :class:`torch_harmonics.RealSHT` / :class:`torch_harmonics.InverseRealSHT` modules whose
Legendre tables are replaced, so the FFT and contraction code paths are the library's own. Rows are
ordered north to south (colatitude increasing), the canonical order of :mod:`data_catalog`.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.polynomial import legendre as npleg
from torch_harmonics import InverseRealSHT, RealSHT
from torch_harmonics.legendre import legpoly


def _colatitudes(latitude_deg: np.ndarray) -> np.ndarray:
    lat = np.asarray(latitude_deg, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError("latitude must be a 1-D array with at least two rows")
    if not np.all(np.diff(lat) < 0):
        raise ValueError("latitude must be strictly descending (north to south)")
    return np.deg2rad(90.0 - lat)


def interpolatory_weights(latitude_deg: np.ndarray) -> np.ndarray:
    """Quadrature weights ``q_k`` in ``x = cos(colatitude)`` for the given latitude rows.

    Solves ``sum_k q_k P_j(x_k) = 2 delta_{j0}`` for ``j = 0 .. nlat-1`` (exact for polynomials in
    ``x`` of degree ``< nlat``); ``sum q_k = 2``.
    """
    x = np.cos(_colatitudes(latitude_deg))
    n = x.size
    vander = npleg.legvander(x, n - 1).T  # (j, k)
    rhs = np.zeros(n)
    rhs[0] = 2.0
    return np.linalg.solve(vander, rhs)


def default_truncation(nlat: int) -> int:
    """Largest ``lmax`` for which the quadrature transform at ``nlat`` rows is exact: ``(nlat + 1) // 2``."""
    return (nlat + 1) // 2


class GridRealSHT(RealSHT):
    """Forward real SHT at arbitrary (descending) latitude rows and ``nlon`` equispaced longitudes.

    Parameters
    ----------
    latitude
        Latitude rows in degrees, descending.
    nlon
        Number of equispaced longitudes starting at 0.
    lmax, mmax
        Truncation (exclusive), passed explicitly; ``lmax <= nlat`` and ``mmax <= nlon // 2 + 1``.
    """

    def __init__(self, latitude: np.ndarray, nlon: int, lmax: int, mmax: int) -> None:
        lat = np.asarray(latitude, dtype=np.float64)
        nlat = lat.size
        _check_truncation(nlat, nlon, lmax, mmax)
        # the parent builds a (small) Gauss table that is replaced below; lmax/mmax are explicit
        super().__init__(nlat, nlon, lmax=lmax, mmax=mmax, grid="legendre-gauss")
        self.lmax, self.mmax = lmax, mmax
        self.grid = "data-latitudes"
        x = torch.from_numpy(np.cos(_colatitudes(lat)))
        q = torch.from_numpy(interpolatory_weights(lat))
        pct = legpoly(mmax, lmax, x, norm="ortho", inverse=True, csphase=True)  # (m, l, k)
        w = torch.zeros(mmax, lmax, nlat, dtype=torch.float64)
        for m in range(mmax):
            b = pct[m, m:, :].T  # (k, l>=m)
            if b.shape[1] == 0:
                continue
            gram = b.T @ (q[:, None] * b)
            w[m, m:, :] = torch.linalg.solve(gram, b.T * q[None, :])
        self.register_buffer("weights", w.float().contiguous(), persistent=False)


class GridInverseRealSHT(InverseRealSHT):
    """Inverse real SHT evaluated at arbitrary (descending) latitude rows; see :class:`GridRealSHT`."""

    def __init__(self, latitude: np.ndarray, nlon: int, lmax: int, mmax: int) -> None:
        lat = np.asarray(latitude, dtype=np.float64)
        nlat = lat.size
        _check_truncation(nlat, nlon, lmax, mmax)
        super().__init__(nlat, nlon, lmax=lmax, mmax=mmax, grid="legendre-gauss")
        self.lmax, self.mmax = lmax, mmax
        self.grid = "data-latitudes"
        x = torch.from_numpy(np.cos(_colatitudes(lat)))
        pct = legpoly(mmax, lmax, x, norm="ortho", inverse=True, csphase=True)  # (m, l, k)
        self.register_buffer("pct", pct.permute(0, 2, 1).float().contiguous(), persistent=False)


def _check_truncation(nlat: int, nlon: int, lmax: int, mmax: int) -> None:
    if not 1 <= lmax <= nlat:
        raise ValueError(f"lmax={lmax} must be in [1, nlat={nlat}]")
    if not 1 <= mmax <= min(lmax, nlon // 2 + 1):
        raise ValueError(f"mmax={mmax} must be in [1, min(lmax, nlon//2+1)={min(lmax, nlon // 2 + 1)}]")
