"""Batched rollout of one work unit: perturb, advance, detect non-finite members.

One unit is one batch: the members of one member block of one checkpoint at one init time. The
perturbation of every pair uses only its own generator, and the block (the batch) composition is
fixed by the run's recorded member block, so a unit recomputed alone (resume, shard, regeneration of
chosen members) reproduces the full run bitwise on the same device and thread count.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline import seeds

log = logging.getLogger(__name__)

#: heuristic working-memory multiple of one member state used by ``batch_size: auto``
AUTO_MEMORY_FACTOR = 64


def auto_batch_size(n_channels: int, nlat: int, nlon: int, device: torch.device, cap: int) -> int:
    """Members per batch from free memory: ``free / (AUTO_MEMORY_FACTOR * C * lat * lon * 4 bytes)``,
    using half of free CUDA memory or a quarter of available host memory (psutil)."""
    per_member = AUTO_MEMORY_FACTOR * n_channels * nlat * nlon * 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * 0.5
    else:
        import psutil

        budget = psutil.virtual_memory().available * 0.25
    return int(max(1, min(cap, budget // per_member)))


class StochasticForcing:
    """Additive stochastic forcing: per member and channel a spherical random field with RMS ``amplitude``.

    ``draw(generators)`` returns ``(len(generators), C, lat, lon)`` float32, one member per generator,
    each drawn only from its own generator (independent of the block it is in).
    """

    def __init__(
        self,
        amplitude: torch.Tensor,
        latitude: np.ndarray,
        longitude: np.ndarray,
        length_scale_km: float,
        ramp_steps: float | Sequence[float] = 0.0,
        schedule: Sequence[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        from pipeline.perturbations.sphere import SphericalRandomField

        # piecewise-linear schedules (lead steps, strengths): one for every channel, or one per channel
        if isinstance(schedule, tuple):
            schedule = [schedule]
        self.schedule = list(schedule) if schedule is not None else None
        # one ramp for all channels (a float) or one per channel
        self.ramp_steps: float | np.ndarray = (
            float(ramp_steps)
            if isinstance(ramp_steps, int | float)
            else np.asarray(ramp_steps, dtype=np.float64)
        )

        self.field = SphericalRandomField(latitude, longitude, length_scale_km)
        self.nchan = int(amplitude.numel())
        # fields have unit-variance coefficients; scale them to unit area-mean variance (the spectrum's sum)
        self.norm = float(self.field.unit_rms())
        self.amplitude = amplitude.double().view(-1, 1, 1) / self.norm

    def ramp(self, lead: int) -> float | torch.Tensor:
        """Strength at lead step ``lead`` (>= 1): ``min(1, lead / ramp_steps)``, or 1 without a ramp;
        per-channel ramps give a ``(C, 1, 1)`` float32 tensor; a schedule multiplies by its value at
        ``lead``."""
        sched: Any = 1.0
        if self.schedule is not None:
            vals = [float(np.interp(lead, h, v)) for h, v in self.schedule]
            sched = vals[0] if len(vals) == 1 else np.asarray(vals)
        if isinstance(self.ramp_steps, float) and np.ndim(sched) == 0:
            return float(sched) * (1.0 if self.ramp_steps <= 0 else min(1.0, lead / self.ramp_steps))
        r = np.broadcast_to(np.asarray(self.ramp_steps, dtype=np.float64), (self.nchan,))
        s = np.where(r > 0, np.minimum(1.0, lead / np.where(r > 0, r, 1.0)), 1.0) * sched
        return torch.as_tensor(s, dtype=torch.float32).view(-1, 1, 1)

    def draw(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        out = [self.field.sample(self.nchan, g) * self.amplitude for g in generators]
        return torch.stack(out).float()


def build_initial(
    analysis0: torch.Tensor, delta: torch.Tensor | None, nonnegative: torch.Tensor | None
) -> torch.Tensor:
    """Centred members ``[a + d_0, a - d_0, a + d_1, a - d_1, ...]`` (or the control ``[a]``)."""
    if delta is None:
        x = analysis0[None].clone()
    else:
        x = torch.stack([analysis0[None] + delta, analysis0[None] - delta], dim=1)
        x = x.reshape(-1, *analysis0.shape)
    if nonnegative is not None and bool(nonnegative.any()):
        mask = nonnegative.to(x.device)[:, None, None]
        x = torch.where(mask & (x < 0), torch.zeros((), dtype=x.dtype, device=x.device), x)
    return x


def run_unit(
    model: object,
    perturbation: Callable | None,
    analyses: torch.Tensor,
    times: Sequence[np.datetime64],
    *,
    run_seed: int,
    checkpoint: int,
    pairs: np.ndarray,
    lead_steps: int,
    on_lead: Callable[[int, torch.Tensor], None],
    nonnegative: torch.Tensor | None = None,
    bf16: bool = False,
    on_step: Callable[[int], None] | None = None,
    forcing: StochasticForcing | None = None,
) -> np.ndarray:
    """Perturb and roll out one block; returns the first non-finite step per member (-1: none).

    ``analyses`` are ``(K + 1, C, lat, lon)`` at ``times`` (the init time last); ``on_lead(lead,
    state)`` receives the float32 block state ``(B, C, lat, lon)`` for leads ``0..lead_steps``.
    """
    device = analyses.device
    init_time = times[-1]
    step = np.timedelta64(model.time_step)  # type: ignore[attr-defined]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if (bf16 and device.type == "cuda")
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        if perturbation is None:
            x = build_initial(analyses[-1], None, nonnegative)
        else:
            gens = [seeds.generator(run_seed, init_time, checkpoint, int(p)) for p in pairs]
            delta = perturbation(model, analyses, list(times), gens).float()
            x = build_initial(analyses[-1].float(), delta, nonnegative)
        first_bad = np.full(x.shape[0], -1, dtype=np.int32)
        # one stream per member and purpose, fixed by (run seed, init, checkpoint, pair, sign): the same
        # member draws the same forcing and model noise in any block, so members stay reproducible alone
        streams = [2 * int(p) + s for p in pairs for s in (0, 1)] if perturbation is not None else [0]
        fgens = None
        if forcing is not None:
            fgens = [
                seeds.generator(run_seed, init_time, checkpoint, k, purpose=seeds.PURPOSE_STOCHASTIC)
                for k in streams[: x.shape[0]]
            ]
        # a stochastic model (noise inputs, e.g. trained with the fair CRPS) gets fresh noise every step
        ngens = None
        if getattr(model, "noise_channels", 0):
            ngens = [
                seeds.generator(run_seed, init_time, checkpoint, k, purpose=seeds.PURPOSE_MODEL_NOISE)
                for k in streams[: x.shape[0]]
            ]
        for lead in range(lead_steps + 1):
            if lead > 0:
                t = init_time + (lead - 1) * step
                if ngens is not None:
                    noise = model.draw_noise(ngens)  # type: ignore[attr-defined]
                    x = model.step(x, t, noise).float()  # type: ignore[attr-defined]
                else:
                    x = model.step(x, t).float()  # type: ignore[attr-defined]
                if forcing is not None and fgens is not None:
                    ramp = forcing.ramp(lead)
                    if isinstance(ramp, torch.Tensor):
                        ramp = ramp.to(x.device)
                    x = x + forcing.draw(fgens).to(x.device) * ramp
                if on_step is not None:
                    on_step(x.shape[0])
            bad = ~torch.isfinite(x).flatten(1).all(dim=1)
            if bool(bad.any()):
                new = bad.cpu().numpy() & (first_bad < 0)
                if new.any():
                    first_bad[new] = lead
                    log.warning(
                        "checkpoint %d init %s: %d member(s) non-finite at lead step %d (local %s)",
                        checkpoint,
                        np.datetime_as_string(init_time, "h"),
                        int(new.sum()),
                        lead,
                        np.flatnonzero(new).tolist(),
                    )
            on_lead(lead, x)
    return first_bad
