"""A three-level quasi-geostrophic world on the sphere: weather whose chaos is the flow's own.

Groundwork for a second embedded world (docs/world.md, "A chaotic three-level world"). The shipped
world (:mod:`data_catalog.world.model`, one shallow-water layer) is not chaotic by itself: all its
unpredictability comes from a hidden Lorenz-96 driver, so initial perturbations decay and bred vectors
cannot beat random noise there (docs/engine.md). This model has growing modes of its own (baroclinic
instability of a sheared jet), in the spirit of Marshall & Molteni (1993, J. Atmos. Sci. 50, 1792):
three levels (about 200, 500 and 800 hPa), potential vorticity

    q1 = lap psi1 - (psi1 - psi2) / R1^2                         + f
    q2 = lap psi2 + (psi1 - psi2) / R1^2 - (psi2 - psi3) / R2^2  + f
    q3 = lap psi3 + (psi2 - psi3) / R2^2                         + f + f0 h / H0

advected by the non-divergent wind of its own level, ``dq_k/dt = -J(psi_k, q_k) + F_k``. Forcing
``F``: Newtonian relaxation of the two layer thicknesses ``psi1 - psi2`` and ``psi2 - psi3`` (the
temperature) toward those of sheared zonal jets that follow the seasons (time scale
``tau_relax_days``), Ekman drag on the lowest level's vorticity (``tau_ekman_days``) and ``nabla^8``
hyperdiffusion (e-folding ``tau_hyper_hours`` at the truncation degree). The barotropic flow is
driven only by the eddies. Geopotential anomalies are ``f0 psi`` (``f0`` at 45 degrees).

Numerics as the shallow-water world: spectral, T21 on the 32 x 64 Gaussian grid (torch-harmonics,
float64), third-order Adams-Bashforth, hyperdiffusion as an exact integrating factor; the inversion
``q -> psi`` is one 3 x 3 solve per degree (the global mean, degree 0, carries no flow and is kept 0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError
from data_catalog.world.model import DAY, Mountain, adams_bashforth, orography, seasonal_index
from data_catalog.world.spectral import SphereTransforms


@dataclass(frozen=True)
class QGParams:
    """Every number that defines the three-level world."""

    radius: float = 6.371e6
    omega: float = 7.292e-5
    nlat: int = 32
    nlon: int = 64
    lmax: int = 22  # triangular truncation T(lmax-1)
    dt: float = 1800.0  # AB3 stays stable for advection by 75 m/s jets at T21 (CFL limit ~0.7)
    # Rossby radii of deformation between levels 1-2 and 2-3 (Marshall & Molteni 1993)
    r1_km: float = 700.0
    r2_km: float = 450.0
    # equilibrium: zonal jets per level (m/s at the jet core), one Gaussian jet per hemisphere
    u_top: float = 60.0
    u_mid: float = 30.0
    u_bot: float = 0.0
    jet_lat: float = 40.0
    jet_width: float = 15.0  # Gaussian half-width (deg)
    jet_speed_amp: float = 0.25  # seasonal amplitude, relative (winter jet stronger)
    jet_lat_amp: float = 5.0  # seasonal shift (deg, winter jet equatorward)
    winter_peak_day: float = 15.0
    tau_relax_days: float = 10.0
    tau_ekman_days: float = 3.0
    tau_hyper_hours: float = 24.0
    scale_height: float = 9000.0  # H0 of the orographic term
    mountains: tuple[Mountain, ...] = field(
        default_factory=lambda: (
            Mountain(35.0, 90.0, 2000.0, 12.0),
            Mountain(45.0, 245.0, 1500.0, 8.0),
            Mountain(-25.0, 292.0, 1000.0, 6.0),
        )
    )
    forcing_update_hours: float = 6.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def f0(self) -> float:
        """Reference Coriolis parameter (45 degrees), ``geopotential anomaly = f0 psi``."""
        return 2 * self.omega * math.sin(math.radians(45.0))


class ThreeLevelQG:
    """Batched spectral three-level QG solver; the state is the PV anomaly ``(B, 3, lmax, lmax)``
    complex128 (``q`` without ``f`` and the orographic term), levels top to bottom.

    Parameters
    ----------
    params:
        The world's parameters.
    forced:
        ``False`` switches off relaxation, drag, hyperdiffusion and orography (the inviscid, unforced
        equations, used to check conservation and the Rossby-Haurwitz solution).
    """

    def __init__(self, params: QGParams | None = None, forced: bool = True) -> None:
        p = self.p = params or QGParams()
        self.forced = forced
        self.tr = tr = SphereTransforms(p.nlat, p.nlon, p.lmax, p.radius)
        self.lat_deg = np.rad2deg(tr.lat.numpy())
        self.lon_deg = np.rad2deg(tr.lon.numpy())
        f = (2 * p.omega * torch.sin(tr.lat))[:, None].expand(p.nlat, p.nlon).contiguous()
        self.f_spec = tr.to_spec(f)
        hs = orography(self.lat_deg, self.lon_deg, p) if forced else np.zeros((p.nlat, p.nlon))
        self.topo_spec = tr.to_spec(torch.as_tensor(p.f0 * hs / p.scale_height))
        self.c1, self.c2 = 1.0 / (p.r1_km * 1e3) ** 2, 1.0 / (p.r2_km * 1e3) ** 2
        c1, c2 = self.c1, self.c2
        coupling = torch.tensor([[-c1, c1, 0.0], [c1, -c1 - c2, c2], [0.0, c2, -c2]], dtype=torch.float64)
        lap = tr.lap[:, 0]
        a = lap[:, None, None] * torch.eye(3, dtype=torch.float64) + coupling  # (L, 3, 3)
        ainv = torch.zeros_like(a)
        ainv[1:] = torch.linalg.inv(a[1:])  # degree 0: no flow, kept 0
        self.a_mat = a.to(torch.complex128)
        self.a_inv = ainv.to(torch.complex128)
        self.triangle = (tr.ell >= torch.arange(p.lmax, dtype=torch.float64)[None, :]).to(torch.complex128)
        if forced:
            ell, lt = tr.ell, p.lmax - 1
            self.hyper = torch.exp(
                -(p.dt / (p.tau_hyper_hours * 3600.0)) * (ell * (ell + 1) / (lt * (lt + 1))) ** 4
            ).to(torch.complex128)
            self.k_relax = 1.0 / (p.tau_relax_days * DAY)
            self.k_ekman = 1.0 / (p.tau_ekman_days * DAY)
        else:
            self.hyper = torch.ones_like(self.triangle)
            self.k_relax = self.k_ekman = 0.0
        self.forcing_every = max(1, round(p.forcing_update_hours * 3600.0 / p.dt))

    # ------------------------------------------------------------------ inversion
    def q_from_psi(self, psi: torch.Tensor) -> torch.Tensor:
        """PV anomaly ``(B, 3, L, M)`` of the streamfunction ``psi`` (spectral, same shape)."""
        return torch.einsum("lij,bjlm->bilm", self.a_mat, psi)

    def psi_from_q(self, q: torch.Tensor) -> torch.Tensor:
        """Streamfunction of the PV anomaly ``q`` (one 3 x 3 solve per degree)."""
        return torch.einsum("lij,bjlm->bilm", self.a_inv, q)

    def equilibrium_thickness(self, t_seconds: np.ndarray) -> torch.Tensor:
        """Thicknesses ``(psi1 - psi2, psi2 - psi3)`` of the equilibrium jets, ``(B, 2, L, M)``."""
        p, tr = self.p, self.tr
        c = seasonal_index(np.asarray(t_seconds, dtype=np.float64), p)[:, None]  # (B, 1)
        lat = self.lat_deg[None, :]
        north = (1 + p.jet_speed_amp * c) * np.exp(
            -(((lat - (p.jet_lat - p.jet_lat_amp * c)) / p.jet_width) ** 2)
        )
        south = (1 - p.jet_speed_amp * c) * np.exp(
            -(((lat + (p.jet_lat + p.jet_lat_amp * c)) / p.jet_width) ** 2)
        )
        prof = torch.as_tensor(north + south)  # (B, nlat)
        speeds = torch.tensor([p.u_top, p.u_mid, p.u_bot], dtype=torch.float64)
        u = (speeds[None, :, None] * prof[:, None, :])[..., None].expand(-1, -1, -1, p.nlon)
        uv = torch.stack((u, torch.zeros_like(u)), dim=2).contiguous()  # (B, 3, 2, lat, lon)
        psi = tr.vrtdiv(uv)[:, :, 0] * tr.invlap
        return torch.stack((psi[:, 0] - psi[:, 1], psi[:, 1] - psi[:, 2]), dim=1) * self.triangle

    # ------------------------------------------------------------------ dynamics
    def winds(self, psi: torch.Tensor) -> torch.Tensor:
        """Non-divergent winds ``(B, 3, 2, lat, lon)`` (u, v) of the streamfunction."""
        zeta = psi * self.tr.lap
        return self.tr.uv(torch.stack((zeta, torch.zeros_like(zeta)), dim=2))

    def tendency(self, q: torch.Tensor, thick_eq: torch.Tensor | None) -> torch.Tensor:
        """``dq/dt``: advection of total PV by each level's wind plus the forcing."""
        tr = self.tr
        psi = self.psi_from_q(q)
        uv = self.winds(psi)
        qtot = q + self.f_spec
        if self.forced:
            qtot = torch.cat((qtot[:, :2], qtot[:, 2:] + self.topo_spec), dim=1)
        qg = tr.to_grid(qtot)
        dq = -tr.vrtdiv(uv * qg[:, :, None])[:, :, 1]  # -div(u q) = -J(psi, q) for div u = 0
        if self.forced:
            assert thick_eq is not None, "a forced model needs the equilibrium thickness"
            th = torch.stack((psi[:, 0] - psi[:, 1], psi[:, 1] - psi[:, 2]), dim=1) - thick_eq
            r1, r2 = self.k_relax * self.c1 * th[:, 0], self.k_relax * self.c2 * th[:, 1]
            ekman = -self.k_ekman * psi[:, 2] * tr.lap
            dq = dq + torch.stack((r1, r2 - r1, ekman - r2), dim=1)
        return dq

    def initial_state(
        self, t_seconds: np.ndarray, generator: torch.Generator, noise: float = 1e-6
    ) -> torch.Tensor:
        """Equilibrium jets (zero barotropic flow at the bottom) plus seeded vorticity noise, as PV."""
        p, tr = self.p, self.tr
        b = len(t_seconds)
        th = self.equilibrium_thickness(np.asarray(t_seconds))
        psi = torch.zeros(b, 3, p.lmax, p.lmax, dtype=torch.complex128)
        psi[:, 1] = th[:, 1]
        psi[:, 0] = th[:, 0] + th[:, 1]
        grid = noise * torch.randn(b, 3, p.nlat, p.nlon, generator=generator, dtype=torch.float64)
        psi = psi + tr.to_spec(grid) * tr.invlap
        return self.q_from_psi(psi * self.triangle)

    def run(
        self,
        q: torch.Tensor,
        t0: np.ndarray,
        nsteps: int,
        callback: Callable[[int, torch.Tensor, np.ndarray], None] | None = None,
        every: int = 1,
        rk_start: bool = False,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Integrate ``nsteps`` steps from PV anomaly ``q`` at times ``t0`` (B,); returns ``(q, t)``.

        ``callback(k, q, t)`` after every ``every`` steps (``k`` counts callbacks from 1). The
        Adams-Bashforth history starts afresh at each call: Euler, AB2, then AB3, or with ``rk_start``
        two classical Runge-Kutta steps (whose first-stage tendencies seed the AB3 history), so that
        short calls chained together stay close to one long AB3 integration.
        """
        p = self.p
        t = np.asarray(t0, dtype=np.float64).copy()
        hist: list[torch.Tensor] = []
        thick: torch.Tensor | None = None
        for n in range(nsteps):
            if self.forced and n % self.forcing_every == 0:
                thick = self.equilibrium_thickness(t)
            k1 = self.tendency(q, thick)
            if rk_start and n < 2:
                adams_bashforth(hist, k1)  # history only
                k2 = self.tendency(q + 0.5 * p.dt * k1, thick)
                k3 = self.tendency(q + 0.5 * p.dt * k2, thick)
                k4 = self.tendency(q + p.dt * k3, thick)
                nl = (k1 + 2 * k2 + 2 * k3 + k4) / 6.0
            else:
                nl = adams_bashforth(hist, k1)
            q = (q + p.dt * nl) * self.hyper
            q[..., 0, :] = 0.0
            t = t + p.dt
            if callback is not None and (n + 1) % every == 0:
                callback((n + 1) // every, q, t)
        return q, t

    # ------------------------------------------------------------------ diagnostics
    def geopotential(self, q: torch.Tensor) -> torch.Tensor:
        """Geopotential anomalies ``f0 psi`` on the transform grid, ``(B, 3, lat, lon)`` (m2 s-2)."""
        return self.p.f0 * self.tr.to_grid(self.psi_from_q(q))

    def energy(self, q: torch.Tensor) -> torch.Tensor:
        """Total (kinetic + available potential) energy per unit mass, area mean, ``(B,)``:
        ``-1/2 <sum_k psi_k q_k>`` with the PV anomaly (conserved by the unforced flow without f)."""
        psi = self.psi_from_q(q)
        g = self.tr.to_grid(psi) * self.tr.to_grid(q)
        return -0.5 * self.tr.mean(g.sum(dim=1))


def params_from(d: dict[str, Any]) -> QGParams:
    """:class:`QGParams` with the world's values except those in ``d`` (numbers; no mountains)."""
    names = {f.name for f in fields(QGParams)} - {"mountains"}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown QG parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    bad = [k for k, v in d.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise UserError(f"QG parameter(s) {', '.join(bad)} must be numbers")
    return QGParams(**{k: type(getattr(QGParams(), k))(v) for k, v in d.items()})


def parse_settings(items: Sequence[str]) -> dict[str, float]:
    """``["u_top=57", "tau_relax_days=12"]`` -> ``{"u_top": 57.0, "tau_relax_days": 12.0}``."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--set takes NAME=NUMBER, not {item!r}") from None
    params_from(out)  # checks the names
    return out


# ---------------------------------------------------------------------- diagnostics of the world


def row_weights(model: ThreeLevelQG) -> np.ndarray:
    """Area weights of the transform grid's rows, ``(nlat, 1)``, mean 1."""
    w = np.cos(model.tr.lat.numpy())[:, None]
    return w / w.mean()


def weighted_rms(field: np.ndarray, w: np.ndarray) -> float:
    """Area-weighted RMS of a ``(..., nlat, nlon)`` field."""
    return float(np.sqrt(np.mean(w * field**2)))


def attractor_state(model: ThreeLevelQG, seed: int = 11, spinup_days: float = 60.0, day: float = 300.0):
    """A state on the attractor: ``spinup_days`` from the seeded initial jets, started at ``day``."""
    t0 = np.full(1, day * DAY)
    q0 = model.initial_state(t0, torch.Generator().manual_seed(seed))
    return model.run(q0, t0, round(spinup_days * DAY / model.p.dt))


def climate(model: ThreeLevelQG, q: torch.Tensor, t: np.ndarray, days: int = 80) -> dict:
    """Daily geopotential over ``days`` from ``(q, t)``: per-level std over time (area mean of the
    variance), 500 hPa anomaly autocorrelation at 1 and 3 days, strongest zonal-mean wind."""
    spd = round(DAY / model.p.dt)
    zs: list[np.ndarray] = []
    umax: list[float] = []

    def keep(k: int, qq: torch.Tensor, tt: np.ndarray) -> None:
        zs.append(model.geopotential(qq)[0].numpy())
        umax.append(float(model.winds(model.psi_from_q(qq))[0, :, 0].mean(-1).abs().max()))

    q, t = model.run(q, t, days * spd, keep, spd)
    z = np.array(zs)  # (day, level, lat, lon)
    w = row_weights(model)
    an = z - z.mean(axis=0)
    var = np.mean(w * an.var(axis=0), axis=(-2, -1))

    def lag(d: int) -> float:
        a = an[:, 1]
        return float(np.mean(w * (a[d:] * a[:-d]).mean(axis=0)) / var[1])

    return {
        "std": [float(v) for v in np.sqrt(var)],
        "autocorr_1d": lag(1),
        "autocorr_3d": lag(3),
        "max_zonal_wind": max(umax),
        "state": (q, t),
    }


def error_growth(
    model: ThreeLevelQG, q: torch.Tensor, t: np.ndarray, days: int = 60, eps: float = 1e-3
) -> dict:
    """Twin runs from ``(q, t)``, one ``(1 + eps)`` times the other: daily RMS 500 hPa distance and
    the e-folding time while it grows from 10 to 300 m2 s-2 (NaN if it never does)."""
    spd = round(DAY / model.p.dt)
    w = row_weights(model)
    twin = q.repeat(2, 1, 1, 1)
    twin[1] = twin[1] * (1 + eps)
    dist: list[float] = []

    def daily(k: int, qq: torch.Tensor, tt: np.ndarray) -> None:
        g = model.geopotential(qq)[:, 1].numpy()
        dist.append(weighted_rms(g[0] - g[1], w))

    model.run(twin, np.repeat(t, 2), days * spd, daily, spd)
    d = np.array(dist)
    i0, i1 = int(np.argmax(d > 10.0)), int(np.argmax(d > 300.0))
    efold = (i1 - i0) / math.log(d[i1] / d[i0]) if (d > 300.0).any() and i1 > i0 else float("nan")
    return {"distance": dist, "efold_days": efold}


__all__ = [
    "QGParams",
    "ThreeLevelQG",
    "attractor_state",
    "climate",
    "error_growth",
    "row_weights",
    "weighted_rms",
]
