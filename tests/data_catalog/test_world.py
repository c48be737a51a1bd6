"""The embedded world builtin:sphere-swe: physics, store contract, determinism, concurrency.

The full 10-year world is built once per cache (``$WXENS_CACHE``, repo-local in tests) by the
session fixture and reused. Every physical claim is checked against an independent route:
finite-difference calculus on the stored fields, scipy's spherical harmonics, analytic steady states.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.special as sps
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from data_catalog.world import (
    SPLITS,
    VARIABLES,
    ShallowWaterModel,
    WorldParams,
    build_world,
    cached_world,
    world_store,
)
from data_catalog.world.model import DAY
from data_catalog.world.spectral import PointSynthesis
from data_catalog.world.store import OUT_LAT, OUT_LON

A = WorldParams().radius
OMEGA = WorldParams().omega


@pytest.fixture(autouse=True)
def _one_thread():
    """The solver's tensors are tiny: extra torch threads only spin on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def world() -> xr.Dataset:
    """The shipped world, loaded into memory (about 0.5 GB float32)."""
    return xr.open_zarr(world_store()).load()


def _wmean(x: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the last two axes (lat, lon)."""
    w = area_weights(lat)
    return (x.mean(axis=-1) * w).mean(axis=-1)


def _energy(ds: xr.Dataset) -> np.ndarray:
    """Domain-mean energy per unit mass (m2 s-2): kinetic ``|u|^2 / 2`` plus available potential
    ``(z - <z>)^2 / (2 Phi_bar)`` of the shallow layer, area weighted."""
    lat = ds.latitude.values
    u, v, z = (ds[k].values.astype(np.float64) for k in ("u500", "v500", "z500"))
    ke = _wmean(0.5 * (u**2 + v**2), lat)
    zm = _wmean(z, lat)[:, None, None]
    pe = _wmean((z - zm) ** 2, lat) / (2 * WorldParams().phi_bar)
    return ke + pe


# ---------------------------------------------------------------------------------------------- store


def test_store_contract(world: xr.Dataset) -> None:
    """WB2 layout: ascending pole-less 64x32 grid, 6-hourly 2000..2009, float32, CF attributes."""
    np.testing.assert_allclose(world.latitude.values, -87.1875 + 5.625 * np.arange(32))
    np.testing.assert_allclose(world.longitude.values, 5.625 * np.arange(64))
    t = world.time.values
    assert t[0] == np.datetime64("2000-01-01T00") and t[-1] == np.datetime64("2009-12-31T18")
    assert np.all(np.diff(t) == np.timedelta64(6, "h"))
    assert len(t) == 14612  # Gregorian calendar: 3653 days x 4
    for name, attrs in VARIABLES.items():
        da = world[name]
        assert da.dims == ("time", "latitude", "longitude") and da.dtype == np.float32
        assert {k: da.attrs[k] for k in attrs} == attrs
        assert np.isfinite(da.values).all()
    assert world.orography.dims == ("latitude", "longitude")
    assert world.attrs["split_train"] == "/".join(SPLITS["train"])
    spec = json.loads(world.attrs["world_spec"])
    assert spec["seed"] == world.attrs["seed"] and spec["years"] == 10
    z = world.z500.values
    assert 4.0e4 < z.min() and z.max() < 6.5e4 and abs(z.mean() - 5.3e4) < 2e3


def test_world_store_reuses_cache(world: xr.Dataset) -> None:
    p1, p2 = world_store(), world_store(build=False)
    assert p1 == p2 and p1.name.startswith("sphere-swe-v2-") and p1.suffix == ".zarr"


def test_world_store_without_build_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WXENS_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="not built"):
        world_store(build=False)


# ---------------------------------------------------------------------------------------------- physics


def test_stationarity_first_vs_last_year(world: xr.Dataset) -> None:
    """Annual-mean domain energy of the first (2000) and last (2009) year agree within 5%."""
    e0 = _energy(world.sel(time="2000")).mean()
    e9 = _energy(world.sel(time="2009")).mean()
    assert abs(e9 - e0) / e0 < 0.05, (e0, e9)


def test_seasonal_cycle(world: xr.Dataset) -> None:
    """Each hemisphere's jet and eddy activity are stronger in its own winter."""
    lat = world.latitude.values
    month = world.time.dt.month
    djf, jja = world.sel(time=month.isin([12, 1, 2])), world.sel(time=month.isin([6, 7, 8]))

    def jet(ds: xr.Dataset, north: bool) -> float:
        um = ds.u500.mean(("time", "longitude")).values
        band = (lat > 20) & (lat < 70) if north else (lat < -20) & (lat > -70)
        return float(um[band].max())

    def eddy(ds: xr.Dataset, north: bool) -> float:
        v = ds.v500.values
        band = (lat > 30) & (lat < 60) if north else (lat < -30) & (lat > -60)
        return float(v[:, band].var())

    assert jet(djf, True) > jet(jja, True) + 3.0
    assert jet(jja, False) > jet(djf, False) + 3.0
    assert eddy(djf, True) > 1.1 * eddy(jja, True)
    assert eddy(jja, False) > 1.1 * eddy(djf, False)


def _ddlat(f: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """d f / d phi (per radian) along axis -2 by 4th-order centred differences (2nd order at edges)."""
    h = math.radians(lat_deg[1] - lat_deg[0])
    d = np.gradient(f, h, axis=-2, edge_order=2)
    d[..., 2:-2, :] = (f[..., :-4, :] - 8 * f[..., 1:-3, :] + 8 * f[..., 3:-1, :] - f[..., 4:, :]) / (12 * h)
    return d


def _ddlon(f: np.ndarray) -> np.ndarray:
    """d f / d lambda (per radian) exactly, by FFT (fields are band limited to m <= 21 < 32)."""
    n = f.shape[-1]
    fh = np.fft.rfft(f, axis=-1)
    return np.fft.irfft(1j * np.arange(fh.shape[-1]) * fh, n=n, axis=-1)


def _ddlat_spectral(f: np.ndarray, lat_deg: np.ndarray, lmax: int) -> np.ndarray:
    """Exact d f / d phi of a field band limited to degree < ``lmax``: for each zonal wavenumber m,
    least-squares fit of scipy's harmonics ``Y_l^m`` (l < lmax) on the grid latitudes, then the
    basis differentiated by a 1e-5 rad central difference (error ~1e-10)."""
    theta = np.deg2rad(90.0 - lat_deg)
    nlon = f.shape[-1]
    fm = np.fft.rfft(f, axis=-1)
    out = np.zeros_like(fm)
    h = 1e-5
    for m in range(min(lmax, fm.shape[-1])):
        ls = np.arange(m, lmax)
        basis = np.stack([sps.sph_harm_y(n, m, theta, 0.0).real for n in ls], axis=1)
        dbasis = np.stack(
            [
                (sps.sph_harm_y(n, m, theta - h, 0.0).real - sps.sph_harm_y(n, m, theta + h, 0.0).real)
                / (2 * h)
                for n in ls
            ],
            axis=1,
        )  # d/dphi = -d/dtheta
        c, *_ = np.linalg.lstsq(basis, fm[..., m].T, rcond=None)
        out[..., m] = (dbasis @ c).T
    return np.fft.irfft(out, n=nlon, axis=-1)


def test_vorticity_is_curl_of_winds(world: xr.Dataset) -> None:
    """Stored vo500 equals the curl of stored (u500, v500),
    ``zeta = (d v / d lambda - d (u cos phi) / d phi) / (a cos phi)``, computed spectrally from the
    winds alone (``u cos phi`` is band limited to degree 22 for a T21 flow), to 1e-4 relative RMS;
    4th-order finite differences agree to 5% (their truncation error at T21 on a 5.6 deg grid)."""
    ds = world.isel(time=slice(0, None, 997))
    lat = ds.latitude.values
    cos = np.cos(np.deg2rad(lat))[:, None]
    u, v, vo = (ds[k].values.astype(np.float64) for k in ("u500", "v500", "vo500"))
    curl = (_ddlon(v) - _ddlat_spectral(u * cos, lat, WorldParams().lmax + 1)) / (A * cos)
    err = np.sqrt(np.mean((curl - vo) ** 2)) / np.sqrt(np.mean(vo**2))
    assert err < 1e-4, err
    curl_fd = (_ddlon(v) - _ddlat(u * cos, lat)) / (A * cos)
    band = np.abs(lat) < 80
    err_fd = np.sqrt(np.mean((curl_fd - vo)[:, band] ** 2)) / np.sqrt(np.mean(vo[:, band] ** 2))
    assert err_fd < 0.05, err_fd


def test_geostrophic_balance(world: xr.Dataset) -> None:
    """Mid-latitude winds are close to geostrophic: ``u_g = -(1/(f a)) dz/dphi``,
    ``v_g = (1/(f a cos phi)) dz/dlambda``; correlation above 0.9 for 30 < |lat| < 70."""
    ds = world.isel(time=slice(0, None, 401))
    lat = ds.latitude.values
    z = ds.z500.values.astype(np.float64)
    f = 2 * OMEGA * np.sin(np.deg2rad(lat))[:, None]
    ug = -_ddlat(z, lat) / (f * A)
    vg = _ddlon(z) / (f * A * np.cos(np.deg2rad(lat))[:, None])
    band = (np.abs(lat) > 30) & (np.abs(lat) < 70)
    for wind, geo in ((ds.u500.values, ug), (ds.v500.values, vg)):
        r = np.corrcoef(wind[:, band].ravel(), geo[:, band].ravel())[0, 1]
        assert r > 0.9, r


def _sph_fit(field: np.ndarray, lat_deg: np.ndarray, lmax: int) -> tuple[np.ndarray, float]:
    """Least-squares fit of orthonormal spherical harmonics (scipy, degree < lmax) to grid fields
    ``(T, nlat, nlon)``; returns the angular power ``P_l = sum_m |c_lm|^2`` (both signs of m) and
    the relative residual of the fit."""
    theta = np.deg2rad(90.0 - lat_deg)
    nlon = field.shape[-1]
    fm = np.fft.rfft(field, axis=-1) / nlon  # zonal Fourier coefficients of exp(i m lambda)
    power = np.zeros(lmax)
    resid = 0.0
    for m in range(lmax):
        ls = np.arange(m, lmax)
        basis = np.stack([sps.sph_harm_y(n, m, theta, 0.0).real for n in ls], axis=1)  # (nlat, nl)
        c, *_ = np.linalg.lstsq(basis, fm[..., m].T, rcond=None)  # (nl, T)
        resid += float(np.sum(np.abs(basis @ c - fm[..., m].T) ** 2))
        power[ls] += (1.0 if m == 0 else 2.0) * np.mean(np.abs(c) ** 2, axis=1)
    resid += float(np.sum(np.abs(fm[..., lmax:]) ** 2))
    return power, math.sqrt(resid / float(np.sum(np.abs(fm) ** 2)))


def test_angular_power_spectrum_decays(world: xr.Dataset) -> None:
    """The stored fields are exactly band limited (T21: scipy harmonics fit them to float32 rounding)
    and their angular power falls with degree: synoptic scales dominate the smallest ones."""
    ds = world.isel(time=slice(0, None, 503))
    lat = ds.latitude.values
    lmax = WorldParams().lmax
    spectra = {}
    for name in ("z500", "vo500"):
        x = ds[name].values.astype(np.float64)
        x = x - x.mean(axis=0)  # anomalies about the sample mean
        p, resid = _sph_fit(x, lat, lmax)
        assert resid < 1e-5, (name, resid)
        spectra[name] = p
    z, vo = spectra["z500"], spectra["vo500"]
    assert z[16:].mean() < 2e-3 * z[2:8].mean()  # v2: 1.35e-3, v1: 2e-4
    assert vo[16:].mean() < 0.2 * vo[4:10].mean()
    bands = [z[lo : lo + 4].mean() for lo in (4, 8, 12, 16)]  # band means (even/odd l alternate)
    assert all(a > b for a, b in zip(bands, bands[1:], strict=False)), bands


def test_flow_is_slaved_to_a_chaotic_driver(world: xr.Dataset) -> None:
    """The flow forgets its own perturbations; the Lorenz-96 driver's grow to the climatological distance.

    Three runs from one state on the attractor: the truth, a twin with flow *and* driver 1e-6 apart
    (relative), and a twin with only the flow 1e-3 apart. The climatological distance is the RMS z500
    difference between states a year apart in the store. v2 world: driver e-folding about 9 days
    (Lorenz-96 time unit 16 days), saturation within 150 days; flow perturbations decay (e-folding
    about 6 days), so every bit of unpredictability comes from the hidden driver.
    """
    p = WorldParams()
    model = ShallowWaterModel(p)
    gen = torch.Generator().manual_seed(11)
    t0 = np.zeros(3) + 300 * DAY
    s, x = model.initial_state(t0[:1], gen)
    s, x = s.repeat(3, 1, 1, 1), x.repeat(3, 1, 1)
    s, x, t = model.run(s, x, t0, round(40 * DAY / p.dt))  # onto the attractor
    s[1], x[1] = s[1] * (1 + 1e-6), x[1] * (1 + 1e-6)
    s[2] = s[2] * (1 + 1e-3)
    synth = PointSynthesis(OUT_LAT, len(OUT_LON), p.lmax, p.radius)
    w = area_weights(OUT_LAT)[:, None]
    both: list[float] = []
    flow: list[float] = []

    def daily(k: int, st: torch.Tensor, tt: np.ndarray) -> None:
        z = synth.scalar(st[:, 2]).numpy()
        both.append(float(np.sqrt(np.mean(w * (z[0] - z[1]) ** 2))))
        flow.append(float(np.sqrt(np.mean(w * (z[0] - z[2]) ** 2))))

    model.run(s, x, t, round(150 * DAY / p.dt), callback=daily, every=round(DAY / p.dt))
    z = world.z500.values
    i = np.arange(0, len(z) - 1461, 97)
    clim = float(np.sqrt(np.mean(w * (z[i].astype(np.float64) - z[i + 1461]) ** 2)))
    assert flow[30] < 0.05 * flow[0], flow  # the flow alone is not chaotic
    assert both[100] > 1e3 * both[10], both  # exponential growth from the driver
    assert max(both) > 0.7 * clim, (max(both), clim)


def test_mass_and_energy_conserved_without_forcing() -> None:
    """Unforced, inviscid equations from an unstable jet: total mass (mean ``phi'``) is conserved to
    1e-12 relative over 5 days; total energy ``int h |u|^2/2 + g h^2/2`` to 1e-4 (time-stepping error)."""
    p = WorldParams(jet_speed=60.0, jet_speed_amp=0.0, jet_width=6.0)
    model = ShallowWaterModel(p, forced=False)
    gen = torch.Generator().manual_seed(3)
    s, x = model.initial_state(np.zeros(1), gen)
    s[:, 0] += model.tr.to_spec(1e-6 * torch.randn(1, p.nlat, p.nlon, generator=gen, dtype=torch.float64))
    tr = model.tr

    def totals(st: torch.Tensor) -> tuple[float, float]:
        g = tr.to_grid(st)
        phi = g[:, 2] + p.phi_bar
        uv = tr.uv(st[:, :2])
        energy = tr.mean(phi * 0.5 * (uv**2).sum(1) + 0.5 * phi**2)
        return float(tr.mean(phi)), float(energy)

    m0, e0 = totals(s)
    s, x, t = model.run(s, x, np.zeros(1), round(5 * DAY / p.dt))
    m1, e1 = totals(s)
    assert abs(m1 - m0) / m0 < 1e-12
    assert abs(e1 - e0) / e0 < 1e-4


def test_steady_zonal_flow_is_steady() -> None:
    """Williamson et al. (1992) case 2: solid-body flow in geostrophic balance stays put (5 days)."""
    p = WorldParams()
    model = ShallowWaterModel(p, forced=False)
    tr = model.tr
    lat = tr.lat[:, None]
    u0 = 38.0
    u = u0 * torch.cos(lat) * torch.ones(1, p.nlon, dtype=torch.float64)
    phi = -(p.radius * p.omega * u0 + u0**2 / 2) * torch.sin(lat) ** 2 * torch.ones_like(u)
    phi = phi - tr.mean(phi)
    s = torch.zeros(1, 3, p.lmax, p.lmax, dtype=torch.complex128)
    s[:, 0] = tr.vrtdiv(torch.stack([u, torch.zeros_like(u)]))[0]
    s[:, 2] = tr.to_spec(phi)
    x = torch.zeros(1, 2, p.l96_k, dtype=torch.float64)
    s1, _, _ = model.run(s.clone(), x, np.zeros(1), round(5 * DAY / p.dt))
    assert float((s1 - s).abs().max() / s.abs().max()) < 1e-7


def test_spectral_transforms_match_analytic_fields() -> None:
    """Winds of a known streamfunction at the WB2 points: u = U cos(phi) has vorticity 2 U sin(phi)/a."""
    p = WorldParams()
    model = ShallowWaterModel(p, forced=False)
    tr = model.tr
    lat = tr.lat[:, None]
    u = 10.0 * torch.cos(lat) * torch.ones(1, p.nlon, dtype=torch.float64)
    vd = tr.vrtdiv(torch.stack([u, torch.zeros_like(u)]))
    vo = tr.to_grid(vd[0])
    np.testing.assert_allclose(
        vo.numpy(), (20.0 * torch.sin(lat) / p.radius).expand_as(vo).numpy(), atol=1e-12
    )
    synth = PointSynthesis(OUT_LAT, len(OUT_LON), p.lmax, p.radius)
    uv = synth.uv(vd[None])[0].numpy()
    ref = 10.0 * np.cos(np.deg2rad(OUT_LAT))[:, None]
    np.testing.assert_allclose(uv[0], np.broadcast_to(ref, uv[0].shape), atol=1e-9)
    np.testing.assert_allclose(uv[1], 0.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------- determinism


TINY = {"years": 2, "days": 1.0, "spinup_days": 2.0}


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = xr.open_zarr(build_world(tmp_path / "a.zarr", seed=5, **TINY)).load()
    b = xr.open_zarr(build_world(tmp_path / "b.zarr", seed=5, **TINY)).load()
    c = xr.open_zarr(build_world(tmp_path / "c.zarr", seed=6, **TINY)).load()
    for name in VARIABLES:
        assert np.array_equal(a[name].values, b[name].values)
        assert not np.array_equal(a[name].values, c[name].values)
    assert a.attrs == b.attrs
    assert len(a.time) == 8 and str(a.time.values[4])[:10] == "2001-01-01"
    with pytest.raises(UserError, match="already exists"):
        build_world(tmp_path / "a.zarr", seed=5, **TINY)


def _worker(cache: str, queue: mp.Queue) -> None:
    os.environ["WXENS_CACHE"] = cache
    queue.put(str(cached_world(**TINY)))


def test_concurrent_builders_produce_one_store(tmp_path: Path) -> None:
    """Two processes asking for the same world on an empty cache get one valid store."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        assert proc.exitcode == 0
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    store = Path(paths.pop())
    assert [q.name for q in tmp_path.iterdir() if q.suffix == ".zarr"] == [store.name]
    assert not list(tmp_path.glob(".*tmp-*"))
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 8 and np.isfinite(ds.z500.values).all()
