"""Stochastic inputs of the SFNO wrapper (the noise:K:L feature)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_noise_inputs_are_band_limited_unit_rms_and_per_generator() -> None:
    """``draw_noise``: member i depends only on generator i (any batch), unit RMS, no power at degrees
    >= L; a model without a noise feature refuses noise; the noise feature must come last."""
    from evaluation.spectra import power_spectrum
    from models.wrapper import build_model

    lat = np.linspace(87.1875, -87.1875, 32)
    lon = np.arange(64) * 5.625
    arch = {"in_chans": 4 + 2 + 5, "out_chans": 4, "embed_dim": 8, "num_layers": 1, "lmax": 8, "mmax": 8}
    stats = {"mean": np.zeros(4), "std": np.ones(4), "tendency_std": np.ones(4)}
    m = build_model(arch, ["a", "b", "c", "d"], lat, lon, stats, ("doy", "noise:5:10"))
    assert (m.noise_channels, m.noise_lmax) == (5, 10)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    z = m.draw_noise(gens)
    assert z.shape == (3, 5, 32, 64)
    alone = m.draw_noise([torch.Generator().manual_seed(2)])
    torch.testing.assert_close(alone[0], z[1], rtol=0, atol=1e-6)
    big = m.draw_noise([torch.Generator().manual_seed(s) for s in range(40)])
    assert abs(float(big.square().mean().sqrt()) - 1.0) < 0.05
    p = power_spectrum(big.double().numpy(), lat).power.mean(axis=(0, 1))
    assert p[10:].sum() < 1e-10 * p.sum() and p[:10].min() > 0
    with pytest.raises(ValueError, match="no noise"):
        build_model({**arch, "in_chans": 6}, ["a", "b", "c", "d"], lat, lon, stats, ("doy",)).step(
            torch.zeros(1, 4, 32, 64), np.datetime64("2000-01-01"), torch.zeros(1, 5, 32, 64)
        )
    with pytest.raises(ValueError, match="last"):
        build_model({**arch, "in_chans": 12}, ["a", "b", "c", "d"], lat, lon, stats, ("noise:5:10", "sinlat"))


def test_rollout_draws_noise_only_with_a_generator() -> None:
    """``models.skill.rollout``: a stochastic model runs its noise-free path without a generator (the
    skill file) and fresh noise per step with one (reproducible from the generator's seed)."""
    from models.skill import rollout
    from models.wrapper import build_model

    lat = np.linspace(87.1875, -87.1875, 32)
    lon = np.arange(64) * 5.625
    arch = {"in_chans": 3 + 2, "out_chans": 3, "embed_dim": 8, "num_layers": 1, "lmax": 8, "mmax": 8}
    stats = {"mean": np.zeros(3), "std": np.ones(3), "tendency_std": np.ones(3)}
    m = build_model(
        arch, ["a", "b", "c"], lat, lon, stats, ("noise:2:8",), generator=torch.Generator().manual_seed(1)
    )
    x0 = torch.randn((2, 3, 32, 64), generator=torch.Generator().manual_seed(2))
    t0 = np.array(["2000-01-01T00", "2000-06-01T00"], dtype="datetime64[s]")
    quiet = rollout(m, x0, t0, 3)
    zero = m.step(m.step(m.step(x0, None, torch.zeros(2, 2, 32, 64)), None), None)
    torch.testing.assert_close(quiet[-1], zero, rtol=0, atol=0)
    a = rollout(m, x0, t0, 3, noise_generator=torch.Generator().manual_seed(7))
    b = rollout(m, x0, t0, 3, noise_generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - quiet).abs().max() > 1e-3
