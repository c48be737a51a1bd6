"""Forced-dissipative shallow-water model on the rotating sphere (spectral, semi-implicit).

Prognostic variables, as spherical-harmonic coefficients: relative vorticity ``zeta``, divergence
``delta`` and the layer-thickness geopotential anomaly ``phi' = g h - Phi_bar``. With
``q = zeta + f`` (absolute vorticity), ``K = |u|^2 / 2`` and the surface geopotential
``Phi_s = g h_s``::

    d zeta/dt  = -div(q u)                          - (zeta - zeta_eq)/tau_drag + S - nu lap^4 zeta
    d delta/dt =  curl(q u) - lap(phi' + Phi_s + K) - delta/tau_drag                - nu lap^4 delta
    d phi'/dt  = -div(phi' u) - Phi_bar delta       - (phi' - phi'_eq)/tau_relax    - nu lap^4 phi'

(Hoskins & Simmons 1975 vorticity-divergence form). Forcing: relaxation toward seasonally varying
zonal jets in gradient-wind balance (as in the forced-dissipative shallow-water turbulence of Scott &
Polvani 2007) and a storm-track vorticity source ``S`` patterned by two chaotic Lorenz (1996) rings,
a deterministic stand-in for unresolved baroclinic eddies (the stochastic stirring of Vallis et al.
2004, made deterministic). Time stepping: third-order Adams-Bashforth for everything except the
gravity-wave terms ``-lap phi'`` and ``-Phi_bar delta``, which are Crank-Nicolson (semi-implicit,
Durran 2010 ch. 4); the hyperdiffusion is an exact integrating factor after each step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from data_catalog.world.spectral import SphereTransforms

DAY = 86400.0
YEAR_DAYS = 365.2425


@dataclass(frozen=True)
class Mountain:
    """Isotropic Gaussian mountain ``h = height * exp(-(d / width)^2)``, ``d`` the great-circle angle."""

    lat: float
    lon: float
    height: float
    width_deg: float


@dataclass(frozen=True)
class WorldParams:
    """Every number that defines the world. Its hash names the cached store."""

    # planet
    radius: float = 6.371e6
    omega: float = 7.292e-5
    gravity: float = 9.80616
    depth: float = 5400.0  # mean layer thickness H (m); Phi_bar = g H
    # numerics
    nlat: int = 32
    nlon: int = 64
    lmax: int = 22  # triangular truncation T(lmax-1)
    dt: float = 1800.0
    # forcing: balanced zonal jets, strength and latitude following the seasons
    jet_speed: float = 35.0  # annual mean peak target wind (m/s)
    jet_speed_amp: float = 10.0  # seasonal amplitude (winter stronger)
    jet_lat: float = 40.0  # annual mean jet latitude (deg)
    jet_lat_amp: float = 5.0  # seasonal amplitude (winter equatorward)
    jet_width: float = 9.0  # Gaussian half-width (deg)
    winter_peak_day: float = 15.0  # day of year of the NH winter maximum
    tau_relax_days: float = 3.0
    tau_drag_days: float = 6.0
    tau_hyper_hours: float = 12.0  # e-folding time of the smallest scale by nabla^8 hyperdiffusion
    mountains: tuple[Mountain, ...] = field(
        default_factory=lambda: (
            Mountain(35.0, 90.0, 2000.0, 12.0),
            Mountain(45.0, 245.0, 1500.0, 8.0),
            Mountain(-25.0, 292.0, 1000.0, 6.0),
        )
    )
    # storm-track stirring: a vorticity source whose longitude pattern is the state of a Lorenz (1996)
    # ring per hemisphere (deterministic chaos standing in for unresolved baroclinic eddies)
    stir_amp: float = 1e-10  # vorticity-source scale at the storm-track centre (s-2)
    stir_width: float = 12.0  # Gaussian half-width of the storm tracks (deg), centred on the jets
    stir_season_amp: float = 0.3  # winter/summer modulation of the stirring
    l96_k: int = 36  # sectors per latitude circle
    l96_forcing: float = 8.0
    l96_time_days: float = 16.0  # one Lorenz-96 time unit in days (v1: 2)
    forcing_update_hours: float = 6.0  # equilibrium jets and storm-track envelopes refresh interval
    # initial noise (relative vorticity, s-1) used to start each trajectory
    init_noise: float = 1e-6

    def as_dict(self) -> dict:
        """Plain dict (JSON-safe) of the parameters."""
        return dataclasses.asdict(self)

    @property
    def phi_bar(self) -> float:
        """Mean thickness geopotential ``g H`` (m2 s-2)."""
        return self.gravity * self.depth


class _Seasons(Protocol):
    """Any world's parameters with a seasonal cycle (this world's and :mod:`data_catalog.world.qg`'s)."""

    @property
    def winter_peak_day(self) -> float: ...


class _Mountains(Protocol):
    @property
    def mountains(self) -> Sequence[Mountain]: ...


def adams_bashforth(hist: list[torch.Tensor], tendency: torch.Tensor) -> torch.Tensor:
    """Push ``tendency`` to the front of ``hist`` (newest first; at most three kept, in place) and return
    the explicit Adams-Bashforth tendency: Euler on the first step, AB2 on the second, AB3 after."""
    hist.insert(0, tendency)
    del hist[3:]
    if len(hist) == 1:
        return hist[0]
    if len(hist) == 2:
        return 1.5 * hist[0] - 0.5 * hist[1]
    return (23.0 / 12.0) * hist[0] - (16.0 / 12.0) * hist[1] + (5.0 / 12.0) * hist[2]


def seasonal_index(t_seconds: np.ndarray | float, p: _Seasons) -> np.ndarray:
    """``c(t) = cos(2 pi (day - winter_peak_day) / 365.2425)``: +1 in northern winter, -1 in summer.

    ``t`` is in seconds since 2000-01-01T00.
    """
    days = np.asarray(t_seconds, dtype=np.float64) / DAY
    return np.cos(2 * np.pi * (days - p.winter_peak_day) / YEAR_DAYS)


def jet_profile(lat_deg: np.ndarray, c: np.ndarray, p: WorldParams) -> np.ndarray:
    """Target zonal wind ``u_eq(lat, c)`` (m/s) for seasonal index ``c`` (shape ``(B,)``).

    One Gaussian jet per hemisphere: the NH jet has speed ``U + dU c`` at latitude ``L - dL c``,
    the SH jet ``U - dU c`` at ``-(L + dL c)`` (winter jets stronger and further equatorward).
    """
    c = np.asarray(c, dtype=np.float64)[:, None]
    lat = np.asarray(lat_deg, dtype=np.float64)[None, :]
    un, ln = p.jet_speed + p.jet_speed_amp * c, p.jet_lat - p.jet_lat_amp * c
    us, ls = p.jet_speed - p.jet_speed_amp * c, -(p.jet_lat + p.jet_lat_amp * c)
    w = p.jet_width
    return un * np.exp(-(((lat - ln) / w) ** 2)) + us * np.exp(-(((lat - ls) / w) ** 2))


def balanced_height(lat_deg: np.ndarray, c: np.ndarray, p: WorldParams, nfine: int = 2881) -> np.ndarray:
    """Thickness geopotential ``Phi_eq(lat)`` in gradient-wind balance with :func:`jet_profile`.

    ``d Phi / d phi = -(a f + u tan(phi)) u``, integrated with the trapezoid rule on a fine grid, then
    shifted to area mean ``Phi_bar`` and interpolated to ``lat_deg``. Returns ``(B, len(lat_deg))``.
    """
    fine = np.linspace(-90.0, 90.0, nfine)
    phi = np.deg2rad(fine)
    u = jet_profile(fine, c, p)
    f = 2 * p.omega * np.sin(phi)
    tan = np.tan(np.clip(phi, -np.pi / 2 + 1e-9, np.pi / 2 - 1e-9))
    dphi = -(p.radius * f + u * tan) * u
    dphi[:, [0, -1]] = 0.0  # u vanishes at the poles faster than tan grows
    h = np.concatenate(
        [np.zeros((u.shape[0], 1)), np.cumsum(0.5 * (dphi[:, 1:] + dphi[:, :-1]) * np.diff(phi), axis=1)],
        axis=1,
    )
    w = np.cos(phi)
    h = h - (h * w).sum(axis=1, keepdims=True) / w.sum()
    out = np.stack([np.interp(lat_deg, fine, row) for row in h])
    return out + p.phi_bar


def orography(lat_deg: np.ndarray, lon_deg: np.ndarray, p: _Mountains) -> np.ndarray:
    """Surface height ``h_s`` (m) on a ``(lat, lon)`` grid: sum of Gaussian mountains."""
    la = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))[:, None]
    lo = np.deg2rad(np.asarray(lon_deg, dtype=np.float64))[None, :]
    hs = np.zeros((la.shape[0], lo.shape[1]))
    for m in p.mountains:
        la0, lo0 = math.radians(m.lat), math.radians(m.lon)
        cosd = np.sin(la) * math.sin(la0) + np.cos(la) * math.cos(la0) * np.cos(lo - lo0)
        d = np.arccos(np.clip(cosd, -1.0, 1.0))
        hs += m.height * np.exp(-((d / math.radians(m.width_deg)) ** 2))
    return hs


class ShallowWaterModel:
    """Batched spectral shallow-water solver; the state is ``(B, 3, lmax, lmax)`` complex128.

    Channel order of the state: ``zeta, delta, phi'``. Every trajectory in the batch carries its own
    model time (seconds since 2000-01-01T00), so trajectories in different years run side by side.

    Parameters
    ----------
    params:
        The world's parameters.
    forced:
        ``False`` switches off relaxation, drag, hyperdiffusion and orography (the inviscid, unforced
        equations, used to check conservation).
    """

    def __init__(self, params: WorldParams, forced: bool = True) -> None:
        p = self.p = params
        self.forced = forced
        self.tr = SphereTransforms(p.nlat, p.nlon, p.lmax, p.radius)
        tr = self.tr
        self.lat_deg = np.rad2deg(tr.lat.numpy())
        self.lon_deg = np.rad2deg(tr.lon.numpy())
        self.coriolis = (2 * p.omega * torch.sin(tr.lat))[:, None]
        hs = orography(self.lat_deg, self.lon_deg, p) if forced else np.zeros((p.nlat, p.nlon))
        self.phis_spec = tr.to_spec(torch.as_tensor(p.gravity * hs))
        lam = -tr.lap  # l (l + 1) / a^2
        self.lam = lam
        self.alpha = 0.5 * p.dt
        self.ci_den = 1.0 + self.alpha**2 * lam * p.phi_bar
        ell = tr.ell
        lt = p.lmax - 1
        if forced:
            self.hyper = torch.exp(
                -(p.dt / (p.tau_hyper_hours * 3600.0)) * (ell * (ell + 1) / (lt * (lt + 1))) ** 4
            )
            self.k_drag = 1.0 / (p.tau_drag_days * DAY)
            self.k_relax = 1.0 / (p.tau_relax_days * DAY)
        else:
            self.hyper = torch.ones_like(ell)
            self.k_drag = 0.0
            self.k_relax = 0.0
        self.triangle = (tr.ell >= torch.arange(p.lmax, dtype=torch.float64)[None, :]).to(torch.complex128)
        self.forcing_every = max(1, round(p.forcing_update_hours * 3600.0 / p.dt))
        # longitude bumps of the Lorenz-96 sectors (periodic Gaussians one sector wide)
        k = p.l96_k
        centres = 2 * math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k
        dl = torch.remainder(tr.lon[None, :] - centres[:, None] + math.pi, 2 * math.pi) - math.pi
        self.bumps = torch.exp(-((dl / (2 * math.pi / k)) ** 2))  # (K, nlon)
        # L96 climatological standard deviation for F = 8 is about 3.6 (Lorenz 1996)
        self.l96_std = 0.45 * p.l96_forcing
        self.l96_h = p.dt / (p.l96_time_days * DAY)

    def l96_tendency(self, x: torch.Tensor) -> torch.Tensor:
        """Lorenz (1996): ``dX_j/dt = (X_{j+1} - X_{j-2}) X_{j-1} - X_j + F`` on the last axis."""
        return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + self.p.l96_forcing

    def l96_step(self, x: torch.Tensor) -> torch.Tensor:
        """One classical RK4 step of the Lorenz-96 rings over one model time step."""
        h = self.l96_h
        k1 = self.l96_tendency(x)
        k2 = self.l96_tendency(x + 0.5 * h * k1)
        k3 = self.l96_tendency(x + 0.5 * h * k2)
        k4 = self.l96_tendency(x + h * k3)
        return x + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)

    def stir_envelope(self, t_seconds: np.ndarray) -> torch.Tensor:
        """Storm-track envelopes ``(B, 2, nlat)`` (NH, SH), amplitude ``stir_amp`` included."""
        p = self.p
        c = seasonal_index(np.asarray(t_seconds), p)[:, None]
        lat = self.lat_deg[None, :]
        ln, ls = p.jet_lat - p.jet_lat_amp * c, -(p.jet_lat + p.jet_lat_amp * c)
        en = (1.0 + p.stir_season_amp * c) * np.exp(-(((lat - ln) / p.stir_width) ** 2))
        es = (1.0 - p.stir_season_amp * c) * np.exp(-(((lat - ls) / p.stir_width) ** 2))
        return torch.as_tensor(np.stack((en, es), axis=1) * p.stir_amp)

    def stir_source(self, x: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Spectral vorticity source ``sum_h env_h(lat) * sum_j Xhat_{h,j} b_j(lon)`` (B, L, M).

        ``Xhat`` is the ring state minus its ring mean over the climatological standard deviation, and
        the pattern's zonal mean is removed, so the source has no zonal-mean (m = 0) part.
        """
        pattern = ((x - x.mean(dim=-1, keepdim=True)) / self.l96_std) @ self.bumps  # (B, 2, nlon)
        pattern = pattern - pattern.mean(dim=-1, keepdim=True)
        g = torch.einsum("bhk,bhn->bkn", env, pattern)
        return self.tr.to_spec(g)

    def equilibrium_spec(self, t_seconds: np.ndarray) -> torch.Tensor:
        """Spectral equilibrium ``(zeta_eq, phi'_eq)`` as ``(B, 2, lmax, lmax)`` at times ``t_seconds`` (B,)."""
        p = self.p
        c = seasonal_index(np.asarray(t_seconds), p)
        h = torch.as_tensor(balanced_height(self.lat_deg, c, p) - p.phi_bar)
        u = torch.as_tensor(jet_profile(self.lat_deg, c, p))
        uv = torch.stack((u, torch.zeros_like(u)), dim=1)[..., None].expand(-1, -1, -1, p.nlon).contiguous()
        zeta = self.tr.vrtdiv(uv)[:, 0]
        phi = self.tr.to_spec(h[:, :, None].expand(-1, -1, p.nlon).contiguous())
        return torch.stack((zeta, phi), dim=1) * self.triangle

    # ------------------------------------------------------------------ dynamics
    def tendency(self, s: torch.Tensor, eq: torch.Tensor | None, stir: torch.Tensor | None) -> torch.Tensor:
        """Explicit (Adams-Bashforth) part of the tendency of state ``s``."""
        tr = self.tr
        grid = tr.to_grid(s)  # zeta, delta, phi'
        uv = tr.uv(s[:, :2])
        q = grid[:, 0:1] + self.coriolis
        flux = torch.stack((uv * q, uv * grid[:, 2:3]), dim=1)  # (B, 2 fluxes, 2 comps, ...)
        cd = tr.vrtdiv(flux)  # (B, 2, [curl, div], L, M)
        ke = tr.to_spec(0.5 * (uv * uv).sum(dim=1))
        dz = -cd[:, 0, 1]
        dd = cd[:, 0, 0] - tr.lap * (ke + self.phis_spec)
        dp = -cd[:, 1, 1]
        if self.forced:
            assert eq is not None, "a forced model needs the equilibrium state eq"
            dz = dz - self.k_drag * (s[:, 0] - eq[:, 0])
            if stir is not None:
                dz = dz + stir
            dd = dd - self.k_drag * s[:, 1]
            dp = dp - self.k_relax * (s[:, 2] - eq[:, 1])
        return torch.stack((dz, dd, dp), dim=1)

    def initial_state(
        self, t_seconds: np.ndarray, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced equilibrium jets plus seeded vorticity noise, and Lorenz-96 rings ``F + noise``.

        Returns ``(s, x)``: spectral state ``(B, 3, L, M)`` and driver state ``(B, 2, K)``.
        """
        p = self.p
        b = len(t_seconds)
        s = torch.zeros(b, 3, p.lmax, p.lmax, dtype=torch.complex128)
        eq = self.equilibrium_spec(t_seconds)
        s[:, 0], s[:, 2] = eq[:, 0], eq[:, 1]
        noise = torch.randn(b, p.nlat, p.nlon, generator=generator, dtype=torch.float64) * p.init_noise
        s[:, 0] += self.tr.to_spec(noise)
        x = p.l96_forcing + 0.01 * torch.randn(b, 2, p.l96_k, generator=generator, dtype=torch.float64)
        return s * self.triangle, x

    def run(
        self, s: torch.Tensor, x: torch.Tensor, t0: np.ndarray, nsteps: int, callback=None, every: int = 1
    ):
        """Integrate ``nsteps`` steps from spectral state ``s``, driver ``x`` at times ``t0`` (B,).

        Returns ``(s, x, t)``. ``callback(k, s, t)`` is called after every ``every`` steps (``k``
        counts callbacks from 1). The Adams-Bashforth history starts afresh (Euler, then AB2) at each
        call; the equilibrium jets and storm-track envelopes are refreshed every ``forcing_every`` steps.
        """
        p = self.p
        dt, a = p.dt, self.alpha
        t = np.asarray(t0, dtype=np.float64).copy()
        hist: list[torch.Tensor] = []
        eq: torch.Tensor | None = None
        env: torch.Tensor | None = None
        stir: torch.Tensor | None = None
        for n in range(nsteps):
            if self.forced:
                if n % self.forcing_every == 0:
                    eq = self.equilibrium_spec(t)
                    env = self.stir_envelope(t)
                assert env is not None  # set at n = 0 (forcing_every >= 1)
                stir = self.stir_source(x, env) if p.stir_amp > 0 else None
            nl = adams_bashforth(hist, self.tendency(s, eq, stir))
            z = s[:, 0] + dt * nl[:, 0]
            rd = s[:, 1] + dt * nl[:, 1] + a * self.lam * s[:, 2]
            rp = s[:, 2] + dt * nl[:, 2] - a * p.phi_bar * s[:, 1]
            d = (rd + a * self.lam * rp) / self.ci_den
            ph = rp - a * p.phi_bar * d
            s = torch.stack((z, d, ph), dim=1) * self.hyper
            if self.forced:
                x = self.l96_step(x)
            t = t + dt
            if callback is not None and (n + 1) % every == 0:
                callback((n + 1) // every, s, t)
        return s, x, t
