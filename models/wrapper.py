"""`SFNOForecastModel`: the SFNO behind the :class:`models.base.ForecastModel` protocol.

Physical units in and out. Inside, one step is

``x_{t+6h} = x_t + sigma_d * SFNO([ (x_t - mu) / sigma , features(t) ])``

with per-channel mean ``mu`` and standard deviation ``sigma`` of the state and ``sigma_d`` the standard
deviation of the 6-hour tendency ``x_{t+6h} - x_t`` over the training years (residual prediction as in
Pathak et al. 2022 / Bonev et al. 2023). Optional input features: ``doy`` adds the two fields
``sin(2 pi d / 365.25)``, ``cos(2 pi d / 365.25)`` of the fractional day of year ``d`` of ``time``
(the embedded world has a seasonal cycle); ``sinlat`` adds ``sin(latitude)`` (the Coriolis parameter's shape:
the SFNO's layers are rotation-equivariant and would otherwise not know the latitude); ``static:<name>``
adds a normalised static field such as the orography (it breaks the zonal symmetry where the
mountains are); ``noise:<K>:<L>`` (last) makes the model stochastic: ``K`` input fields of Gaussian
noise with unit RMS, white in space up to degree ``L - 1`` (spherical-harmonic band limit), fresh at
every step (a member generator trained with the fair CRPS, ``wxens train --loss crps``; docs/models.md).
The noise comes from the caller (:meth:`SFNOForecastModel.draw_noise`, one generator per member:
the engine's members stay reproducible alone); a step without noise uses zeros, the noise-free path
(breeding, skill files).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import numpy as np
import torch

from models.sfno import SFNO, SFNOConfig

DOY_PERIOD_DAYS = 365.25


def parse_noise_feature(feature: str) -> tuple[int, int]:
    """``"noise:K:L"`` -> ``(K, L)``: K noise fields band-limited to degrees ``< L``."""
    try:
        _, k, lmax = feature.split(":")
        out = int(k), int(lmax)
    except ValueError:
        raise ValueError(f"bad noise feature {feature!r}: use noise:<channels>:<lmax>") from None
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"bad noise feature {feature!r}: channels and lmax must be >= 1")
    return out


def feature_channels(features: tuple[str, ...] | list[str]) -> int:
    """Number of input channels the features add (``doy`` 2, ``noise:K:L`` K, others 1)."""
    n = 0
    for f in features:
        n += 2 if f == "doy" else parse_noise_feature(f)[0] if f.startswith("noise:") else 1
    return n


def day_of_year_fraction(time: np.datetime64) -> float:
    """Fractional day of year (0-based) of ``time``: ``(t - Jan 1 00:00 of its year) / 1 day``."""
    # numpy's stubs have no datetime64(datetime64, unit) overload; the conversion is valid at runtime
    t = np.datetime64(time, "s")  # type: ignore[call-overload]
    year_start = t.astype("datetime64[Y]").astype("datetime64[s]")
    return float((t - year_start) / np.timedelta64(1, "D"))


class SFNOForecastModel:
    """SFNO forecast model on a latitude-longitude grid (see module docstring).

    Parameters
    ----------
    net
        The SFNO network (input channels = channels + features, output channels = channels).
    channels
        Canonical channel names in tensor order.
    latitude, longitude
        Grid coordinates (degrees; latitude descending, longitude ascending in [0, 360)).
    mean, std, tendency_std
        Per-channel normalisation statistics in physical units, shape ``(C,)``.
    features
        Extra input features, e.g. ``("doy",)``.
    static_fields
        Normalised static fields ``(S, lat, lon)`` for ``static:*`` features, in feature order.
    time_step
        Length of one step (6 h).
    metadata
        Checkpoint metadata (free-form, JSON-serialisable).
    autocast_bf16
        Run the pointwise layers under bfloat16 autocast on CUDA (transforms stay float32).
    """

    def __init__(
        self,
        net: SFNO,
        channels: tuple[str, ...] | list[str],
        latitude: np.ndarray,
        longitude: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        tendency_std: np.ndarray,
        features: tuple[str, ...] = ("doy",),
        static_fields: np.ndarray | None = None,
        time_step: dt.timedelta = dt.timedelta(hours=6),
        metadata: dict[str, Any] | None = None,
        autocast_bf16: bool = False,
    ) -> None:
        self.net = net
        self.channels = tuple(channels)
        self.latitude = np.array(latitude, dtype=np.float64)  # own, writable copy
        self.longitude = np.array(longitude, dtype=np.float64)
        self.time_step = time_step
        self.features = tuple(features)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.skill: dict[str, Any] | None = None
        self.autocast_bf16 = autocast_bf16
        c = len(self.channels)
        for name, arr in (("mean", mean), ("std", std), ("tendency_std", tendency_std)):
            if np.asarray(arr).shape != (c,):
                raise ValueError(f"{name} must have shape ({c},)")
        n_static = sum(f.startswith("static:") for f in self.features)
        unknown = [
            f
            for f in self.features
            if f not in ("doy", "sinlat") and not f.startswith("static:") and not f.startswith("noise:")
        ]
        if unknown:
            raise ValueError(f"unknown input features {unknown}")
        noise = [f for f in self.features if f.startswith("noise:")]
        if len(noise) > 1 or (noise and self.features[-1] != noise[0]):
            raise ValueError("at most one noise:<K>:<L> feature, and it must come last")
        self.noise_channels, self.noise_lmax = parse_noise_feature(noise[0]) if noise else (0, 0)
        self._noise_proj: tuple[Any, Any, float] | None = None
        #: calibrated spectral filter applied after every step (models.spectral_filter), or None
        self.spectral_filter: Any = None
        if n_static and (static_fields is None or static_fields.shape[0] != n_static):
            raise ValueError("static_fields must hold one field per static feature")
        expected_in = c + self.n_feature_channels
        if net.config.in_chans != expected_in or net.config.out_chans != c:
            raise ValueError(
                f"network expects {net.config.in_chans}->{net.config.out_chans} channels, "
                f"wrapper needs {expected_in}->{c}"
            )
        self.device = torch.device("cpu")
        self._mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.as_tensor(np.asarray(std), dtype=torch.float32).view(1, c, 1, 1)
        self._tstd = torch.as_tensor(np.asarray(tendency_std), dtype=torch.float32).view(1, c, 1, 1)
        self._static = (
            torch.as_tensor(np.asarray(static_fields), dtype=torch.float32)
            if static_fields is not None and n_static
            else None
        )

    # ------------------------------------------------------------------ protocol
    @property
    def n_feature_channels(self) -> int:
        return feature_channels(self.features)

    def to(self, device: torch.device | str) -> SFNOForecastModel:
        """Move parameters and statistics to ``device``; returns ``self``."""
        self.device = torch.device(device)
        self.net.to(self.device)
        self._mean = self._mean.to(self.device)
        self._std = self._std.to(self.device)
        self._tstd = self._tstd.to(self.device)
        if self._static is not None:
            self._static = self._static.to(self.device)
        self._noise_proj = None
        if self.spectral_filter is not None:
            self.spectral_filter.to(self.device)
        return self

    def set_spectral_filter(self, spectral_filter: Any) -> None:
        """Apply ``spectral_filter`` (a :class:`models.spectral_filter.SpectralFilter` on this grid, or
        None) after every step."""
        if spectral_filter is not None:
            if spectral_filter.log_gain.shape[0] != len(self.channels):
                raise ValueError("the spectral filter has another number of channels than the model")
            spectral_filter.to(self.device)
        self.spectral_filter = spectral_filter

    def step(
        self, x: torch.Tensor, time: np.datetime64 | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Advance ``(B, C, lat, lon)`` physical-unit states valid at ``time`` by one 6-h step.

        ``noise``: ``(B, K, lat, lon)`` from :meth:`draw_noise` for a stochastic model (zeros if None)."""
        self._check_input(x)
        if "doy" in self.features and time is None:
            raise ValueError("this model uses day-of-year features: step() needs the valid time")
        self.net.eval()
        with torch.inference_mode(), self._autocast():
            return self.forward(x, time, noise)

    # ------------------------------------------------------------------ stochastic inputs
    def _projector(self) -> tuple[Any, Any, float]:
        """SHT / inverse SHT to the noise band limit and the factor that gives unit RMS."""
        if self._noise_proj is None:
            from models.sht import GridInverseRealSHT, GridRealSHT

            lat, nlon = self.latitude, self.longitude.size
            lmax = min(self.noise_lmax, lat.size)
            mmax = min(lmax, nlon // 2 + 1)
            sht = GridRealSHT(lat, nlon, lmax, mmax).to(self.device)
            isht = GridInverseRealSHT(lat, nlon, lmax, mmax).to(self.device)
            # fixed reference draw: the same normalisation on every machine and for every batch
            z = torch.randn((256, lat.size, nlon), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                rms = float(isht(sht(z.to(self.device))).square().mean().sqrt())
            self._noise_proj = (sht, isht, 1.0 / rms)
        return self._noise_proj

    def draw_noise(self, generators: list[torch.Generator | None]) -> torch.Tensor:
        """``(len(generators), K, lat, lon)`` noise inputs on the model's device, member ``i`` drawn only
        from ``generators[i]`` (CPU generators: the same values on any device; None: torch's global
        generator): Gaussian, band-limited to degrees ``< L``, unit RMS on average."""
        if not self.noise_channels:
            raise ValueError("this model takes no noise inputs")
        k, shape = self.noise_channels, (self.latitude.size, self.longitude.size)
        z = torch.stack([torch.randn((k, *shape), generator=g) for g in generators]).to(self.device)
        sht, isht, scale = self._projector()
        # float32 transforms also inside a bf16 autocast region (the engine's bf16 rollouts)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            return (isht(sht(z)) * scale).float()

    # ------------------------------------------------------------------ differentiable core
    def forward(
        self, x: torch.Tensor, time: np.datetime64 | None | list, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Differentiable one-step map in physical units (used by training).

        ``time`` is one valid time for the whole batch or a sequence of one per batch member; ``noise``
        the stochastic inputs of a model with a ``noise:`` feature (zeros if None).
        """
        if noise is not None and not self.noise_channels:
            raise ValueError("this model takes no noise inputs")
        xn = (x.float() - self._mean) / self._std
        feats = self.feature_fields(time, x.shape[0], noise) if self.features else None
        inp = torch.cat([xn, feats], dim=1) if feats is not None else xn
        dn = self.net(inp).float()
        out = x.float() + dn * self._tstd
        return out if self.spectral_filter is None else self.spectral_filter(out)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mu) / sigma`` per channel."""
        return (x - self._mean) / self._std

    def feature_fields(
        self, time: np.datetime64 | None | list, batch: int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Extra input fields ``(B, F, lat, lon)`` for ``time`` (one value or one per batch member);
        the noise inputs last (``noise``, or zeros)."""
        nlat, nlon = self.latitude.size, self.longitude.size
        parts: list[torch.Tensor] = []
        if "doy" in self.features:
            times = list(time) if isinstance(time, list | tuple | np.ndarray) else [time] * batch
            valid = [t for t in times if t is not None]
            if len(times) != batch or len(valid) != len(times):
                raise ValueError("day-of-year features need one valid time per batch member")
            frac = {t: day_of_year_fraction(t) for t in set(valid)}  # one valid time for a whole batch
            ang = torch.tensor(
                [2 * np.pi * frac[t] / DOY_PERIOD_DAYS for t in valid],
                dtype=torch.float32,
                device=self.device,
            )
            sc = torch.stack([torch.sin(ang), torch.cos(ang)], dim=1)  # (B, 2)
            parts.append(sc[:, :, None, None].expand(batch, 2, nlat, nlon))
        if "sinlat" in self.features:
            sl = torch.sin(
                torch.deg2rad(torch.as_tensor(self.latitude, dtype=torch.float32, device=self.device))
            )
            parts.append(sl.view(1, 1, nlat, 1).expand(batch, 1, nlat, nlon))
        if self._static is not None:
            parts.append(self._static[None].expand(batch, -1, -1, -1))
        if self.noise_channels:
            if noise is None:
                noise = torch.zeros((batch, self.noise_channels, nlat, nlon), device=self.device)
            elif tuple(noise.shape) != (batch, self.noise_channels, nlat, nlon):
                raise ValueError(
                    f"noise must be ({batch}, {self.noise_channels}, {nlat}, {nlon}), got {tuple(noise.shape)}"
                )
            parts.append(noise.to(device=self.device, dtype=torch.float32))
        elif noise is not None:
            raise ValueError("this model takes no noise inputs")
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: torch.Tensor) -> None:
        shape = (len(self.channels), self.latitude.size, self.longitude.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"expected a (B, {shape[0]}, {shape[1]}, {shape[2]}) tensor, got {tuple(x.shape)}"
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def rmse_at(self, hours: int = 48) -> dict[str, float]:
        """Validation RMSE per channel at lead ``hours`` from ``skill.json``."""
        from models.skill import rmse_at

        return rmse_at(self.skill, hours)

    def __repr__(self) -> str:
        cfg = self.net.config
        return (
            f"SFNOForecastModel(channels={list(self.channels)}, grid={self.latitude.size}x{self.longitude.size}, "
            f"embed_dim={cfg.embed_dim}, num_layers={cfg.num_layers}, lmax={cfg.lmax}, device={self.device})"
        )


def build_model(
    architecture: dict[str, Any],
    channels: list[str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    stats: dict[str, Any],
    features: tuple[str, ...],
    static_fields: np.ndarray | None = None,
    generator: torch.Generator | None = None,
    metadata: dict[str, Any] | None = None,
) -> SFNOForecastModel:
    """Build an :class:`SFNOForecastModel` from plain metadata pieces."""
    cfg = SFNOConfig.from_dict(architecture)
    net = SFNO(cfg, np.asarray(latitude), len(longitude), generator=generator)
    return SFNOForecastModel(
        net,
        channels,
        latitude,
        longitude,
        mean=np.asarray(stats["mean"], dtype=np.float64),
        std=np.asarray(stats["std"], dtype=np.float64),
        tendency_std=np.asarray(stats["tendency_std"], dtype=np.float64),
        features=tuple(features),
        static_fields=static_fields,
        metadata=metadata,
    )
