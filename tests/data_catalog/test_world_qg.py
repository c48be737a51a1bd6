"""The three-level QG world (data_catalog.world.qg): inversion, an exact solution, conservation, and
chaos of its own (the property the shallow-water world lacks)."""

from __future__ import annotations

import math

import numpy as np
import torch

from data_catalog.world import qg
from data_catalog.world.model import DAY
from data_catalog.world.qg import QGParams, ThreeLevelQG


def _random_psi(model: ThreeLevelQG, seed: int, scale: float = 1e7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    p = model.p
    grid = scale * torch.randn(2, 3, p.nlat, p.nlon, generator=gen, dtype=torch.float64)
    psi = model.tr.to_spec(grid) * model.triangle
    psi[..., 0, :] = 0
    return psi


def test_pv_inversion_round_trip_and_coupling() -> None:
    """``psi -> q -> psi`` is the identity for degrees >= 1; a barotropic ``psi`` (equal levels) has
    ``q = lap psi`` on every level, a thickness-only one ``q1 = -(psi1 - psi2) / R1^2``."""
    m = ThreeLevelQG(forced=False)
    psi = _random_psi(m, 0)
    back = m.psi_from_q(m.q_from_psi(psi))
    assert float((back - psi).abs().max() / psi.abs().max()) < 1e-12
    baro = psi[:, :1].expand(-1, 3, -1, -1)
    q = m.q_from_psi(baro)
    assert torch.allclose(q, baro * m.tr.lap, rtol=1e-12, atol=0)
    thick = torch.zeros_like(psi)
    thick[:, 0] = psi[:, 0]  # psi1 only: lap psi1 - psi1 / R1^2 on level 1, + psi1 / R1^2 on level 2
    q = m.q_from_psi(thick)
    r1 = 1 / (m.p.r1_km * 1e3) ** 2
    assert torch.allclose(q[:, 0], psi[:, 0] * (m.tr.lap - r1), rtol=1e-12)
    assert torch.allclose(q[:, 1], psi[:, 0] * r1, rtol=1e-12)
    assert float(q[:, 2].abs().max()) == 0.0


def test_rossby_haurwitz_wave_has_the_analytical_phase_speed() -> None:
    """A single harmonic ``Y_l^m`` on all levels (no thickness, no forcing) is an exact nonlinear
    solution: its coefficient turns as ``exp(i omega t)``, ``omega = 2 Omega m / (l (l + 1))``
    (westward Rossby-Haurwitz wave on a resting atmosphere)."""
    m = ThreeLevelQG(forced=False)
    p = m.p
    lm = (5, 3)
    psi = torch.zeros(1, 3, p.lmax, p.lmax, dtype=torch.complex128)
    psi[:, :, lm[0], lm[1]] = 2e6 * (0.6 + 0.8j)
    q0 = m.q_from_psi(psi)
    steps = 48
    q1, _ = m.run(q0, np.zeros(1), steps)
    c0, c1 = q0[0, :, lm[0], lm[1]], q1[0, :, lm[0], lm[1]]
    omega = 2 * p.omega * lm[1] / (lm[0] * (lm[0] + 1))
    expected = c0 * complex(math.cos(omega * steps * p.dt), math.sin(omega * steps * p.dt))
    assert float((c1 - expected).abs().max() / c0.abs().max()) < 2e-3
    others = q1.clone()
    others[0, :, lm[0], lm[1]] = 0
    assert float(others.abs().max() / c0.abs().max()) < 1e-10  # nothing else excited


def test_energy_conserved_without_forcing() -> None:
    """Unforced, inviscid: total energy ``-1/2 <psi q>`` of an unstable sheared jet plus noise is
    conserved to 1e-4 over 3 days while the flow changes, and the drift is time-stepping error (it
    shrinks at least twofold when the step is halved)."""
    drift = []
    for dt in (1800.0, 900.0):
        p = QGParams(dt=dt)
        m = ThreeLevelQG(p, forced=False)
        q = ThreeLevelQG(p).initial_state(np.zeros(1), torch.Generator().manual_seed(1), noise=1e-5)
        e0 = float(m.energy(q)[0])
        q3, _ = m.run(q, np.zeros(1), round(3 * DAY / dt))
        drift.append(abs(float(m.energy(q3)[0]) - e0) / e0)
        assert float((q3 - q).abs().max() / q.abs().max()) > 0.01
    assert drift[0] < 1e-4, drift
    assert drift[1] < 0.5 * drift[0], drift


def test_flow_is_chaotic_on_its_own() -> None:
    """From a state on the attractor, a 1e-3 perturbation of the flow (no hidden driver in this world)
    grows at least 100-fold in 30 days and saturates at the distance of two independent states,
    ``sqrt(2)`` x the climatological standard deviation of the 500 hPa geopotential (within 25 %).
    Measured with the defaults: e-folding about 4-5 days (docs/world.md)."""
    m = ThreeLevelQG()
    q, t = qg.attractor_state(m)
    cl = qg.climate(m, q, t, days=80)
    q, t = cl["state"]
    eg = qg.error_growth(m, q, t, days=60)
    dist = eg["distance"]
    assert dist[29] > 100 * dist[0], dist
    saturated = float(np.mean(dist[-15:]))
    assert 0.75 < saturated / (math.sqrt(2) * cl["std"][1]) < 1.25, (saturated, cl["std"])
    assert 2.0 < eg["efold_days"] < 8.0, eg["efold_days"]
    # the upper level varies most (the jet and its eddies), the lowest least (Ekman drag)
    assert cl["std"][0] > cl["std"][1] > cl["std"][2] > 0, cl["std"]


def test_weighted_rms_of_a_constant_and_of_a_band() -> None:
    """``weighted_rms`` is the area-weighted RMS: a constant field gives its value; a field that is 1
    poleward of 30 degrees and 0 elsewhere gives ``sqrt(1 - sin 30)`` (area fraction 1/2) to the
    Gaussian grid's resolution."""
    m = ThreeLevelQG()
    w = qg.row_weights(m)
    assert math.isclose(qg.weighted_rms(np.full((m.p.nlat, m.p.nlon), 3.0), w), 3.0, rel_tol=1e-12)
    band = (np.abs(m.lat_deg) > 30)[:, None] * np.ones((1, m.p.nlon))
    assert abs(qg.weighted_rms(band, w) - math.sqrt(0.5)) < 0.03


def test_deterministic_and_seasonal() -> None:
    """Same seed, same result bitwise; the equilibrium jets follow the seasons (winter stronger)."""
    m = ThreeLevelQG()
    runs = [
        m.run(m.initial_state(np.zeros(2), torch.Generator().manual_seed(5)), np.zeros(2), 24)[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    jan, jul = 15 * DAY, 197 * DAY
    th = m.equilibrium_thickness(np.array([jan, jul]))
    u = m.tr.uv(torch.stack((th[:, 0] * m.tr.lap, torch.zeros_like(th[:, 0])), dim=1))[:, 0].mean(-1)
    nh = m.lat_deg > 0
    assert float(u[0][nh].max()) > 1.3 * float(u[1][nh].max())  # shear u_top - u_mid, 1.25 / 0.75
    assert float(u[1][~nh].max()) > 1.3 * float(u[0][~nh].max())
    assert isinstance(m.p, QGParams)
