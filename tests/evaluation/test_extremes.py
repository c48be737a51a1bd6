"""EFI/SOT against earthkit-meteo and analytic cases; climatological percentiles against numpy;
HENS Part II statistics against the perfect-ensemble laws and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from earthkit.meteo import extreme as ek

from data_catalog.errors import UserError
from evaluation import extremes as E


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(424242)


def _case(rng: np.random.Generator, n: int = 400, m: int = 51) -> tuple[np.ndarray, np.ndarray]:
    clim = np.sort(rng.normal(size=(101, n)) * 2 + 1, axis=0)
    ens = rng.normal(size=(m, n)) * rng.uniform(0.5, 2.0, size=n) + rng.normal(size=n) * 2
    return clim, ens


def test_efi_matches_earthkit_random(rng: np.random.Generator) -> None:
    clim, ens = _case(rng)
    got = E.efi(clim, ens)
    np.testing.assert_allclose(got, ek.efi(clim, ens), atol=1e-12)
    assert got.min() > -1 and got.max() < 1 and got.std() > 0.2
    # torch, float32, members on another axis
    t = E.efi(torch.from_numpy(clim), torch.from_numpy(ens.T.astype(np.float32)), member_axis=1)
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), got, atol=1e-6)


def test_efi_precipitation_eps_matches_earthkit(rng: np.random.Generator) -> None:
    clim = np.sort(np.maximum(rng.gamma(0.5, 2.0, size=(101, 300)) - 0.5, 0.0), axis=0)
    ens = np.maximum(rng.gamma(0.5, 3.0, size=(51, 300)) - 0.5, 0.0)
    got = E.efi(clim, ens, eps=0.1)
    np.testing.assert_allclose(got, ek.efi(clim, ens, eps=0.1), atol=1e-12)
    # without eps: earthkit's default eps=-0.1 is the plain EFI
    np.testing.assert_allclose(E.efi(clim, ens), ek.efi(clim, ens), atol=1e-12)


def test_efi_analytic_limits_and_numerical_integral(rng: np.random.Generator) -> None:
    clim = np.sort(rng.normal(size=(101, 3)), axis=0)
    above = clim[-1] + 1 + rng.uniform(size=(10, 3))
    below = clim[0] - 1 - rng.uniform(size=(10, 3))
    np.testing.assert_allclose(E.efi(clim, above), 1.0, atol=1e-12)
    np.testing.assert_allclose(E.efi(clim, below), -1.0, atol=1e-12)
    # forecast distributed like the climate -> EFI ~ 0
    same = np.sort(rng.normal(size=(2000, 3)), axis=0)
    assert np.all(np.abs(E.efi(clim, same)) < 0.08)
    # direct numerical integral of (2/pi) int (p - F(p)) / sqrt(p(1-p)) dp with F piecewise linear
    clim1, ens1 = _case(rng, n=1)
    p_nodes = np.linspace(0, 1, 101)
    f_nodes = (ens1[:, 0][None, :] <= clim1[:, 0][:, None]).mean(axis=1)
    u = np.linspace(0, np.pi / 2, 400_001)[1:-1]  # p = sin^2(u): dp / sqrt(p(1-p)) = 2 du
    p = np.sin(u) ** 2
    integrand = (p - np.interp(p, p_nodes, f_nodes)) * 2
    num = 2 / np.pi * np.sum(integrand) * (u[1] - u[0])
    assert E.efi(clim1, ens1)[0] == pytest.approx(num, abs=1e-5)


def test_efi_nan_and_shape_errors(rng: np.random.Generator) -> None:
    clim, ens = _case(rng, n=5)
    ens[3, 2] = np.nan
    clim[10, 4] = np.nan
    got = E.efi(clim, ens)
    ref = ek.efi(clim, ens)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.isnan(got[2]) and np.isnan(got[4]) and not np.isnan(got[0])
    with pytest.raises(UserError):
        E.efi(clim[:, :3], ens)


@pytest.mark.parametrize("perc", [90, 10, 75])
def test_sot_matches_earthkit(rng: np.random.Generator, perc: int) -> None:
    clim, ens = _case(rng)
    got = E.sot(clim, ens, perc)
    ref = ek.sot(clim, ens, perc)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.all(np.abs(got[~np.isnan(got)]) <= 10)
    np.testing.assert_allclose(E.sot(torch.from_numpy(clim), torch.from_numpy(ens), perc).numpy(), got)


def test_sot_definition_and_clipping() -> None:
    levels = np.linspace(0, 1, 101)
    clim = np.repeat(levels[:, None] * 100.0, 2, axis=1)  # Q_c(p) = 100 p: Q_c(90) = 90, Q_c(99) = 99
    ens = np.stack([np.linspace(0, 200, 11), np.linspace(0, 1000, 11)], axis=1)  # Q_f(90) = 180, 900
    got = E.sot(clim, ens, 90)
    assert got[0] == pytest.approx((180 - 99) / (99 - 90))
    assert got[1] == 10.0  # clipped
    flat = np.zeros((101, 1))
    assert np.isnan(E.sot(flat, ens[:, :1], 90)[0])  # zero climate tail width
    with pytest.raises(UserError):
        E.sot(clim, ens, 50)


def test_sot_precipitation_eps_matches_earthkit(rng: np.random.Generator) -> None:
    clim = np.sort(np.maximum(rng.gamma(0.6, 2.0, size=(101, 300)) - 0.3, 0.0), axis=0)
    ens = np.maximum(rng.gamma(0.6, 3.0, size=(51, 300)) - 0.3, 0.0)
    got = E.sot(clim, ens, 90, eps=0.1)
    ref = ek.sot(clim, ens, 90, eps=0.1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, atol=1e-12)


@pytest.mark.realdata
def test_efi_sot_real_ensemble_vs_earthkit(realdata) -> None:  # noqa: ANN001
    # realistic data: the 51-member ENS z500 forecast against a "climate" built from the pooled members
    # of the 3x3 neighbourhood (a stand-in model climate with realistic spatial structure)
    da = xr.open_zarr(realdata / "ifs_ens_z500_europe_1deg.zarr")["geopotential"]
    f = da.isel(time=0, prediction_timedelta=0, level=0).transpose("number", ...).values.astype(np.float64)
    f = f[:, ::3, ::3]
    pooled = np.concatenate([np.roll(np.roll(f, i, 1), j, 2) for i in (-4, 0, 4) for j in (-4, 0, 4)])
    clim = np.percentile(pooled, np.arange(101), axis=0)
    ens = f
    np.testing.assert_allclose(E.efi(clim, ens), ek.efi(clim, ens), atol=1e-12)
    got = E.sot(clim, ens, 90)
    np.testing.assert_allclose(got, ek.sot(clim, ens, 90), atol=1e-12)
    assert np.nanstd(E.efi(clim, ens)) > 0.05


def test_climatological_percentiles_dayofyear_window(rng: np.random.Generator) -> None:
    time = pd.date_range("2001-01-01", "2004-12-31T12", freq="12h")
    vals = (
        rng.normal(size=(len(time), 2, 3))
        + np.sin(2 * np.pi * time.day_of_year.values / 365.25)[:, None, None]
    )
    da = xr.DataArray(vals, dims=("time", "latitude", "longitude"), coords={"time": time})
    clim = E.climatological_percentiles(da, q=(0.95, 0.99), window=5, dayofyear=[1, 180, 366])
    assert clim.dims == ("hour", "dayofyear", "quantile", "latitude", "longitude")
    # brute force for day 1 at 12 h: days 362..366 and 1..6 of every year
    doy = time.day_of_year.values
    dist = np.minimum(np.abs(doy - 1), 366 - np.abs(doy - 1))
    sel = (time.hour.values == 12) & (dist <= 5)
    ref = np.quantile(vals[sel], [0.95, 0.99], axis=0)
    np.testing.assert_allclose(clim.sel(hour=12, dayofyear=1).values, ref)
    # selection by valid time
    vt = xr.DataArray(pd.to_datetime(["2010-01-01T12", "2010-06-29T00"]), dims="valid")
    picked = E.select_climatology(clim, vt)
    np.testing.assert_allclose(picked.isel(valid=0).values, ref)
    thr = picked.sel(quantile=0.95)
    ex = E.exceedance(np.zeros((2, 2, 3)) + 5.0, thr.values)
    assert np.all(ex == 1.0)
    with pytest.raises(UserError):
        E.climatological_percentiles(da, by="month")


def test_outliers_and_standardized_deviation_perfect_ensemble(rng: np.random.Generator) -> None:
    m, n = 10, 100_000
    f = rng.normal(size=(m, n))
    y = rng.normal(size=n)
    frac = E.outlier_fraction(f, y)
    se = np.sqrt(2 / (m + 1) * (1 - 2 / (m + 1)) / n)
    assert abs(frac - 2 / (m + 1)) < 5 * se
    hi, lo = E.standardized_extreme_deviation(f)
    np.testing.assert_allclose(hi, (f.max(0) - f.mean(0)) / f.std(0, ddof=1))
    np.testing.assert_allclose(lo, (f.mean(0) - f.min(0)) / f.std(0, ddof=1))
    # the mean of the largest of 10 standard normals is 1.5388 (expected maximum), scaled by the sample std
    assert 1.4 < hi.mean() < 1.6 and 1.4 < lo.mean() < 1.6
    ff = f[:, :50].copy()
    ff[2, 0] = np.nan
    best = E.best_member_error(ff, y[:50])
    np.testing.assert_allclose(best, np.nanmin(np.abs(ff - y[:50]), axis=0))
    t = E.best_member_error(torch.from_numpy(ff), torch.from_numpy(y[:50]))
    np.testing.assert_allclose(t.numpy(), best)


def test_members_to_bracket_exact_and_resampled(rng: np.random.Generator) -> None:
    m, n = 12, 20_000
    f = rng.normal(size=(m, n))
    y = rng.normal(size=n)
    exact = E.members_to_bracket(f, y, target=0.8)
    # perfect ensemble: a k-subset brackets the truth with probability (k - 1) / (k + 1)
    k = exact.n_members
    np.testing.assert_allclose(exact.coverage, (k - 1) / (k + 1), atol=0.015)
    assert exact.members_needed == 9  # first k with (k-1)/(k+1) >= 0.8
    res = E.members_to_bracket(f, y, target=0.8, rng=np.random.default_rng(0), n_resamples=32)
    np.testing.assert_allclose(res.coverage, exact.coverage, atol=0.02)
    # brute force over all subsets on a few points
    fs, ys = f[:6, :40], y[:40]
    ex = E.members_to_bracket(fs, ys)
    for kk in (2, 3):
        cov = np.mean(
            [
                ((fs[list(c)].min(0) <= ys) & (fs[list(c)].max(0) >= ys)).mean()
                for c in itertools.combinations(range(6), kk)
            ]
        )
        assert ex.coverage[kk - 1] == pytest.approx(cov, rel=1e-12)
    assert E.members_to_bracket(fs, ys, target=0.999).members_needed is None
