"""Small stand-ins for tests and demos: a toy forecast model and a synthetic canonical analysis.

The toy model implements :class:`models.base.ForecastModel`: per channel a zonal advection by a
latitude-dependent phase shift (exact, spectral in longitude) plus a weak nonlinear channel mixing
``x' = x + eps * tanh(W x)`` in normalised units; ``W`` depends on the checkpoint's seed. Every
operation acts on one member at a time, so results do not depend on batch composition.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

CHANNELS = ("z500", "u500", "v500", "vo500")
MEANS = {"z500": 5.4e4, "u500": 10.0, "v500": 0.0, "vo500": 0.0, "tcwv": 20.0, "const": 1.0}
STDS = {"z500": 600.0, "u500": 8.0, "v500": 6.0, "vo500": 2e-5, "tcwv": 10.0, "const": 1.0}
UNITS = {"z500": "m2 s-2", "u500": "m s-1", "v500": "m s-1", "vo500": "s-1", "tcwv": "kg m-2", "const": "1"}


def grid(nlat: int = 32, nlon: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """WeatherBench2-style equiangular grid without poles, latitude descending."""
    dlat = 180.0 / nlat
    lat = 90.0 - dlat / 2 - dlat * np.arange(nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    return lat, lon


class ToyModel:
    """Deterministic toy :class:`~models.base.ForecastModel` (see module docstring)."""

    def __init__(
        self,
        seed: int = 0,
        channels: tuple[str, ...] = CHANNELS,
        nlat: int = 32,
        nlon: int = 64,
        eps: float = 0.3,
        device: str = "cpu",
        nan_above: float | None = None,
    ) -> None:
        self.channels = tuple(channels)
        self.latitude, self.longitude = grid(nlat, nlon)
        self.time_step = dt.timedelta(hours=6)
        self.device = torch.device(device)
        rng = np.random.default_rng(seed)
        c = len(self.channels)
        self._w = torch.tensor(rng.normal(0.0, 1.5, (c, c)), dtype=torch.float32)
        self._mean = torch.tensor([MEANS.get(n, 0.0) for n in self.channels], dtype=torch.float32)
        self._std = torch.tensor([STDS.get(n, 1.0) for n in self.channels], dtype=torch.float32)
        self._const = torch.tensor([n == "const" for n in self.channels])
        speed = 0.6 + 0.4 * np.cos(np.deg2rad(self.latitude))[None, :] * (1 + 0.1 * np.arange(c))[:, None]
        k = np.arange(nlon // 2 + 1)
        phase = np.exp(-2j * np.pi * k[None, None, :] * speed[..., None] / nlon)
        self._phase = torch.tensor(phase, dtype=torch.complex64)
        self.eps = eps
        self.seed = seed
        self.nan_above = nan_above  # member -> NaN where normalised channel 0 at (0, 0) exceeds this
        self._skill = {n: 0.5 * STDS.get(n, 1.0) * (0.0 if n == "const" else 1.0) for n in self.channels}

    def to(self, device: torch.device | str) -> ToyModel:
        self.device = torch.device(device)
        return self

    def rmse_at(self, hours: int = 48) -> dict[str, float]:
        """Per-channel 48 h RMSE (a fixed fraction of the climatological spread)."""
        return dict(self._skill)

    def step(self, x: torch.Tensor, time: np.datetime64 | None = None) -> torch.Tensor:
        mean = self._mean.to(x.device)[:, None, None]
        std = self._std.to(x.device)[:, None, None]
        z = (x.float() - mean) / std
        z = torch.fft.irfft(torch.fft.rfft(z, dim=-1) * self._phase.to(x.device), n=z.shape[-1], dim=-1)
        mix = torch.einsum("dc,bchw->bdhw", self._w.to(x.device), z)
        z = 0.97 * z + self.eps * torch.tanh(mix)
        out = z * std + mean
        if self.nan_above is not None:
            blow = z[:, 0, 0, 0] > self.nan_above
            out = torch.where(blow[:, None, None, None], torch.full_like(out, float("nan")), out)
        const = self._const.to(x.device)[:, None, None]
        return torch.where(const, x.float(), out).to(x.dtype)


def write_toy_checkpoint(
    path: str | Path, seed: int, channels: tuple[str, ...] = CHANNELS, nan_above: float | None = None
) -> Path:
    """Write a toy checkpoint directory (``toy.json``) loadable by :func:`load_toy_checkpoint`."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    meta = {"seed": seed, "channels": list(channels), "nan_above": nan_above}
    (p / "toy.json").write_text(json.dumps(meta))
    return p


def load_toy_checkpoint(path: str | Path) -> ToyModel:
    """Checkpoint loader for toy checkpoints (``model_loader: pipeline.testing:load_toy_checkpoint``)."""
    meta = json.loads((Path(path) / "toy.json").read_text())
    return ToyModel(seed=int(meta["seed"]), channels=tuple(meta["channels"]), nan_above=meta.get("nan_above"))


def synthetic_analysis(
    start: str = "2008-01-01T00",
    periods: int = 40,
    channels: tuple[str, ...] = CHANNELS,
    nlat: int = 32,
    nlon: int = 64,
    seed: int = 0,
) -> xr.Dataset:
    """A canonical analysis Dataset: a toy-model trajectory from a smooth random state, 6-hourly."""
    from pipeline.perturbations.sphere import SphericalRandomField

    lat, lon = grid(nlat, nlon)
    g = torch.Generator().manual_seed(seed)
    grf = SphericalRandomField(lat, lon, length_scale_km=1500.0)
    f = grf.sample(len(channels), g).float()
    f = f / f.std(dim=(-2, -1), keepdim=True)
    mean = torch.tensor([MEANS.get(n, 0.0) for n in channels])[:, None, None]
    std = torch.tensor([STDS.get(n, 1.0) for n in channels])[:, None, None]
    x = mean + std * f
    for i, n in enumerate(channels):
        if n == "const":
            x[i] = 1.0
        if n == "tcwv":
            x[i] = x[i].clamp(min=0.0)
    model = ToyModel(seed=12345, channels=channels, nlat=nlat, nlon=nlon)
    states = [x]
    for _ in range(periods - 1):
        states.append(model.step(states[-1][None])[0])
    data = torch.stack(states).numpy().astype(np.float32)
    times = np.datetime64(start, "ns") + np.arange(periods) * np.timedelta64(6, "h")
    ds = xr.Dataset(
        {
            n: (("time", "latitude", "longitude"), data[:, i], {"units": UNITS.get(n, "1")})
            for i, n in enumerate(channels)
        },
        coords={"time": times, "latitude": lat, "longitude": lon},
    )
    return ds
