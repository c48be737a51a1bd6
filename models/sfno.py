"""A compact spherical Fourier neural operator (SFNO) built on torch-harmonics transforms.

Architecture (Bonev et al. 2023, "Spherical Fourier Neural Operators: Learning Stable Dynamics on the
Sphere", ICML): a pointwise encoder lifts the input channels to ``embed_dim``; ``num_layers`` blocks each
apply a spectral convolution ``v_l^m = sum_i K_l[o, i] u_l^m[i]`` (weights depend on degree ``l`` only, an
isotropic kernel, Driscoll & Healy 1994) plus a pointwise linear skip, a GELU, a pointwise MLP and an
identity skip; a pointwise decoder maps back to the output channels.

The first block transforms from the **data grid** (any latitude rows, see :mod:`models.sht`) and the last
one back to it; the blocks in between work on an internal Legendre-Gauss grid of
``ceil(nlat / scale_factor) x 2 ceil(nlat / scale_factor)`` points, where the transforms are exact for
``lmax <= nlat_internal``. ``lmax`` / ``mmax`` are explicit hyperparameters (torch-harmonics 0.9 changed
its default truncation).

Parameters are initialised from an explicit :class:`torch.Generator` (no global RNG).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn
from torch_harmonics import InverseRealSHT, RealSHT

from models.sht import GridInverseRealSHT, GridRealSHT


@dataclass(frozen=True)
class SFNOConfig:
    """Hyperparameters of :class:`SFNO` (all recorded in checkpoint metadata)."""

    in_chans: int
    out_chans: int
    embed_dim: int = 32
    num_layers: int = 4
    scale_factor: float = 1.0
    lmax: int = 32
    mmax: int = 32
    mlp_ratio: float = 2.0
    internal_grid: str = "legendre-gauss"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SFNOConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


#: target size of one ``embed_dim`` field of a CPU chunk (:meth:`SFNO.cpu_chunk`); measured best for
#: 64x32 (4 members) and 128x64 (1 member) with 1 thread on a 2 MiB-L2 core
CPU_CHUNK_BYTES = 2**20


def flush_subnormals_(table: torch.Tensor) -> torch.Tensor:
    """Set the subnormal entries of a float32 transform table to zero, in place.

    ``Pbar_l^m`` at high order near the poles underflows float32 (``sin^m theta``); the few hundred
    subnormal entries of a 128x64 table change no result beyond float32 rounding (``< 1.2e-38``) but make
    the Legendre matmuls ~1.5x slower on x86 (microcode assists for subnormal operands).
    """
    tiny = torch.finfo(table.dtype).tiny
    with torch.no_grad():
        table.masked_fill_((table != 0) & (table.abs() < tiny), 0.0)
    return table


def internal_shape(nlat: int, scale_factor: float) -> tuple[int, int]:
    """Internal Legendre-Gauss grid ``(h, 2h)`` with ``h = ceil(nlat / scale_factor)``."""
    if scale_factor < 1:
        raise ValueError(f"scale_factor must be >= 1, got {scale_factor}")
    h = math.ceil(nlat / scale_factor - 1e-9)
    return h, 2 * h


class ForwardSHT(Protocol):
    """What the SFNO reads from a forward transform (torch-harmonics ``RealSHT`` or ``GridRealSHT``)."""

    nlat: int
    nlon: int
    lmax: int
    mmax: int
    grid: str
    weights: torch.Tensor  # Legendre-quadrature table (m, l, k)


class InverseSHT(Protocol):
    """What the SFNO reads from an inverse transform (``InverseRealSHT`` or ``GridInverseRealSHT``)."""

    nlat: int
    nlon: int
    lmax: int
    mmax: int
    grid: str
    pct: torch.Tensor  # Legendre table (m, k, l)


class SpectralConv(nn.Module):
    """Degree-wise spectral convolution between two transforms (Driscoll-Healy form).

    ``y = ISHT_out( K_l . SHT_in(x) )`` with complex weights ``K`` of shape ``(out, in, lmax)``.
    Also returns ``x`` resampled to the output grid (``ISHT_out(SHT_in(x))``) when the grids differ,
    for the skip connections; transforms always run in float32.
    """

    def __init__(self, sht: ForwardSHT, isht: InverseSHT, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.sht = sht
        self.isht = isht
        self.resample = (sht.nlat, sht.nlon) != (isht.nlat, isht.nlon) or sht.grid != isht.grid
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, isht.lmax, dtype=torch.complex64))
        self._kernel_cache: tuple[tuple, torch.Tensor] | None = None

    def reset_parameters(self, generator: torch.Generator) -> None:
        scale = math.sqrt(1.0 / self.weight.shape[1])
        w = torch.randn(self.weight.shape, dtype=torch.complex64, generator=generator) * scale
        with torch.no_grad():
            self.weight.copy_(w)

    def real_kernel(self) -> torch.Tensor:
        """The complex kernel as real ``(lmax, 2 in, 2 out)`` matrices acting on interleaved
        ``(re, im)`` channel vectors: ``[re, im] @ [[Kr, Ki], [-Ki, Kr]]``."""
        kr = self.weight.real.permute(2, 1, 0)  # (l, in, out)
        ki = self.weight.imag.permute(2, 1, 0)
        blocks = torch.stack([torch.stack([kr, ki], dim=-1), torch.stack([-ki, kr], dim=-1)], dim=2)
        lmax, n_in, _, n_out, _ = blocks.shape  # (l, in, re/im in, out, re/im out)
        return blocks.reshape(lmax, 2 * n_in, 2 * n_out)

    def kernel(self) -> torch.Tensor:
        """:meth:`real_kernel`, cached for inference (no autograd, eval mode) until the weights change
        (in-place updates such as ``load_state_dict`` bump the parameter's version counter)."""
        if torch.is_grad_enabled() or self.training:
            return self.real_kernel()
        w = self.weight
        key = (w._version, w.data_ptr(), w.device, w.dtype)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            self._kernel_cache = (key, self.real_kernel())
        return self._kernel_cache[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = x.dtype
        b, c = x.shape[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            coeffs = grid_to_spectral(self.sht, x)  # (M, L, B*C*2)
            residual = spectral_to_grid(self.isht, coeffs, b, c) if self.resample else x
            m, lmax, _ = coeffs.shape
            # degree-wise kernel: one real (M*B, 2C) @ (2C, 2O) matmul per degree l
            cl = coeffs.view(m, lmax, b, 2 * c).transpose(0, 1).reshape(lmax, m * b, 2 * c)
            k = self.kernel()
            o = k.shape[-1] // 2
            y = torch.bmm(cl, k).view(lmax, m, b * 2 * o).transpose(0, 1)  # (M, L, B*O*2)
            out = spectral_to_grid(self.isht, y, b, o)
        return out.to(dtype), residual.to(dtype)


def grid_to_spectral(sht: ForwardSHT, x: torch.Tensor) -> torch.Tensor:
    """Forward real SHT of ``x`` ``(B, C, nlat, nlon)`` with the Legendre table ``weights (m, l, k)``
    of the torch-harmonics ``RealSHT`` ``sht``: real ``(mmax, lmax, B*C*2)``, ``(re, im)`` innermost.

    The same maths as ``sht(x)`` (rfft in longitude, then the quadrature per order ``m``), laid out so
    that the contraction over latitude is one batched matmul over ``m``.
    """
    b, c, nlat, nlon = x.shape
    mmax = sht.mmax
    if mmax > nlon // 2 + 1:
        raise ValueError(f"mmax={mmax} exceeds the {nlon // 2 + 1} Fourier modes of {nlon} longitudes")
    f = torch.fft.rfft(x, dim=-1, norm="forward")[..., :mmax]  # (B, C, K, M) complex
    xp = torch.view_as_real(f).permute(3, 2, 0, 1, 4).reshape(mmax, nlat, b * c * 2)
    return torch.bmm(sht.weights.to(x.dtype), xp)


def spectral_to_grid(isht: InverseSHT, coeffs: torch.Tensor, b: int, c: int) -> torch.Tensor:
    """Inverse real SHT of ``coeffs`` ``(mmax, lmax, B*C*2)`` with the Legendre table ``pct (m, k, l)``
    of the torch-harmonics ``InverseRealSHT`` ``isht``: ``(B, C, nlat, nlon)``.

    As ``torch_harmonics.fft.irfft``, the imaginary parts of the ``m = 0`` (and Nyquist) modes are
    dropped (zeroed) before the inverse FFT.
    """
    mmax = coeffs.shape[0]
    nlon = isht.nlon
    nfreq = nlon // 2 + 1
    g = torch.bmm(isht.pct.to(coeffs.dtype), coeffs)  # (M, K, B*C*2)
    nlat = g.shape[1]
    g = g.view(mmax, nlat, b, c, 2)
    # in place on the matmul output (not saved for the backward pass)
    g[0, ..., 1] = 0.0
    if nlon % 2 == 0 and nlon // 2 < mmax:
        g[nlon // 2, ..., 1] = 0.0
    # one copy: (M, K, B, C, 2) -> (B, C, K, nfreq, 2), zero-padded to all nfreq modes
    g = nn.functional.pad(g.permute(2, 3, 1, 0, 4), (0, 0, 0, nfreq - mmax))
    return torch.fft.irfft(torch.view_as_complex(g), n=nlon, dim=-1, norm="forward")


class SFNOBlock(nn.Module):
    """``h = GELU(spec(x) + W x); out = MLP(h) + x`` (all skips on the output grid)."""

    def __init__(self, sht: ForwardSHT, isht: InverseSHT, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.spec = SpectralConv(sht, isht, dim, dim)
        self.skip = Pointwise(dim, dim)
        self.fc1 = Pointwise(dim, hidden)
        self.fc2 = Pointwise(hidden, dim, bias=False)
        self.act = nn.GELU()

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.spec.reset_parameters(generator)
        _init_conv(self.skip, generator, gain=1.0)
        _init_conv(self.fc1, generator, gain=2.0)
        _init_conv(self.fc2, generator, gain=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, residual = self.spec(x)
        h = self.act(y + self.skip(residual))
        return self.fc2(self.act(self.fc1(h)), add=residual)


class Pointwise(nn.Module):
    """A 1x1 convolution ``y[b, o] = W[o, i] x[b, i] + c[o]`` as one batched matmul.

    On CPU this is ~4x faster than ``nn.Conv2d(k=1)`` (mkldnn) at 32x64 and makes no layout copies.
    """

    def __init__(self, in_ch: int, out_ch: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """``W x + c``, plus ``add`` (same shape as the output) fused into the matmul when given."""
        b, _, h, w = x.shape
        xf = x.reshape(b, -1, h * w)
        wt = self.weight.to(x.dtype).expand(b, -1, -1)  # stride-0 batch: no copy
        if add is not None:
            y = torch.baddbmm(add.reshape(b, -1, h * w), wt, xf)
            if self.bias is not None:
                y = y + self.bias.to(x.dtype)[None, :, None]
        elif self.bias is None:
            y = torch.bmm(wt, xf)
        else:
            y = torch.baddbmm(self.bias.to(x.dtype)[None, :, None], wt, xf)
        return y.view(b, -1, h, w)


def _init_conv(conv: Pointwise, generator: torch.Generator, gain: float) -> None:
    """He-style normal init ``std = sqrt(gain / fan_in)``, zero bias."""
    fan_in = conv.weight.shape[1]
    w = torch.randn(conv.weight.shape, generator=generator) * math.sqrt(gain / fan_in)
    with torch.no_grad():
        conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.zero_()


class SFNO(nn.Module):
    """Spherical Fourier neural operator on a latitude-longitude data grid.

    Parameters
    ----------
    config
        Hyperparameters (:class:`SFNOConfig`).
    latitude
        Data-grid latitude rows in degrees, descending (north to south).
    nlon
        Number of equispaced longitudes.
    generator
        Source of the initial weights; ``None`` leaves them at zero (to be loaded from a checkpoint).
    """

    def __init__(
        self,
        config: SFNOConfig,
        latitude: np.ndarray,
        nlon: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        lat = np.asarray(latitude, dtype=np.float64)
        self.nlat, self.nlon = lat.size, nlon
        h, w = internal_shape(self.nlat, config.scale_factor)
        lmax, mmax = config.lmax, config.mmax
        if lmax > h:
            raise ValueError(f"lmax={lmax} exceeds the internal Gauss grid's exact limit {h}")
        if config.internal_grid != "legendre-gauss":
            raise ValueError("only the legendre-gauss internal grid is implemented")
        sht_data = GridRealSHT(lat, nlon, lmax, mmax)
        isht_data = GridInverseRealSHT(lat, nlon, lmax, mmax)
        sht_int = RealSHT(h, w, lmax=lmax, mmax=mmax, grid="legendre-gauss")
        isht_int = InverseRealSHT(h, w, lmax=lmax, mmax=mmax, grid="legendre-gauss")
        # the transforms run in float32: tables converted once (torch-harmonics keeps float64 and
        # converts at every call) and without subnormals
        for mod in (sht_data, sht_int):
            mod.weights = flush_subnormals_(mod.weights.float().contiguous())
        for mod in (isht_data, isht_int):
            mod.pct = flush_subnormals_(mod.pct.float().contiguous())
        d = config.embed_dim
        self.encoder = Pointwise(config.in_chans, d)
        blocks = []
        for i in range(config.num_layers):
            first, last = i == 0, i == config.num_layers - 1
            blocks.append(
                SFNOBlock(
                    sht_data if first else sht_int,
                    isht_data if last else isht_int,
                    d,
                    config.mlp_ratio,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.decoder = Pointwise(d, config.out_chans)
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Draw all weights from ``generator`` (deterministic given its seed)."""
        _init_conv(self.encoder, generator, gain=1.0)
        for b in self.blocks:
            cast(SFNOBlock, b).reset_parameters(generator)  # nn.ModuleList iterates as nn.Module
        # small decoder: the model starts close to persistence (zero tendency)
        _init_conv(self.decoder, generator, gain=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_chans, nlat, nlon)`` to ``(B, out_chans, nlat, nlon)``.

        On CPU a large batch runs in chunks of :meth:`cpu_chunk` members (members are independent), so
        that the working fields stay in the core's cache (the pass is memory-bound otherwise: at
        128x64, 8 members at once ran ~1.4x slower per member than one at a time; docs/benchmarks.md).
        """
        n = self.cpu_chunk() if x.device.type == "cpu" else x.shape[0]
        if x.shape[0] <= n:
            return self._forward(x)
        return torch.cat([self._forward(part) for part in x.split(n)])

    def cpu_chunk(self) -> int:
        """Members per chunk on CPU: one ``embed_dim`` field of a chunk is about 1 MiB (>= 1 member)."""
        return max(1, CPU_CHUNK_BYTES // (self.config.embed_dim * self.nlat * self.nlon * 4))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)
        for b in self.blocks:
            x = b(x)
        return self.decoder(x)
