"""SFNO network and its ForecastModel wrapper."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch
from models_helpers import midpoint_latitudes

from models.base import ForecastModel
from models.sfno import SFNO, SFNOConfig
from models.wrapper import SFNOForecastModel, day_of_year_fraction

LAT = midpoint_latitudes(16)
LON = np.arange(32) * 360.0 / 32
CH = ("z500", "u500", "v500", "vo500")


def _net(seed: int = 0, in_chans: int = 6, **kw) -> SFNO:
    cfg = SFNOConfig(in_chans=in_chans, out_chans=4, embed_dim=8, num_layers=3, lmax=8, mmax=8, **kw)
    return SFNO(cfg, LAT, 32, generator=torch.Generator().manual_seed(seed))


def _model(seed: int = 0) -> SFNOForecastModel:
    mean = np.array([5.5e4, 10.0, 0.0, 0.0])
    std = np.array([800.0, 8.0, 6.0, 2e-5])
    return SFNOForecastModel(_net(seed), CH, LAT, LON, mean, std, std / 10, features=("doy",))


def _state(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([800.0, 8.0, 6.0, 2e-5]).view(1, 4, 1, 1)
    base = torch.tensor([5.5e4, 10.0, 0.0, 0.0]).view(1, 4, 1, 1)
    return base + scale * torch.randn(n, 4, 16, 32, generator=g)


def test_init_is_a_function_of_the_seed() -> None:
    a, b, c = _net(0), _net(0), _net(1)
    for (ka, va), vb, _vc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), ka
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_batched_members_equal_one_by_one() -> None:
    net = _net().eval()
    x = torch.randn(5, 6, 16, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_equivariant_to_zonal_shifts() -> None:
    """Every layer commutes with a rotation about the polar axis by whole grid cells (the spectral kernel
    depends on l only, the rest is pointwise), so shifting the input shifts the output."""
    net = _net().eval()
    x = torch.randn(2, 6, 16, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        y = net(x)
        y_shift = net(torch.roll(x, 5, dims=-1))
    torch.testing.assert_close(y_shift, torch.roll(y, 5, dims=-1), rtol=1e-4, atol=1e-4)


def test_internal_downsampling_and_truncation_checks() -> None:
    net = _net(scale_factor=2)
    assert net(torch.zeros(1, 6, 16, 32)).shape == (1, 4, 16, 32)
    with pytest.raises(ValueError, match="lmax"):
        SFNO(SFNOConfig(in_chans=6, out_chans=4, lmax=12, mmax=12, scale_factor=2), LAT, 32)


def test_wrapper_is_a_forecast_model_with_residual_prediction() -> None:
    m = _model()
    assert isinstance(m, ForecastModel)
    assert m.time_step == dt.timedelta(hours=6)
    x = _state(3)
    t = np.datetime64("2001-03-01T06")
    # silence the network except for the decoder bias: x_next = x + b * tendency_std exactly
    with torch.no_grad():
        m.net.decoder.weight.zero_()
        m.net.decoder.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    y = m.step(x, t)
    expected = x + torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1) * m._tstd
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6 * 5.5e4)
    assert not y.requires_grad


def test_physical_units_are_normalised_inside() -> None:
    """Adding a constant c * sigma to a channel equals feeding the normalised input shifted by c."""
    m = _model()
    x = _state(2)
    t = np.datetime64("2001-07-01")
    with torch.inference_mode():
        inp = torch.cat([(x - m._mean) / m._std, m.feature_fields(t, 2)], dim=1)
        expected = x + m.net(inp) * m._tstd
    torch.testing.assert_close(m.step(x, t), expected, rtol=1e-6, atol=1e-3)


def test_day_of_year_features() -> None:
    assert day_of_year_fraction(np.datetime64("2001-01-01T00")) == 0.0
    assert day_of_year_fraction(np.datetime64("2004-03-01T12")) == pytest.approx(31 + 29 + 0.5)
    m = _model()
    f = m.feature_fields([np.datetime64("2001-01-01"), np.datetime64("2001-07-02T12")], 2)
    assert f.shape == (2, 2, 16, 32)
    ang = 2 * np.pi * 182.5 / 365.25
    assert float(f[1, 0, 3, 7]) == pytest.approx(np.sin(ang), abs=1e-6)
    assert float(f[0, 1, 0, 0]) == pytest.approx(1.0)
    # the seasonal features change the forecast
    x = _state(1)
    assert not torch.equal(m.step(x, np.datetime64("2001-01-01")), m.step(x, np.datetime64("2001-07-01")))
    with pytest.raises(ValueError, match="valid time"):
        m.step(x, None)
    with pytest.raises(ValueError, match="expected"):
        m.step(torch.zeros(1, 3, 16, 32), np.datetime64("2001-01-01"))


def test_latitude_and_static_features() -> None:
    stat = np.random.default_rng(0).standard_normal((1, 16, 32)).astype(np.float32)
    net = _net(in_chans=8)
    std = np.ones(4)
    m = SFNOForecastModel(
        net,
        CH,
        LAT,
        LON,
        np.zeros(4),
        std,
        std,
        features=("doy", "sinlat", "static:orography"),
        static_fields=stat,
    )
    f = m.feature_fields(np.datetime64("2001-01-01"), 3)
    assert f.shape == (3, 4, 16, 32)
    np.testing.assert_allclose(f[2, 2, :, 5].numpy(), np.sin(np.deg2rad(LAT)), atol=1e-6)
    np.testing.assert_array_equal(f[1, 3].numpy(), stat[0])
    with pytest.raises(ValueError, match="static"):
        SFNOForecastModel(
            net, CH, LAT, LON, np.zeros(4), std, std, features=("doy", "sinlat", "static:orography")
        )
    with pytest.raises(ValueError, match="unknown"):
        SFNOForecastModel(net, CH, LAT, LON, np.zeros(4), std, std, features=("moon",))


def test_to_device_and_bf16_flag_are_harmless_on_cpu() -> None:
    m, m2 = _model(), _model()
    m2.autocast_bf16 = True
    x, t = _state(2), np.datetime64("2001-02-01")
    assert m2.to("cpu") is m2 and m2.device == torch.device("cpu")
    torch.testing.assert_close(m.step(x, t), m2.step(x, t))
