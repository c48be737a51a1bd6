"""Spectra against Parseval's identity, exact recovery of synthesised band-limited fields, torch-harmonics
itself, latitude-order invariance and pole / pole-less / Gaussian grids, and the real 0.25 deg field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch_harmonics as th
from torch_harmonics.quadrature import precompute_latitudes

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from evaluation import spectra as S

POLES_33 = np.linspace(90.0, -90.0, 33)  # equiangular with poles (torch-harmonics "equiangular")
MID_32 = np.linspace(87.1875, -87.1875, 32)  # WeatherBench2 64x32: no poles
GAUSS_24 = 90.0 - np.rad2deg(precompute_latitudes(24, "legendre-gauss")[0].numpy())
GRIDS = {"equiangular": POLES_33, "midpoint": MID_32, "legendre-gauss": GAUSS_24}


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """The Legendre recursions are many small ops: on a shared 2-core box, one thread avoids
    oversubscription stalls (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_coeffs(lmax: int, gen: torch.Generator, batch: tuple[int, ...] = ()) -> torch.Tensor:
    """Random coefficients a[l, m] (m <= l, a_l0 real) of a real band-limited field."""
    shape = (*batch, lmax, lmax)
    c = torch.complex(
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.randn(shape, generator=gen, dtype=torch.float64),
    )
    c = torch.tril(c)
    c[..., 0] = c[..., 0].real + 0j
    return c


def exact_power(c: torch.Tensor) -> np.ndarray:
    p = c[..., 0].abs() ** 2 + 2 * (c[..., 1:].abs() ** 2).sum(-1)
    return (p / (4 * math.pi)).numpy()


def test_fejer_weights_exact_to_degree_n_minus_1() -> None:
    theta, w = S.fejer1_weights(32)
    x = np.cos(theta)
    for d in range(32):
        exact = (1 - (-1) ** (d + 1)) / (d + 1)
        assert abs(np.sum(w * x**d) - exact) < 1e-13, d
    # Chebyshev T_32 is not integrated exactly: the rule is no better than claimed
    assert abs(np.sum(w * np.cos(32 * theta)) - (-2 / (32**2 - 1))) > 1e-4


@pytest.mark.parametrize("kind", list(GRIDS))
def test_band_limited_recovery_and_parseval(kind: str) -> None:
    lat = GRIDS[kind]
    grid = S.detect_grid(lat, np.arange(64) * 360 / 64)
    assert grid.kind == kind
    gen = torch.Generator().manual_seed(7)
    c = random_coeffs(grid.exact_lmax, gen, batch=(2, 3))  # e.g. (member, channel)
    f = S.synthesize(c, lat, 64).numpy()
    ref = exact_power(c)
    for method in ("auto", "legendre"):
        spec = S.power_spectrum(f, lat, np.arange(64) * 5.625, method=method)
        assert spec.lmax == grid.exact_lmax and spec.mmax == grid.exact_lmax
        np.testing.assert_allclose(spec.power, ref, rtol=1e-10, atol=1e-12 * ref.max())
        # Parseval: sum_l P(l) == area mean of f^2 (the grid's quadrature is exact for f^2)
        np.testing.assert_allclose(spec.total, S.quadrature_mean(f**2, lat), rtol=1e-12)
    # the cell-area weights of data_catalog are a 2nd-order rule: close, not exact
    ms_area = (f**2 * area_weights(lat)[:, None]).mean(axis=(-2, -1))
    np.testing.assert_allclose(spec.total, ms_area, rtol=2e-2)


def test_matches_torch_harmonics_transform_pair() -> None:
    # synthesis with torch-harmonics' own inverse transform, analysis by ours (equiangular with poles)
    gen = torch.Generator().manual_seed(11)
    c = random_coeffs(17, gen)
    isht = th.InverseRealSHT(33, 64, lmax=17, mmax=17, grid="equiangular").to(torch.float64)
    f = isht(c)
    np.testing.assert_allclose(S.synthesize(c, POLES_33, 64).numpy(), f.numpy(), atol=1e-12)
    a, _, transform = S.spherical_harmonic_coefficients(f.numpy(), POLES_33, method="legendre")
    np.testing.assert_allclose(a.numpy(), c.numpy(), atol=1e-12)
    spec = S.power_spectrum(f, POLES_33)
    assert spec.transform == "torch_harmonics.RealSHT"
    assert isinstance(spec.power, torch.Tensor)
    np.testing.assert_allclose(spec.power.numpy(), exact_power(c), rtol=1e-10)


@pytest.mark.parametrize("kind", list(GRIDS))
def test_latitude_order_and_axis_invariance(kind: str) -> None:
    lat = GRIDS[kind]
    rng = np.random.default_rng(3)
    f = rng.normal(size=(4, lat.size, 64)).astype(np.float32)
    s1 = S.power_spectrum(f, lat)
    s2 = S.power_spectrum(f[:, ::-1], lat[::-1])
    assert s1.power.dtype == np.float32
    np.testing.assert_allclose(s2.power, s1.power, rtol=1e-6)
    # grid axes elsewhere; longitude origin and direction do not change the power
    s3 = S.power_spectrum(np.moveaxis(f, 0, -1), lat, lat_axis=0, lon_axis=1)
    np.testing.assert_allclose(s3.power, s1.power, rtol=1e-6)
    s4 = S.power_spectrum(np.roll(f[..., ::-1], 5, axis=-1), lat)
    np.testing.assert_allclose(s4.power, s1.power, rtol=1e-5)


def test_single_harmonic_power_at_its_degree() -> None:
    # Y_3^2-like pattern: cos^2 sin ... simplest analytic check: f = cos(theta) is P_1 with mean square 1/3
    for lat in GRIDS.values():
        colat = np.deg2rad(90 - lat)
        f = np.repeat(np.cos(colat)[:, None], 64, axis=1)
        p = S.power_spectrum(f, lat).power
        assert p[1] == pytest.approx(1 / 3, rel=1e-12)
        assert np.sum(np.delete(p, 1)) < 1e-13


def test_grid_errors() -> None:
    with pytest.raises(UserError):
        S.detect_grid(np.linspace(80, -80, 30))  # regional / unknown
    with pytest.raises(UserError):
        S.power_spectrum(np.zeros((33, 64)), POLES_33, np.arange(60) * 6.0)
    with pytest.raises(UserError):
        S.power_spectrum(np.zeros((33, 64)), POLES_33, np.linspace(0, 90, 64))
    with pytest.raises(UserError):
        S.power_spectrum(np.zeros((32, 64)), MID_32, method="realsht")  # no such torch-harmonics grid


@pytest.mark.realdata
def test_real_quarter_degree_field_parseval(realdata) -> None:  # noqa: ANN001
    import xarray as xr

    ds = xr.open_zarr(realdata / "era5_t2m_0p25deg.zarr")
    t = ds["2m_temperature"].isel(time=0).values.astype(np.float64)
    lat, lon = ds.latitude.values, ds.longitude.values
    assert t.shape == (721, 1440)
    a, grid, _ = S.spherical_harmonic_coefficients(t, lat, lon)
    assert grid.kind == "equiangular" and a.shape[-2:] == (361, 361)
    total = float(S.power_from_coefficients(a).sum())
    # The discrete transform is an orthogonal projection onto degrees < 361: the Parseval deficit is
    # exactly the quadrature mean square of the residual beyond the truncation (to rounding).
    resid = t - S.synthesize(a, lat, 1440).numpy()
    q_f = float(S.quadrature_mean(t**2, lat))
    q_r = float(S.quadrature_mean(resid**2, lat))
    assert abs(total + q_r - q_f) < 1e-12 * q_f
    # ... and that residual energy is small: well under 0.1 % of the field's variance
    var = q_f - float(S.quadrature_mean(t, lat)) ** 2
    assert 0 < q_r < 1e-3 * var
    # the cell-area mean agrees with the quadrature mean to its O(dlat^2) error
    assert abs((t**2 * area_weights(lat)[:, None]).mean() - q_f) < 1e-5 * q_f
    # flipping the latitude order gives the same coefficients
    a2, _, _ = S.spherical_harmonic_coefficients(t[::-1], lat[::-1])
    assert float((a2 - a).abs().max()) < 1e-9


def test_ensemble_spectra_ratios() -> None:
    gen = torch.Generator().manual_seed(5)
    lat = MID_32
    truth_c = random_coeffs(16, gen)
    noise_c = random_coeffs(16, gen, batch=(8,))
    truth = S.synthesize(truth_c, lat, 64)
    members = truth + 0.3 * S.synthesize(noise_c, lat, 64)
    es = S.ensemble_spectra(members, truth, lat)
    ref_member = exact_power(truth_c + 0.3 * noise_c)
    np.testing.assert_allclose(es.member.numpy(), ref_member, rtol=1e-9)
    np.testing.assert_allclose(
        es.ensemble_mean.numpy(), exact_power(truth_c + 0.3 * noise_c.mean(0)), rtol=1e-9
    )
    np.testing.assert_allclose(es.member_ratio.numpy(), ref_member / exact_power(truth_c), rtol=1e-9)
    lo, hi = es.member_ratio_range
    assert torch.all(lo <= hi)


def test_zonal_spectrum_parseval_and_peak() -> None:
    lat = MID_32
    lon = np.deg2rad(np.arange(64) * 5.625)
    f = 3.0 * np.cos(6 * lon)[None, :] + 1.5 + np.zeros((32, 1))
    zs = S.zonal_spectrum(f, lat, (30, 60))
    # energy 1.5^2 at k=0 and 3^2/2 at k=6
    assert zs.power[0] == pytest.approx(2.25) and zs.power[6] == pytest.approx(4.5)
    assert np.sum(zs.power) == pytest.approx(np.mean(f**2))
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 32, 64))
    zs = S.zonal_spectrum(g, lat, (-90, 90))
    w = area_weights(lat)
    np.testing.assert_allclose(zs.power.sum(-1), (np.mean(g**2, axis=-1) * w).sum(-1) / w.sum())
    assert np.all(zs.latitudes_used == lat)
    assert np.isinf(zs.wavelength_m[0]) and zs.wavelength_m[1] > zs.wavelength_m[2]


def test_cached_transform_per_device_is_never_moved() -> None:
    """The cached RealSHT is one module per device: a call for another device (here the meta device)
    builds its own instead of moving the one a CPU caller (another thread) may be using."""
    lat = np.linspace(87.1875, -87.1875, 32)
    x = torch.randn(3, 32, 64, dtype=torch.float64)
    ref = S.power_spectrum(x, lat).power
    cpu = S._realsht(32, 64, 32, 32, "equiangular", "cpu")
    meta = S._realsht(32, 64, 32, 32, "equiangular", "meta")
    assert meta is not cpu and all(b.device.type == "cpu" for b in cpu.buffers())
    assert all(b.device.type == "meta" for b in meta.buffers())
    torch.testing.assert_close(S.power_spectrum(x, lat).power, ref, rtol=0, atol=0)
