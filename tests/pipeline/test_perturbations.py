"""Perturbations: hemispheric rescaling and bred vectors against a naive loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_catalog.grid import area_weights
from pipeline.perturbations import (
    BredVectors,
    GaussianNoise,
    HemisphericNorm,
    Perturbation,
    SphericalNoise,
    SphericalRandomField,
)
from pipeline.seeds import derive_seed, generator
from pipeline.testing import CHANNELS, STDS, ToyModel, grid, synthetic_analysis

torch.set_num_threads(1)


def naive_rescale(d: np.ndarray, lat: np.ndarray, target: np.ndarray, b: float) -> np.ndarray:
    """Loop reference of the hemispheric-centred rescaling (per pair, per channel, per row)."""
    w = area_weights(lat)
    out = np.zeros_like(d, dtype=np.float64)
    for p in range(d.shape[0]):
        for c in range(d.shape[1]):
            num_n = den_n = num_s = den_s = 0.0
            for j, phi in enumerate(lat):
                if phi >= b:
                    num_n += w[j] * np.mean(d[p, c, j] ** 2)
                    den_n += w[j]
                if phi <= -b:
                    num_s += w[j] * np.mean(d[p, c, j] ** 2)
                    den_s += w[j]
            nn_, ns = np.sqrt(num_n / den_n), np.sqrt(num_s / den_s)
            sn = target[c] / nn_ if nn_ > 0 else 0.0
            ss = target[c] / ns if ns > 0 else 0.0
            for j, phi in enumerate(lat):
                if phi >= b:
                    f = sn
                elif phi <= -b:
                    f = ss
                else:  # linear in latitude from ss at -b to sn at +b
                    f = ss + (sn - ss) * (phi + b) / (2 * b)
                out[p, c, j] = d[p, c, j] * f
    return out


def test_rescale_matches_loop_reference_and_hits_target():
    lat, lon = grid(32, 64)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 4, 32, 64)) * np.array([50.0, 2.0, 0.0, 1e-5])[None, :, None, None]
    target = np.array([10.0, 1.0, 3.0, 2e-6])
    hn = HemisphericNorm(lat, boundary=25.0)
    got = hn.rescale(torch.tensor(d, dtype=torch.float32), torch.tensor(target)).numpy()
    ref = naive_rescale(d, lat, target, 25.0)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-12)
    nn_, ns = hn.norms(torch.tensor(got))
    np.testing.assert_allclose(
        nn_.numpy()[:, [0, 1, 3]], np.broadcast_to(target[[0, 1, 3]], (3, 3)), rtol=1e-5
    )
    np.testing.assert_allclose(
        ns.numpy()[:, [0, 1, 3]], np.broadcast_to(target[[0, 1, 3]], (3, 3)), rtol=1e-5
    )
    assert np.all(got[:, 2] == 0.0)  # constant (zero) channel -> zero perturbation, no NaN


def test_rescale_independent_of_latitude_order():
    lat, _ = grid(32, 64)
    rng = np.random.default_rng(1)
    d = torch.tensor(rng.normal(size=(2, 2, 32, 64)), dtype=torch.float32)
    t = torch.tensor([1.0, 2.0])
    a = HemisphericNorm(lat, 20.0).rescale(d, t)
    b = HemisphericNorm(lat[::-1].copy(), 20.0).rescale(d.flip(-2), t).flip(-2)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_random_field_spectrum_and_length_scale():
    from evaluation.spectra import power_spectrum

    lat, lon = grid(32, 64)
    g = torch.Generator().manual_seed(3)
    short = SphericalRandomField(lat, lon, 500.0).sample(64, g).numpy()
    long = SphericalRandomField(lat, lon, 2000.0).sample(64, g).numpy()
    ps = power_spectrum(short, lat).power.mean(0)
    pl = power_spectrum(long, lat).power.mean(0)
    frac_s = ps[8:].sum() / ps.sum()
    frac_l = pl[8:].sum() / pl.sum()
    assert frac_l < 0.05 < frac_s  # a longer length scale concentrates power at low degrees
    assert abs(short.mean()) < 0.05 * short.std()  # no l = 0 mode


def test_seed_derivation_is_documented_hash():
    t = np.datetime64("2008-03-01T06", "ns")
    secs = int(np.datetime64("2008-03-01T06", "s").astype(np.int64)) + 2**40
    want = int(np.random.SeedSequence([7, 0, secs, 2, 5]).generate_state(1, np.uint64)[0])
    assert derive_seed(7, t, 2, 5) == want
    a = torch.randn(4, generator=generator(7, t, 2, 5))
    b = torch.randn(4, generator=generator(7, t, 2, 5))
    c = torch.randn(4, generator=generator(7, t, 2, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)


class CountingModel(ToyModel):
    calls: list[int]

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def step(self, x, time=None):
        self.calls.append(x.shape[0])
        return super().step(x, time)


def naive_bred(model, analyses, times, seeds_fields, amp, seed_channel, boundary):
    """Loop reference: one pair at a time, the control recomputed per pair (earth2studio-style)."""
    lat = model.latitude
    out = []
    for p in range(seeds_fields.shape[0]):
        d = np.zeros(analyses.shape[1:])
        d[seed_channel] = seeds_fields[p]
        d = naive_rescale(d[None], lat, amp, boundary)[0]
        for k in range(analyses.shape[0] - 1):
            a = analyses[k]
            c = model.step(torch.tensor(a[None]), times[k]).double().numpy()[0]
            x = model.step(torch.tensor((a + d)[None], dtype=torch.float32), times[k]).double().numpy()[0]
            d = naive_rescale((x - c)[None], lat, amp, boundary)[0]
        out.append(d)
    return np.stack(out)


def test_bred_vectors_match_reference_control_once_and_pair_independent():
    ds = synthetic_analysis(periods=6)
    model = CountingModel(seed=3)
    a = torch.tensor(np.stack([ds[c].values for c in CHANNELS], 1)[:4])
    times = list(ds.time.values[:4])
    amp = torch.tensor([0.35 * 0.5 * STDS[c] for c in CHANNELS])
    bv = BredVectors(amp, model.latitude, model.longitude, seed_channel=0, cycles=3, boundary=20.0)
    assert isinstance(bv, Perturbation)
    gens = [torch.Generator().manual_seed(derive_seed(1, times[-1], 0, p)) for p in range(5)]
    d = bv(model, a, times, gens)
    assert d.shape == (5, 4, 32, 64)
    # control advanced once per cycle for the whole batch: calls alternate batch 1 and batch 5
    assert model.calls == [1, 5] * 3
    # per-channel hemispheric norms equal alpha x RMSE48 on every channel (breeding spreads z500 seed)
    nn_, ns = bv.norm.norms(d)
    torch.testing.assert_close(nn_, amp.expand(5, 4), rtol=1e-4, atol=0)
    torch.testing.assert_close(ns, amp.expand(5, 4), rtol=1e-4, atol=0)
    # against the loop reference fed with the same seed fields
    seeds_fields = np.stack(
        [
            bv.grf.sample(1, torch.Generator().manual_seed(derive_seed(1, times[-1], 0, p)))[0]
            .float()
            .numpy()
            for p in range(5)
        ]
    )
    ref = naive_bred(ToyModel(seed=3), a.double().numpy(), times, seeds_fields, amp.double().numpy(), 0, 20.0)
    rel = np.abs(d.double().numpy() - ref).max(axis=(2, 3)) / amp.double().numpy()
    assert rel.max() < 1e-3
    # pair 3 bred alone equals pair 3 bred among five (vectorised, per-pair streams)
    alone = bv(model, a, times, [torch.Generator().manual_seed(derive_seed(1, times[-1], 0, 3))])
    torch.testing.assert_close(alone[0], d[3], rtol=0, atol=0)


def test_bred_vectors_several_seed_channels():
    """Independent seed fields on several channels (e.g. every geopotential level) match the loop
    reference; a one-element list is the single seed channel, draw for draw."""
    ds = synthetic_analysis(periods=6)
    model = ToyModel(seed=3)
    a = torch.tensor(np.stack([ds[c].values for c in CHANNELS], 1)[:4])
    times = list(ds.time.values[:4])
    amp = torch.tensor([0.35 * 0.5 * STDS[c] for c in CHANNELS])

    def gens():
        return [torch.Generator().manual_seed(derive_seed(1, times[-1], 0, p)) for p in range(3)]

    bv = BredVectors(amp, model.latitude, model.longitude, seed_channel=[0, 2], cycles=2)
    d = bv(model, a[1:], times[1:], gens())
    seeds_fields = np.stack([bv.grf.sample(2, g).float().numpy() for g in gens()])  # (P, 2, lat, lon)
    ref = naive_bred(
        ToyModel(seed=3), a[1:].double().numpy(), times[1:], seeds_fields, amp.double().numpy(), [0, 2], 20.0
    )
    rel = np.abs(d.double().numpy() - ref).max(axis=(2, 3)) / amp.double().numpy()
    assert rel.max() < 1e-3
    one = BredVectors(amp, model.latitude, model.longitude, seed_channel=0, cycles=2)(
        model, a[1:], times[1:], gens()
    )
    listed = BredVectors(amp, model.latitude, model.longitude, seed_channel=[0], cycles=2)
    torch.testing.assert_close(listed(model, a[1:], times[1:], gens()), one, rtol=0, atol=0)
    assert (d - one).abs().max() > 0.1 * float(amp.min())  # the second seed changed the vectors
    with pytest.raises(ValueError, match="distinct seed channels"):
        BredVectors(amp, model.latitude, model.longitude, seed_channel=[0, 0])


def test_bred_constant_channel_and_clipping():
    chans = ("z500", "tcwv", "const")
    ds = synthetic_analysis(periods=5, channels=chans)
    model = ToyModel(seed=1, channels=chans)
    a = torch.tensor(np.stack([ds[c].values for c in chans], 1)[:4])
    amp = torch.tensor([50.0, 30.0, 0.0])
    bv = BredVectors(
        amp,
        model.latitude,
        model.longitude,
        0,
        3,
        boundary=30.0,
        nonnegative=torch.tensor([False, True, False]),
    )
    d = bv(model, a, list(ds.time.values[:4]), [torch.Generator().manual_seed(i) for i in range(3)])
    assert torch.isfinite(d).all()
    assert torch.all(d[:, 2] == 0)
    from pipeline.rollout import build_initial

    x = build_initial(a[-1], d, torch.tensor([False, True, False]))
    assert float(x[:, 1].min()) >= 0.0
    assert float((a[-1, 1][None] - d[:, 1]).min()) < 0.0  # clipping was needed


@pytest.mark.parametrize("cls", [GaussianNoise, SphericalNoise])
def test_noise_baselines_amplitude(cls):
    lat, lon = grid(32, 64)
    amp = torch.tensor([100.0, 2.0, 1e-5])
    m = cls(amp) if cls is GaussianNoise else cls(amp, lat, lon, 500.0)
    a = torch.zeros((1, 3, 32, 64))
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    d = m(None, a, [np.datetime64("2008-01-01")], gens).double()
    w = torch.tensor(area_weights(lat))
    rms = torch.sqrt(((d**2).mean(-1) * w).mean(-1))  # (P, C)
    tol = 1e-6 if cls is SphericalNoise else 0.05
    torch.testing.assert_close(rms, amp.double().expand(8, 3), rtol=tol, atol=0)
    solo = m(None, a, [np.datetime64("2008-01-01")], [torch.Generator().manual_seed(5)])
    torch.testing.assert_close(solo[0].double(), d[5], rtol=0, atol=0)


def test_bred_vectors_with_a_noise_fraction():
    """``noise_fraction`` f: the result is R(sqrt(1-f) d + sqrt(f) R(n)) with d the pure bred vector of
    the same generators and n the field drawn after the seed (computed here by hand); norms exact;
    f = 0 is bitwise the pure bred vector; f = 1 has no bred part; pairs stay independent."""
    ds = synthetic_analysis(periods=6)
    model = ToyModel(seed=3)
    a = torch.tensor(np.stack([ds[c].values for c in CHANNELS], 1)[:4])
    times = list(ds.time.values[:4])
    amp = torch.tensor([0.35 * 0.5 * STDS[c] for c in CHANNELS])

    def gens(pairs=range(3)):
        return [torch.Generator().manual_seed(derive_seed(5, times[-1], 1, p)) for p in pairs]

    def bred(f):
        return BredVectors(amp, model.latitude, model.longitude, 0, 3, noise_fraction=f)

    pure = bred(0.0)(model, a, times, gens())
    mixed = bred(0.3)(model, a, times, gens())
    noise = []
    for g in gens():
        bred(0.0).grf.sample(1, g)  # the seed comes first from each pair's stream
        noise.append(bred(0.0).grf.sample(4, g).float())
    hn = HemisphericNorm(model.latitude, 20.0)
    want = hn.rescale(0.7**0.5 * pure + 0.3**0.5 * hn.rescale(torch.stack(noise), amp), amp)
    torch.testing.assert_close(mixed, want, rtol=1e-5, atol=1e-6 * float(amp.max()))
    nn_, ns = hn.norms(mixed)
    torch.testing.assert_close(nn_, amp.expand(3, 4), rtol=1e-4, atol=0)
    torch.testing.assert_close(ns, amp.expand(3, 4), rtol=1e-4, atol=0)
    corr = float((mixed * pure).sum() / (mixed.norm() * pure.norm()))
    assert 0.6 < corr < 0.95  # mostly the bred vector, not all of it
    only_noise = bred(1.0)(model, a, times, gens())
    torch.testing.assert_close(
        only_noise, hn.rescale(torch.stack(noise), amp), rtol=1e-5, atol=1e-6 * float(amp.max())
    )
    assert torch.equal(bred(0.0)(model, a, times, gens()), pure)
    torch.testing.assert_close(bred(0.3)(model, a, times, gens([2]))[0], mixed[2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise_fraction"):
        bred(1.5)
