"""Spherical and zonal power spectra of gridded fields (numpy arrays or torch tensors).

Angular power spectrum. With orthonormal spherical harmonics ``Y_lm`` (``int Y_lm^2 dOmega = 1``) and
``f = sum_lm a_lm Y_lm``, the degree-``l`` power is

    ``P(l) = (1 / 4 pi) * ( |a_l0|^2 + 2 sum_{m=1}^{l} |a_lm|^2 )``,

normalised so that ``sum_l P(l)`` equals the area mean of ``f^2`` (Parseval). The coefficients are
``a_lm = 2 pi sum_k q_k Pbar_lm(cos theta_k) F_m(theta_k)`` (``F_m``: forward-normalised FFT along
longitude; ``q_k``: latitude quadrature weights, ``sum_k q_k = 2``), i.e. the transform of
``torch_harmonics.RealSHT`` (norm "ortho", Condon-Shortley phase). The grid decides the quadrature:

* ``equiangular`` with both poles (e.g. 721 x 1440, 33 x 64): Clenshaw-Curtis (torch-harmonics
  ``"equiangular"``), exact for degree ``nlat - 1``, so the transform of a field band-limited to
  ``lmax = (nlat + 1) // 2`` degrees is exact;
* ``midpoint``: equiangular without poles, latitudes ``90 - (j + 1/2) 180 / nlat`` (the WeatherBench2
  64 x 32 grid); torch-harmonics has no such grid, so Fejer's first rule (Fejer 1933; Waldvogel 2006)
  gives the weights, exact for degree ``nlat - 1`` and thus for ``lmax = nlat // 2``; the Legendre
  functions come from ``torch_harmonics.legendre.legpoly``;
* ``legendre-gauss`` (Gaussian latitudes): Gauss-Legendre, exact for ``lmax = nlat``.

``lmax`` (number of degrees, ``l = 0 .. lmax - 1``) and ``mmax`` default to those exact truncations and
are recorded on the result. Latitude may be in either order (rows are flipped to north -> south, the
order RealSHT expects); longitudes must be equispaced and global (their origin and direction do not change
the power). Batch dimensions (member, channel, time, ...) are allowed anywhere except the grid axes.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_harmonics as th
from torch_harmonics.legendre import legpoly
from torch_harmonics.quadrature import precompute_latitudes

from data_catalog.errors import UserError
from data_catalog.grid import area_weights

log = logging.getLogger(__name__)

__all__ = [
    "AngularSpectrum",
    "EnsembleSpectra",
    "SphericalGrid",
    "ZonalSpectrum",
    "detect_grid",
    "ensemble_spectra",
    "fejer1_weights",
    "power_spectrum",
    "quadrature_mean",
    "power_from_coefficients",
    "spherical_harmonic_coefficients",
    "spectrum_ratio",
    "synthesize",
    "zonal_spectrum",
]

#: Legendre tables larger than this (bytes, float64) are built in chunks of orders instead of one
#: ``torch_harmonics.RealSHT`` module (721 x 1440 at lmax 361 would need 750 MB).
REALSHT_TABLE_LIMIT = 64 * 2**20
#: Largest Legendre table chunk (bytes) built at once by the chunked transform.
LEGENDRE_CHUNK_BYTES = 128 * 2**20


# ----------------------------------------------------------------------------------------------------
# grids and quadrature
# ----------------------------------------------------------------------------------------------------


def fejer1_weights(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fejer's first quadrature rule on ``[-1, 1]``: nodes ``x_j = cos(theta_j)`` at the midpoint angles
    ``theta_j = (j + 1/2) pi / n`` and weights

        ``w_j = (2 / n) * (1 - 2 sum_{k=1}^{n//2} cos(2 k theta_j) / (4 k^2 - 1))``

    (Fejer 1933; Waldvogel 2006), exact for polynomials of degree ``n - 1``. Returns ``(theta, w)``
    with ``theta`` increasing (north to south colatitudes) and ``sum(w) == 2``.
    """
    if n < 1:
        raise UserError(f"need at least one latitude, got {n}")
    j = np.arange(n)
    theta = (2 * j + 1) * np.pi / (2 * n)
    k = np.arange(1, n // 2 + 1)
    s = np.sum(np.cos(2 * k[:, None] * theta[None, :]) / (4.0 * k[:, None] ** 2 - 1.0), axis=0)
    return theta, 2.0 / n * (1.0 - 2.0 * s)


@dataclass(frozen=True)
class SphericalGrid:
    """A global latitude-longitude grid recognised for spherical harmonic transforms.

    ``kind`` is ``"equiangular"`` (with poles), ``"midpoint"`` (equiangular without poles) or
    ``"legendre-gauss"``; ``colatitude`` (radians, north -> south) and ``weights`` (``sum == 2``) define
    the latitude quadrature; ``flip`` says whether input rows run south -> north; ``exact_lmax`` is the
    largest number of degrees for which the transform of a band-limited field is exact.
    """

    kind: str
    nlat: int
    nlon: int | None
    colatitude: np.ndarray
    weights: np.ndarray
    flip: bool
    exact_lmax: int

    @property
    def th_grid(self) -> str | None:
        """The torch-harmonics grid name, or None where torch-harmonics has no such grid."""
        return {"equiangular": "equiangular", "legendre-gauss": "legendre-gauss"}.get(self.kind)


def _check_longitude(longitude: np.ndarray | None, nlon: int | None) -> None:
    if longitude is None:
        return
    lon = np.asarray(longitude, dtype=np.float64)
    if nlon is not None and lon.size != nlon:
        raise UserError(f"longitude has {lon.size} values, field has {nlon}")
    d = np.diff(lon)
    step = 360.0 / lon.size
    if lon.size < 2 or not np.allclose(np.abs(d), step, atol=1e-6 * step + 1e-9):
        raise UserError("spectra need global, equispaced longitudes (a regional or irregular grid was given)")


@functools.lru_cache(maxsize=32)
def _detect_grid_cached(lat_key: tuple[float, ...]) -> tuple[str, np.ndarray, np.ndarray, bool, int]:
    lat = np.asarray(lat_key, dtype=np.float64)
    n = lat.size
    if n < 2:
        raise UserError("spectra need at least two latitudes")
    flip = bool(lat[0] < lat[-1])
    lat_ns = lat[::-1] if flip else lat
    d = np.diff(lat_ns)
    if np.any(d >= 0):
        raise UserError("latitudes must be strictly monotonic")
    tol = 1e-6
    # equiangular with both poles
    if (
        abs(lat_ns[0] - 90.0) < tol
        and abs(lat_ns[-1] + 90.0) < tol
        and np.allclose(d, -180.0 / (n - 1), atol=tol)
    ):
        colat, w = precompute_latitudes(n, grid="equiangular")
        return "equiangular", colat.numpy(), w.numpy(), flip, (n + 1) // 2
    step = 180.0 / n
    expected = 90.0 - (np.arange(n) + 0.5) * step
    if np.allclose(lat_ns, expected, atol=tol):
        colat, w = fejer1_weights(n)
        return "midpoint", colat, w, flip, n // 2
    colat, w = precompute_latitudes(n, grid="legendre-gauss")
    if np.allclose(lat_ns, 90.0 - np.rad2deg(colat.numpy()), atol=1e-4):
        return "legendre-gauss", colat.numpy(), w.numpy(), flip, n
    raise UserError(
        "unsupported latitude grid for spectra: need global equiangular (with or without poles) or Gaussian latitudes"
    )


def detect_grid(latitude: np.ndarray | Sequence[float], longitude: np.ndarray | None = None) -> SphericalGrid:
    """Recognise the latitude grid (either order) and check the longitudes (global, equispaced)."""
    lat = np.asarray(latitude, dtype=np.float64).ravel()
    kind, colat, w, flip, exact = _detect_grid_cached(tuple(lat.tolist()))
    _check_longitude(longitude, None)
    nlon = None if longitude is None else int(np.asarray(longitude).size)
    return SphericalGrid(kind, lat.size, nlon, colat, w, flip, exact)


def quadrature_mean(field: Any, latitude: np.ndarray, lat_axis: int = -2, lon_axis: int = -1) -> Any:
    """Area mean ``(1 / 4 pi) int f dOmega`` with the grid's own latitude quadrature (the one the
    spectrum uses; exact for band-limited fields) -- compare with ``sum_l P(l)`` of ``f^2``."""
    grid = detect_grid(latitude)
    x, dtype = _to_torch64(field)
    x = torch.movedim(x, (lat_axis, lon_axis), (-2, -1))
    if grid.flip:
        x = torch.flip(x, dims=(-2,))
    w = torch.as_tensor(grid.weights, device=x.device)
    out = (x.mean(dim=-1) * w).sum(dim=-1) / 2.0
    return _from_torch(out, field, dtype)


# ----------------------------------------------------------------------------------------------------
# angular power spectrum
# ----------------------------------------------------------------------------------------------------


def _to_torch64(x: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64), x.dtype
    arr = np.asarray(x)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)), dtype


def _from_torch(t: torch.Tensor, like: Any, dtype: Any) -> Any:
    if isinstance(like, torch.Tensor):
        return t.to(dtype)
    return t.cpu().numpy().astype(dtype)


@functools.lru_cache(maxsize=8)
def _realsht(nlat: int, nlon: int, lmax: int, mmax: int, grid: str, device: str = "cpu") -> th.RealSHT:
    """One cached transform per device: ``Module.to`` moves in place, so a single cached module moved
    to each caller's device would be pulled from under a thread using it on another device (the
    inline scorer on a GPU beside the finalisation on the CPU)."""
    return th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).to(torch.float64).to(device)


@dataclass(frozen=True)
class AngularSpectrum:
    """Angular power spectrum ``power[..., l]`` for degrees ``l = 0 .. lmax - 1`` (same array type and
    floating dtype as the input field), with the truncation and transform that produced it."""

    power: Any
    degree: np.ndarray
    lmax: int
    mmax: int
    grid: str
    transform: str
    exact_lmax: int

    @property
    def total(self) -> Any:
        """``sum_l P(l)``: the area-mean square of the (truncated) field."""
        return self.power.sum(-1)


def _legendre_tables(colat: np.ndarray, lmax: int, mmax: int, device: Any):
    """Yield ``(m0, m1, table)`` with ``table[m - m0, l - m0, k] = Pbar_lm(cos theta_k)`` for
    ``m0 <= m < m1``, ``m0 <= l < lmax`` (orthonormal, Condon-Shortley phase; zero for ``l < m``), a few
    orders at a time so that no table exceeds ``LEGENDRE_CHUNK_BYTES``."""
    x = torch.cos(torch.as_tensor(colat, dtype=torch.float64))
    m0 = 0
    while m0 < mmax:
        chunk = max(1, int(LEGENDRE_CHUNK_BYTES // max(1, 8 * (lmax - m0) * len(colat))))
        m1 = min(mmax, m0 + chunk)
        yield m0, m1, legpoly(m1, lmax, x, norm="ortho", csphase=True, mmin=m0, lmin=m0).to(device)
        m0 = m1


def _grid_and_truncation(
    field: Any,
    latitude: Any,
    longitude: Any,
    lmax: int | None,
    mmax: int | None,
    lat_axis: int,
    lon_axis: int,
) -> tuple[torch.Tensor, Any, SphericalGrid, int, int]:
    x, dtype = _to_torch64(field)
    x = torch.movedim(x, (lat_axis, lon_axis), (-2, -1))
    nlat, nlon = int(x.shape[-2]), int(x.shape[-1])
    lat = np.asarray(latitude, dtype=np.float64).ravel()
    if lat.size != nlat:
        raise UserError(f"latitude has {lat.size} values, field has {nlat} rows")
    grid = detect_grid(lat)
    _check_longitude(None if longitude is None else np.asarray(longitude), nlon)
    lmax = grid.exact_lmax if lmax is None else int(lmax)
    mmax = min(lmax, nlon // 2 + 1) if mmax is None else int(mmax)
    if not (1 <= mmax <= lmax and mmax <= nlon // 2 + 1):
        raise UserError(f"need 1 <= mmax <= lmax and mmax <= nlon//2+1, got lmax={lmax}, mmax={mmax}")
    if lmax > grid.exact_lmax:
        log.warning(
            "lmax=%d exceeds the exact truncation %d of the %s grid: aliasing breaks Parseval",
            lmax,
            grid.exact_lmax,
            grid.kind,
        )
    if grid.flip:
        x = torch.flip(x, dims=(-2,))
    return x, dtype, grid, lmax, mmax


def spherical_harmonic_coefficients(
    field: Any,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float] | None = None,
    lmax: int | None = None,
    mmax: int | None = None,
    lat_axis: int = -2,
    lon_axis: int = -1,
    method: str = "auto",
) -> tuple[torch.Tensor, SphericalGrid, str]:
    """Complex coefficients ``a[..., l, m]`` (complex128 torch tensor, ``m >= 0``) of the orthonormal
    real-field expansion, with the grid and the transform used (see :func:`power_spectrum`)."""
    x, _, grid, lmax, mmax = _grid_and_truncation(field, latitude, longitude, lmax, mmax, lat_axis, lon_axis)
    nlat, nlon = int(x.shape[-2]), int(x.shape[-1])
    table_bytes = 8 * lmax * mmax * nlat
    if method == "auto":
        method = "realsht" if grid.th_grid and table_bytes <= REALSHT_TABLE_LIMIT else "legendre"
    if method == "realsht":
        if grid.th_grid is None:
            raise UserError(f"torch-harmonics has no {grid.kind} grid; use method='legendre'")
        sht = _realsht(nlat, nlon, lmax, mmax, grid.th_grid, str(x.device))
        return sht(x), grid, "torch_harmonics.RealSHT"
    if method != "legendre":
        raise UserError(f"unknown spectrum method {method!r}")
    F = torch.fft.rfft(x, dim=-1, norm="forward")[..., :mmax]
    wq = torch.as_tensor(2.0 * math.pi * grid.weights, dtype=torch.float64, device=x.device)
    Fw = F * wq[:, None]
    a = torch.zeros((*F.shape[:-2], lmax, mmax), dtype=torch.complex128, device=x.device)
    for m0, m1, pct in _legendre_tables(grid.colatitude, lmax, mmax, x.device):
        fm = Fw[..., m0:m1]
        a_re = torch.einsum("...km,mlk->...lm", fm.real.contiguous(), pct)
        a_im = torch.einsum("...km,mlk->...lm", fm.imag.contiguous(), pct)
        a[..., m0:, m0:m1] = torch.complex(a_re, a_im)
    quad = "fejer1" if grid.kind == "midpoint" else grid.th_grid
    return a, grid, f"{quad} quadrature + torch_harmonics legpoly"


def synthesize(coeffs: torch.Tensor, latitude: np.ndarray | Sequence[float], nlon: int) -> torch.Tensor:
    """Field on the grid (rows in the order of ``latitude``) from coefficients ``a[..., l, m]``:
    ``f = sum_lm a_lm Pbar_lm(cos theta) e^{i m phi}`` (real part with ``m > 0`` doubled, as
    ``torch_harmonics.InverseRealSHT``); for tests and band-limited random fields on any recognised grid."""
    grid = detect_grid(latitude)
    lmax, mmax = int(coeffs.shape[-2]), int(coeffs.shape[-1])
    c = coeffs.to(torch.complex128)
    Fm = torch.zeros((*c.shape[:-2], grid.nlat, mmax), dtype=torch.complex128, device=c.device)
    for m0, m1, pct in _legendre_tables(grid.colatitude, lmax, mmax, c.device):
        re = torch.einsum("...lm,mlk->...km", c[..., m0:, m0:m1].real.contiguous(), pct)
        im = torch.einsum("...lm,mlk->...km", c[..., m0:, m0:m1].imag.contiguous(), pct)
        Fm[..., m0:m1] = torch.complex(re, im)
    Fm[..., 0] = Fm[..., 0].real + 0j
    f = torch.fft.irfft(Fm, n=nlon, dim=-1, norm="forward")
    return torch.flip(f, dims=(-2,)) if grid.flip else f


def power_from_coefficients(coeffs: torch.Tensor) -> torch.Tensor:
    """``P(l) = (|a_l0|^2 + 2 sum_{m>=1} |a_lm|^2) / (4 pi)`` from ``a[..., l, m]``."""
    p = coeffs.real**2 + coeffs.imag**2
    cm = torch.full((p.shape[-1],), 2.0, dtype=p.dtype, device=p.device)
    cm[0] = 1.0
    return (p * cm).sum(dim=-1) / (4.0 * math.pi)


def power_spectrum(
    field: Any,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float] | None = None,
    lmax: int | None = None,
    mmax: int | None = None,
    lat_axis: int = -2,
    lon_axis: int = -1,
    method: str = "auto",
) -> AngularSpectrum:
    """Angular power spectrum ``P(l)`` of a field on a global grid (see the module docstring).

    ``P(l) = (|a_l0|^2 + 2 sum_{m>=1} |a_lm|^2) / (4 pi)`` so that ``sum_l P(l)`` equals the area mean of
    ``f^2`` exactly for fields band-limited to the default ``lmax`` (Parseval). Otherwise the deficit is
    exactly the quadrature mean square of the part of ``f`` beyond the truncation (``f`` minus the
    synthesis of its coefficients), since the discrete transform is an orthogonal projection.

    Parameters
    ----------
    field : array or tensor ``(..., lat, lon)`` (grid axes set by ``lat_axis``/``lon_axis``).
    latitude, longitude : grid coordinates in degrees (either latitude order; longitude optional, checked
        to be global and equispaced when given).
    lmax, mmax : number of degrees / orders (default: the grid's exact truncation; ``mmax <= lmax`` and
        ``mmax <= nlon // 2 + 1``).
    method : ``"realsht"`` (``torch_harmonics.RealSHT``; grids it knows), ``"legendre"`` (the same sums
        with Legendre tables built a few orders at a time; any recognised grid) or ``"auto"`` (RealSHT where
        the grid is known to torch-harmonics and its table fits ``REALSHT_TABLE_LIMIT``).

    Returns an :class:`AngularSpectrum` whose ``power`` has the input's array type and float dtype.
    """
    _, dtype = _to_torch64(field)
    a, grid, transform = spherical_harmonic_coefficients(
        field, latitude, longitude, lmax, mmax, lat_axis, lon_axis, method
    )
    power = power_from_coefficients(a)
    lm, mm = int(a.shape[-2]), int(a.shape[-1])
    return AngularSpectrum(
        _from_torch(power, field, dtype), np.arange(lm), lm, mm, grid.kind, transform, grid.exact_lmax
    )


# ----------------------------------------------------------------------------------------------------
# HENS spectral diagnostics
# ----------------------------------------------------------------------------------------------------


def spectrum_ratio(power: Any, reference: Any, floor: float = 0.0) -> Any:
    """``power / reference`` per degree, NaN where ``reference <= floor`` (e.g. a member's spectrum over
    the truth's; 1 means the right amount of variability at that scale)."""
    if isinstance(power, torch.Tensor):
        ref = torch.as_tensor(reference, device=power.device, dtype=power.dtype)
        return torch.where(ref > floor, power / torch.where(ref > floor, ref, 1.0), float("nan"))
    p = np.asarray(power)
    r = np.asarray(reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > floor, p / np.where(r > floor, r, 1.0), np.nan)


@dataclass(frozen=True)
class EnsembleSpectra:
    """Spectra for the HENS spectral test (Mahesh et al. 2024, Part I): each member's spectrum and its
    ratio to the truth's, the spectrum of the ensemble mean (which loses small-scale power with lead time)
    and its ratio. Leading shapes follow the input with the member axis first in ``member``."""

    member: Any
    member_ratio: Any
    ensemble_mean: Any
    ensemble_mean_ratio: Any
    truth: Any
    degree: np.ndarray
    lmax: int
    mmax: int

    @property
    def member_ratio_range(self) -> tuple[Any, Any]:
        """(min, max) over members of the member/truth ratio, per degree."""
        r = self.member_ratio
        if isinstance(r, torch.Tensor):
            return r.amin(0), r.amax(0)
        return np.min(r, axis=0), np.max(r, axis=0)


def ensemble_spectra(
    forecast: Any,
    truth: Any,
    latitude: np.ndarray | Sequence[float],
    longitude: np.ndarray | Sequence[float] | None = None,
    member_axis: int = 0,
    lmax: int | None = None,
    mmax: int | None = None,
) -> EnsembleSpectra:
    """Member, ensemble-mean and truth spectra and their ratios (grid axes last in ``forecast``; the
    truth broadcasts without the member axis). Compute per lead time and stack to follow the ratio with
    lead."""
    f: Any
    mean: Any
    if isinstance(forecast, torch.Tensor):
        f = torch.movedim(forecast, member_axis, 0)
        mean = f.mean(dim=0)
    else:
        f = np.moveaxis(np.asarray(forecast), member_axis, 0)
        mean = f.mean(axis=0)
    sm = power_spectrum(f, latitude, longitude, lmax, mmax)
    se = power_spectrum(mean, latitude, longitude, lmax, mmax)
    st = power_spectrum(truth, latitude, longitude, lmax, mmax)
    return EnsembleSpectra(
        sm.power,
        spectrum_ratio(sm.power, st.power),
        se.power,
        spectrum_ratio(se.power, st.power),
        st.power,
        sm.degree,
        sm.lmax,
        sm.mmax,
    )


# ----------------------------------------------------------------------------------------------------
# zonal spectrum (WeatherBench2 style)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZonalSpectrum:
    """Zonal power ``power[..., k]`` at zonal wavenumber ``k`` averaged over a latitude band, with the
    band-mean wavelength ``2 pi R cos(lat) / k`` in metres (``inf`` at ``k = 0``)."""

    power: Any
    wavenumber: np.ndarray
    wavelength_m: np.ndarray
    lat_band: tuple[float, float]
    latitudes_used: np.ndarray


EARTH_RADIUS_M = 6_371_000.0


def zonal_spectrum(
    field: Any,
    latitude: np.ndarray | Sequence[float],
    lat_band: tuple[float, float] = (30.0, 60.0),
    lat_axis: int = -2,
    lon_axis: int = -1,
) -> ZonalSpectrum:
    """Zonal power spectrum: FFT along longitude on each latitude row of ``lat_band`` (inclusive),
    ``E_k = c_k |F_k|^2`` with ``F_k`` the forward-normalised FFT and ``c_0 = 1``, ``c_k = 2``
    (``c_{n/2} = 1`` for even ``n``), so that ``sum_k E_k`` is the zonal mean of ``f^2`` on each row; the
    rows are then averaged with area weights. Like WeatherBench2's ``ZonalEnergySpectrum`` (Rasp et al.
    2024) but averaged at fixed wavenumber rather than interpolated to common wavelengths, and without its
    circumference factor (multiply by ``2 pi R cos(lat)`` for a density per unit wavenumber length).
    """
    x, dtype = _to_torch64(field)
    x = torch.movedim(x, (lat_axis, lon_axis), (-2, -1))
    lat = np.asarray(latitude, dtype=np.float64).ravel()
    lo, hi = min(lat_band), max(lat_band)
    rows = np.nonzero((lat >= lo - 1e-9) & (lat <= hi + 1e-9))[0]
    if rows.size == 0:
        raise UserError(f"no latitude row in the band {lat_band}")
    n = int(x.shape[-1])
    F = torch.fft.rfft(x[..., torch.as_tensor(rows, device=x.device), :], dim=-1, norm="forward")
    c = torch.full((F.shape[-1],), 2.0, dtype=torch.float64, device=x.device)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    e = (F.real**2 + F.imag**2) * c  # (..., rows, k)
    w = torch.as_tensor(area_weights(lat)[rows], device=x.device)
    power = (e * w[:, None]).sum(dim=-2) / w.sum()
    k = np.arange(F.shape[-1])
    circ = 2 * np.pi * EARTH_RADIUS_M * np.sum(np.cos(np.deg2rad(lat[rows])) * _np(w)) / _np(w).sum()
    with np.errstate(divide="ignore"):
        wl = np.where(k > 0, circ / np.maximum(k, 1), np.inf)
    return ZonalSpectrum(_from_torch(power, field, dtype), k, wl, (lo, hi), lat[rows])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
