"""Prototype of proposal 1 in docs/benchmarks.md: the same SFNO forward pass (same weights, same maths)
with the spherical harmonic transforms kept in one real layout ``(m, ., batch*channels*2)``.

The forward transform is ``rfft`` -> one copy into ``(m, k, 2N)`` -> one ``bmm`` with the Legendre
weights ``(m, l, k)``; the degree-wise spectral convolution acts in that layout; the inverse is one
``bmm`` with ``(m, k, l)`` -> one copy back to ``(N, k, m)`` -> ``irfft(n=nlon)`` (which zero-pads
internally), instead of torch-harmonics' two einsums, four ``.contiguous()`` copies, ``torch.complex``
and explicit padding per transform. Used by figure 1 only to measure what the proposal would gain; the
model code itself is not changed.
"""

from __future__ import annotations

from typing import Any

import torch


def _forward_sht(sht: Any, x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` real -> ``(M, L, B*C*2)`` real (re, im interleaved last)."""
    b, c, h, w = x.shape
    m = sht.mmax
    xf = torch.fft.rfft(x, dim=-1, norm="forward")[..., :m]  # (B, C, H, M) complex
    xp = torch.view_as_real(xf).permute(3, 2, 0, 1, 4).reshape(m, h, b * c * 2)
    return torch.bmm(sht.weights.to(x.dtype), xp)


def _inverse_sht(isht: Any, coeffs: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """``(M, L, B*C*2)`` -> ``(B, C, H, W)`` real."""
    m = isht.mmax
    g = torch.bmm(isht.pct.to(coeffs.dtype), coeffs)  # (M, K, B*C*2)
    k = g.shape[1]
    g = g.view(m, k, b, c, 2)
    g[0, ..., 1] = 0.0  # Hermitian DC bin (as torch_harmonics.fft.irfft)
    gc = torch.view_as_complex(g.permute(2, 3, 1, 0, 4).contiguous())  # (B, C, K, M)
    return torch.fft.irfft(gc, n=isht.nlon, dim=-1, norm="forward")


def _spectral(spec: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, _, _ = x.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        cf = _forward_sht(spec.sht, x)  # (M, L, B*C*2)
        residual = _inverse_sht(spec.isht, cf, b, c) if spec.resample else x
        m, lmax = cf.shape[:2]
        cc = torch.view_as_complex(cf.view(m, lmax, b, c, 2))  # (M, L, B, I)
        o = spec.weight.shape[0]
        y = torch.einsum("mlbi,oil->mlbo", cc, spec.weight)  # (M, L, B, O)
        yr = torch.view_as_real(y.contiguous()).reshape(m, lmax, b * o * 2)
        out = _inverse_sht(spec.isht, yr, b, o)
    return out, residual


def lean_forward(net: Any, x: torch.Tensor) -> torch.Tensor:
    """:meth:`models.sfno.SFNO.forward` with the lean transforms (see the module docstring)."""
    x = net.encoder(x)
    for blk in net.blocks:
        y, residual = _spectral(blk.spec, x)
        h = blk.act(y + blk.skip(residual))
        x = blk.fc2(blk.act(blk.fc1(h))) + residual
    return net.decoder(x)


class LeanNet(torch.nn.Module):
    """Wraps an :class:`models.sfno.SFNO` so that its forward pass uses :func:`lean_forward`."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.inner = net
        self.config = net.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lean_forward(self.inner, x)
