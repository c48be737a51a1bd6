"""Spherical-harmonic building blocks for the embedded world (torch-harmonics transforms).

Conventions (verified in tests/data_catalog/test_world.py):

* grids are ``(..., nlat, nlon)`` with rows north -> south (colatitude increasing), longitude from 0;
* spectral coefficients are ``(..., lmax, mmax)`` complex, orthonormal harmonics without the
  Condon-Shortley phase (``csphase=False``), triangular truncation ``l < lmax``;
* a wind field is stacked as ``(u, v)`` (eastward, northward); :meth:`SphereTransforms.vrtdiv`
  returns the spectral (relative vorticity, divergence) and :meth:`SphereTransforms.uv` inverts it
  through the streamfunction and velocity potential, ``psi = lap^-1 zeta``, ``chi = lap^-1 delta``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch_harmonics as th
from torch_harmonics.legendre import dlegpoly, legpoly


class SphereTransforms(torch.nn.Module):
    """Scalar and vector spherical-harmonic transforms on one grid, with the Laplacian.

    Parameters
    ----------
    nlat, nlon:
        Grid size of the transform grid.
    lmax:
        Number of retained degrees (``l = 0 .. lmax-1``); ``mmax = lmax`` (triangular).
    radius:
        Sphere radius in metres; ``lap = -l (l + 1) / radius**2``.
    grid:
        torch-harmonics grid name (``"legendre-gauss"`` for the solver).
    """

    # buffers registered in __init__ (declared for the type checker: nn.Module.__getattr__ is untyped)
    colat: torch.Tensor
    lat: torch.Tensor
    lon: torch.Tensor
    ell: torch.Tensor
    lap: torch.Tensor
    invlap: torch.Tensor
    quad: torch.Tensor

    def __init__(self, nlat: int, nlon: int, lmax: int, radius: float, grid: str = "legendre-gauss") -> None:
        super().__init__()
        kw = {"lmax": lmax, "mmax": lmax, "grid": grid, "csphase": False}
        self.nlat, self.nlon, self.lmax, self.mmax, self.radius = nlat, nlon, lmax, lmax, radius
        self.sht = th.RealSHT(nlat, nlon, **kw).double()
        self.isht = th.InverseRealSHT(nlat, nlon, **kw).double()
        self.vsht = th.RealVectorSHT(nlat, nlon, **kw).double()
        self.ivsht = th.InverseRealVectorSHT(nlat, nlon, **kw).double()
        colat, quad = th.quadrature.precompute_latitudes(nlat, grid=grid)
        self.register_buffer("colat", colat.double())
        self.register_buffer("lat", (0.5 * math.pi - colat).double())
        self.register_buffer("lon", th.quadrature.precompute_longitudes(nlon).double())
        ell = torch.arange(lmax, dtype=torch.float64)[:, None].expand(lmax, lmax)
        lap = -ell * (ell + 1) / radius**2
        invlap = torch.where(ell > 0, 1.0 / torch.where(ell > 0, lap, -1.0), 0.0)
        self.register_buffer("ell", ell.contiguous())
        self.register_buffer("lap", lap.contiguous())
        self.register_buffer("invlap", invlap.contiguous())
        # quadrature weights for area integrals over the sphere of radius 1 (sum = 4 pi)
        self.register_buffer(
            "quad", (2 * math.pi / nlon) * quad.double()[:, None].expand(nlat, nlon).contiguous()
        )

    def to_spec(self, f: torch.Tensor) -> torch.Tensor:
        """Scalar analysis: grid ``(..., nlat, nlon)`` -> coefficients ``(..., lmax, mmax)``."""
        return self.sht(f)

    def to_grid(self, c: torch.Tensor) -> torch.Tensor:
        """Scalar synthesis: coefficients -> grid."""
        return self.isht(c)

    def vrtdiv(self, uv: torch.Tensor) -> torch.Tensor:
        """Spectral (curl, divergence) of a vector field ``(..., 2, nlat, nlon)`` stacked (u, v)."""
        return self.vsht(uv) * (self.lap * self.radius)

    def uv(self, vrtdiv: torch.Tensor) -> torch.Tensor:
        """Winds ``(..., 2, nlat, nlon)`` (u, v) from spectral (vorticity, divergence)."""
        return self.ivsht(vrtdiv * (self.invlap / self.radius))

    def mean(self, f: torch.Tensor) -> torch.Tensor:
        """Exact area mean over the sphere of a grid field (Gaussian quadrature)."""
        return (f * self.quad).sum(dim=(-2, -1)) / (4 * math.pi)


class PointSynthesis(torch.nn.Module):
    """Exact evaluation of truncated spherical-harmonic series at arbitrary latitudes.

    The associated Legendre functions (and their colatitude derivatives for the winds) are evaluated
    at the requested latitudes, the zonal Fourier sums at ``nlon`` equally spaced longitudes from 0.
    This is spectral (not grid-to-grid) interpolation: the output is the model's own continuous field.
    For ``mmax <= nlon / 2`` the longitude samples lose nothing.

    Parameters
    ----------
    lat_deg:
        Output latitudes in degrees, any order, poles excluded for the winds.
    nlon:
        Number of output longitudes ``0, 360/nlon, ...``.
    lmax:
        Truncation, as in :class:`SphereTransforms`.
    radius:
        Sphere radius in metres.
    """

    invlap: torch.Tensor  # buffer registered in __init__ (declared for the type checker)

    def __init__(self, lat_deg: np.ndarray, nlon: int, lmax: int, radius: float) -> None:
        super().__init__()
        nlat = len(lat_deg)
        kw = {"lmax": lmax, "mmax": lmax, "grid": "equiangular", "csphase": False}
        self.radius = radius
        self.isht = th.InverseRealSHT(nlat, nlon, **kw).double()
        self.ivsht = th.InverseRealVectorSHT(nlat, nlon, **kw).double()
        theta = torch.as_tensor(np.deg2rad(90.0 - np.asarray(lat_deg, dtype=np.float64)))
        pct = legpoly(lmax, lmax, torch.cos(theta), norm="ortho", inverse=True, csphase=False)
        self.isht.pct = pct.permute(0, 2, 1).contiguous().double()
        dpct = dlegpoly(lmax, lmax, theta, norm="ortho", inverse=True, csphase=False)
        self.ivsht.dpct = dpct.permute(0, 1, 3, 2).contiguous().double()
        ell = torch.arange(lmax, dtype=torch.float64)[:, None].expand(lmax, lmax)
        invlap = torch.where(ell > 0, -(radius**2) / torch.where(ell > 0, ell * (ell + 1), 1.0), 0.0)
        self.register_buffer("invlap", invlap.contiguous())

    def scalar(self, c: torch.Tensor) -> torch.Tensor:
        """Scalar field at the output points."""
        return self.isht(c)

    def uv(self, vrtdiv: torch.Tensor) -> torch.Tensor:
        """Winds (u, v) at the output points from spectral (vorticity, divergence)."""
        return self.ivsht(vrtdiv * (self.invlap / self.radius))


class PointAnalysis:
    """Least-squares inverse of :class:`PointSynthesis`: spectral coefficients ``(..., L, M)`` of
    fields ``(..., lat, lon)`` given at the synthesis points. Exact for fields of the truncation (the
    worlds' stores), the best fit in the area-unweighted least-squares sense otherwise.

    The unknowns are the real and imaginary parts of the triangle's coefficients (``l >= m``; no
    imaginary part at ``m = 0``); the pseudo-inverse of the synthesis matrix is formed once.
    """

    def __init__(self, synth: PointSynthesis, lmax: int) -> None:
        basis = []
        for m in range(lmax):
            for part in (1.0 + 0j, 1j) if m > 0 else (1.0 + 0j,):
                for ell in range(m, lmax):
                    c = torch.zeros(lmax, lmax, dtype=torch.complex128)
                    c[ell, m] = torch.tensor(part, dtype=torch.complex128)
                    basis.append(c)
        self.basis = torch.stack(basis)  # (dofs, L, M)
        with torch.no_grad():
            s = synth.scalar(self.basis).reshape(len(basis), -1)  # (dofs, points)
        self.pinv = torch.linalg.pinv(s.T)  # (dofs, points)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        lead = grid.shape[:-2]
        flat = grid.reshape(-1, grid.shape[-2] * grid.shape[-1]).to(torch.float64)
        dofs = (flat @ self.pinv.T).to(torch.complex128)  # (n, dofs)
        return torch.einsum("nd,dlm->nlm", dofs, self.basis).reshape(*lead, *self.basis.shape[1:])
