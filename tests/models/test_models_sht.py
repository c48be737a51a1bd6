"""The data-grid spherical harmonic transforms (models.sht) against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models_helpers import midpoint_latitudes
from torch_harmonics import InverseRealSHT, RealSHT

from data_catalog.grid import area_weights
from models.sht import GridInverseRealSHT, GridRealSHT, interpolatory_weights


def _random_coeffs(lmax: int, mmax: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, lmax, mmax, 2, generator=g)
    c = torch.view_as_complex(c)
    l_idx = torch.arange(lmax)[:, None]
    m_idx = torch.arange(mmax)[None, :]
    c = c * (l_idx >= m_idx)  # P_l^m vanishes for l < m
    c[..., 0] = c[..., 0].real  # m = 0 is real
    return c


def test_fejer_weights_for_midpoint_rows() -> None:
    """Interpolatory weights at midpoint nodes equal Fejer's first rule (closed form, Waldvogel 2006)."""
    n = 32
    theta = (np.arange(n) + 0.5) * np.pi / n
    j = np.arange(1, n // 2 + 1)
    fejer = 2.0 / n * (1 - 2 * np.sum(np.cos(2 * np.outer(theta, j)) / (4 * j**2 - 1), axis=1))
    w = interpolatory_weights(midpoint_latitudes(n))
    np.testing.assert_allclose(w, fejer, rtol=1e-10, atol=1e-13)
    assert w.sum() == pytest.approx(2.0)
    # exact for x^k, k < n: int_{-1}^{1} x^k dx = 2/(k+1) for even k, 0 for odd k
    x = np.cos(theta)
    for k in range(n):
        assert (w * x**k).sum() == pytest.approx(2.0 / (k + 1) if k % 2 == 0 else 0.0, abs=1e-12)
    # the cell-bounds area weights of data_catalog agree in the interior (they are the midpoint rule)
    aw = area_weights(midpoint_latitudes(n))
    np.testing.assert_allclose((w / w.mean())[4:-4], aw[4:-4], rtol=5e-3)


@pytest.mark.parametrize(("nlat", "nlon", "lmax"), [(32, 64, 16), (32, 64, 24), (32, 64, 32), (64, 128, 40)])
def test_band_limited_field_survives_round_trip(nlat: int, nlon: int, lmax: int) -> None:
    """A field band-limited below lmax, sampled at the WB2 midpoint rows, is recovered exactly."""
    lat = midpoint_latitudes(nlat)
    fwd, inv = GridRealSHT(lat, nlon, lmax, lmax), GridInverseRealSHT(lat, nlon, lmax, lmax)
    c = _random_coeffs(lmax, lmax)
    f = inv(c)
    c2 = fwd(f)
    assert torch.allclose(c2, c, atol=2e-5 * lmax)
    assert torch.allclose(inv(c2), f, atol=1e-4 * f.abs().max())


def test_synthesis_matches_direct_spherical_harmonic() -> None:
    """The inverse transform of a single coefficient is the orthonormal Y_2^1 evaluated analytically."""
    lat = midpoint_latitudes(32)
    inv = GridInverseRealSHT(lat, 64, 8, 8)
    c = torch.zeros(1, 8, 8, dtype=torch.complex64)
    c[0, 2, 1] = 1.0
    f = inv(c)[0].double().numpy()
    theta = np.deg2rad(90 - lat)[:, None]
    lam = np.deg2rad(np.arange(64) * 360 / 64)[None, :]
    # real field of coefficient c_21 = 1: 2 Re(Y_2^1) with Condon-Shortley phase, Y_2^1 = -sqrt(15/8pi) sin cos e^{i lam}
    expected = 2 * (-np.sqrt(15 / (8 * np.pi)) * np.sin(theta) * np.cos(theta) * np.cos(lam))
    np.testing.assert_allclose(f, expected, atol=1e-5)


def test_parseval_on_midpoint_grid() -> None:
    """sum_ij q_i f^2 (2 pi / nlon) = sum_l (|c_l0|^2 + 2 sum_{m>0} |c_lm|^2) for a band-limited field."""
    lat = midpoint_latitudes(32)
    inv = GridInverseRealSHT(lat, 64, 16, 16)
    c = _random_coeffs(16, 16, n=1, seed=3).to(torch.complex128)
    f = inv(c.to(torch.complex64))[0].double().numpy()
    q = interpolatory_weights(lat)
    integral = (q[:, None] * f**2).sum() * 2 * np.pi / 64
    ca = c[0].abs() ** 2
    spectral = float(ca[:, 0].sum() + 2 * ca[:, 1:].sum())
    assert integral == pytest.approx(spectral, rel=1e-5)


def test_pole_grid_matches_torch_harmonics_equiangular() -> None:
    """On a pole-including equiangular grid the weights reduce to torch-harmonics' Clenshaw-Curtis SHT."""
    lat = np.linspace(90, -90, 33)
    x = torch.randn(2, 33, 64, generator=torch.Generator().manual_seed(1))
    ours = GridRealSHT(lat, 64, 17, 17)(x)
    ref = RealSHT(33, 64, lmax=17, mmax=17, grid="equiangular")(x)
    assert torch.allclose(ours, ref, atol=1e-5)
    c = _random_coeffs(17, 17)
    assert torch.allclose(
        GridInverseRealSHT(lat, 64, 17, 17)(c),
        InverseRealSHT(33, 64, lmax=17, mmax=17, grid="equiangular")(c),
        atol=1e-5,
    )


def test_bad_truncation_and_order() -> None:
    lat = midpoint_latitudes(16)
    with pytest.raises(ValueError):
        GridRealSHT(lat, 32, 17, 17)
    with pytest.raises(ValueError, match="descending"):
        GridRealSHT(lat[::-1], 32, 8, 8)
