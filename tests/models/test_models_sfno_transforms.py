"""The SFNO's own transform layout (``models.sfno.grid_to_spectral`` / ``spectral_to_grid``, real
degree-wise kernel, CPU chunking) against the unmodified torch-harmonics module path.

The reference forward below is the network as first written: ``RealSHT.forward`` /
``InverseRealSHT.forward`` of torch-harmonics (rfft, einsums, ``torch.complex``, its ``irfft`` that zeroes
the DC/Nyquist imaginary parts), a complex ``einsum`` for the kernel and ``einsum`` 1x1 convolutions.
"""

from __future__ import annotations

import pytest
import torch
from models_helpers import midpoint_latitudes

from models import load_checkpoint, pretrained_dir
from models import sfno as sfno_mod
from models.sfno import SFNO, SFNOConfig, grid_to_spectral, spectral_to_grid
from models.sht import GridInverseRealSHT, GridRealSHT


def _pointwise(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = torch.einsum("oi,bihw->bohw", conv.weight, x)
    return y if conv.bias is None else y + conv.bias[None, :, None, None]


def reference_forward(net: SFNO, x: torch.Tensor) -> torch.Tensor:
    gelu = torch.nn.functional.gelu
    x = _pointwise(net.encoder, x)
    for blk in net.blocks:
        spec = blk.spec
        coeffs = spec.sht(x)  # torch-harmonics RealSHT.forward (B, C, L, M)
        residual = spec.isht(coeffs) if spec.resample else x
        y = spec.isht(torch.einsum("bilm,oil->bolm", coeffs, spec.weight))
        h = gelu(y + _pointwise(blk.skip, residual))
        x = _pointwise(blk.fc2, gelu(_pointwise(blk.fc1, h))) + residual
    return _pointwise(net.decoder, x)


def _net(nlat: int = 16, nlon: int = 32, seed: int = 0, **kw) -> SFNO:
    cfg = SFNOConfig(in_chans=5, out_chans=3, embed_dim=8, num_layers=3, **kw)
    return SFNO(cfg, midpoint_latitudes(nlat), nlon, generator=torch.Generator().manual_seed(seed)).eval()


def _x(b: int, c: int, nlat: int, nlon: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, nlat, nlon, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("nlat", "nlon", "lmax", "kw"),
    [(16, 32, 8, {}), (16, 32, 8, {"scale_factor": 2.0}), (18, 32, 17, {})],
)
def test_transforms_equal_torch_harmonics_modules(nlat: int, nlon: int, lmax: int, kw: dict) -> None:
    """Data-grid and internal Gauss transforms; (18, 32, 17) includes the Nyquist mode (m = 16)."""
    net = _net(nlat, nlon, lmax=lmax, mmax=lmax, **kw)
    for mod in (net.blocks[0].spec, net.blocks[1].spec):
        x = _x(3, 4, mod.sht.nlat, mod.sht.nlon)
        ref = mod.sht(x)  # (B, C, L, M) complex
        ours = grid_to_spectral(mod.sht, x)  # (M, L, B*C*2)
        m, lm = ours.shape[:2]
        ours_c = torch.view_as_complex(ours.view(m, lm, 3, 4, 2)).permute(2, 3, 1, 0)
        torch.testing.assert_close(ours_c, ref, rtol=1e-5, atol=1e-6)
        # random coefficients, with non-zero imaginary parts at m = 0 (and Nyquist): both drop them
        c = torch.randn(3, 4, mod.isht.lmax, mod.isht.mmax, dtype=torch.complex64)
        c_real = torch.view_as_real(c.permute(3, 2, 0, 1)).reshape(mod.isht.mmax, mod.isht.lmax, -1)
        torch.testing.assert_close(
            spectral_to_grid(mod.isht, c_real.contiguous(), 3, 4), mod.isht(c), rtol=1e-5, atol=1e-5
        )


def test_cpu_irfft_ignores_dc_and_nyquist_imaginary_parts() -> None:
    """What the transforms rely on (and zero explicitly anyway): the c2r FFT reads only the real parts
    of the m = 0 and Nyquist modes, as ``torch_harmonics.fft.irfft`` makes it."""
    c = torch.randn(17, 5, dtype=torch.complex64, generator=torch.Generator().manual_seed(4))
    c0 = c.clone()
    c0[0].imag = 0
    c0[16].imag = 0
    torch.testing.assert_close(torch.fft.irfft(c, n=32, dim=0), torch.fft.irfft(c0, n=32, dim=0))


@pytest.mark.parametrize("kw", [{"lmax": 8, "mmax": 8}, {"lmax": 8, "mmax": 8, "scale_factor": 2.0}])
def test_network_equals_reference_forward(kw: dict) -> None:
    net = _net(**kw)
    x = _x(5, 5, 16, 32)
    with torch.inference_mode():
        ref = reference_forward(net, x)
        ours = net(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_cpu_chunks_equal_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(lmax=8, mmax=8)
    x = _x(5, 5, 16, 32)
    with torch.inference_mode():
        whole = net(x)
        monkeypatch.setattr(sfno_mod, "CPU_CHUNK_BYTES", 2 * 8 * 16 * 32 * 4)
        assert net.cpu_chunk() == 2
        chunked = net(x)  # chunks of 2, 2, 1
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_gradients_equal_reference() -> None:
    """Training differentiates the same function: parameter gradients of a loss agree."""
    net = _net(lmax=8, mmax=8).train()
    x = _x(2, 5, 16, 32)
    target = _x(2, 3, 16, 32, seed=7)
    grads = []
    for fwd in (net, lambda v: reference_forward(net, v)):
        net.zero_grad()
        ((fwd(x) - target) ** 2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6, msg=k)


def test_shipped_checkpoint_loads_and_matches_reference() -> None:
    """Weight names and layout unchanged: a shipped checkpoint loads and its network gives the
    reference forward's output."""
    try:
        path = sorted(pretrained_dir("sphere-swe").glob("seed-*"))[0]
    except Exception:  # pragma: no cover - not shipped
        pytest.skip("no shipped checkpoint")
    model = load_checkpoint(path)
    net = model.net.eval()
    nlat, nlon = model.latitude.size, model.longitude.size
    x = _x(3, net.config.in_chans, nlat, nlon)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), reference_forward(net, x), rtol=1e-5, atol=1e-5)


def test_grid_transforms_are_the_sht_module_tables() -> None:
    """A band-limited field survives forward + inverse through the helper functions (data grid)."""
    lat = midpoint_latitudes(16)
    fwd, inv = GridRealSHT(lat, 32, 8, 8), GridInverseRealSHT(lat, 32, 8, 8)
    c = torch.zeros(1, 2, 8, 8, dtype=torch.complex64)
    c[0, 0, 3, 2] = 1.0 + 0.5j
    c[0, 1, 5, 0] = 2.0
    field = inv(c)
    back = grid_to_spectral(fwd, field)
    roundtrip = spectral_to_grid(inv, back, 1, 2)
    torch.testing.assert_close(roundtrip, field, rtol=1e-5, atol=1e-5)


def test_tables_are_float32_library_tables_without_subnormals() -> None:
    """The internal Gauss tables are torch-harmonics' own (float64) tables in float32, with the entries
    below the smallest normal float32 set to zero (lmax 48 on 64 Gauss rows has some)."""
    from torch_harmonics import InverseRealSHT, RealSHT

    net = _net(64, 128, lmax=48, mmax=48)
    spec = net.blocks[1].spec
    ref_w = RealSHT(64, 128, lmax=48, mmax=48, grid="legendre-gauss").weights.float()
    ref_p = InverseRealSHT(64, 128, lmax=48, mmax=48, grid="legendre-gauss").pct.float()
    tiny = torch.finfo(torch.float32).tiny
    for ours, ref in ((spec.sht.weights, ref_w), (spec.isht.pct, ref_p)):
        assert ours.dtype == torch.float32
        assert int(((ref != 0) & (ref.abs() < tiny)).sum()) > 0
        assert int(((ours != 0) & (ours.abs() < tiny)).sum()) == 0
        torch.testing.assert_close(ours, ref, rtol=0, atol=tiny)


def test_inference_kernel_cache_follows_weight_updates() -> None:
    """The cached real kernel is reused in inference and rebuilt after an in-place weight update."""
    from torch_harmonics import InverseRealSHT, RealSHT

    from models.sfno import SpectralConv

    sht, isht = RealSHT(16, 32, lmax=8, mmax=8), InverseRealSHT(16, 32, lmax=8, mmax=8)
    conv = SpectralConv(sht, isht, 3, 2).eval()
    conv.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        k1 = conv.kernel()
        assert conv.kernel() is k1  # cached
        y1 = conv(x)[0]
    with torch.no_grad():
        conv.weight.mul_(2.0)  # in place, as load_state_dict
    with torch.inference_mode():
        k2 = conv.kernel()
        y2 = conv(x)[0]
    assert k2 is not k1 and torch.allclose(k2, 2 * k1)
    torch.testing.assert_close(y2, 2 * y1, rtol=1e-5, atol=1e-6)  # linear in the kernel
    with torch.enable_grad():  # training never uses the cache: gradients reach the weights
        conv.train()
        conv(x)[0].sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
