"""Deterministic skill of a forecast model: latitude-weighted RMSE by lead time.

``RMSE_c(tau) = sqrt( mean_n sum_ij w_i (f_nc(tau) - o_nc)^2 / sum_ij w_i )`` over init times ``n``, with
area weights ``w_i`` from :func:`data_catalog.grid.area_weights` (WeatherBench2's definition: the mean
of squared errors over inits before the square root, Rasp et al. 2020/2024). References: persistence
(``f = x_0``) and a monthly per-gridpoint climatology of the training years.
"""

from __future__ import annotations

import numpy as np
import torch

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from models.data import Block, month_index


def rollout(
    model, x0: torch.Tensor, times0: np.ndarray, n_steps: int, noise_generator: torch.Generator | None = None
) -> torch.Tensor:
    """Batched autoregressive rollout ``(n_steps, B, C, lat, lon)`` from states ``x0`` at ``times0``.

    Each batch member has its own valid time (day-of-year features); runs under ``inference_mode``.
    A stochastic model (``noise_channels``) gets fresh noise from ``noise_generator`` at every step,
    or runs its noise-free path (zero noise) without one.
    """
    step = np.timedelta64(int(model.time_step.total_seconds()), "s")
    times = np.asarray(times0).astype("datetime64[s]")
    out = []
    net = getattr(model, "net", None)  # a physics model has no network
    if net is not None:
        net.eval()
    x = x0.to(model.device)
    with torch.inference_mode(), model._autocast():
        for _ in range(n_steps):
            noise = None
            if noise_generator is not None and int(getattr(model, "noise_channels", 0)) > 0:
                noise = model.draw_noise([noise_generator] * x.shape[0])
            x = model.forward(x, list(times), noise)
            times = times + step
            out.append(x)
    return torch.stack(out)


def rmse_at(skill: dict | None, hours: int = 48) -> dict[str, float]:
    """Validation RMSE per channel at lead ``hours`` from a skill file's content (a checkpoint's
    ``skill.json``, as :func:`skill_table` writes it)."""
    from data_catalog.errors import UserError

    if not skill:
        raise UserError("this checkpoint has no skill.json")
    leads = list(skill["lead_hours"])
    if hours not in leads:
        raise UserError(f"no validation RMSE at {hours} h (leads: {leads[0]}..{leads[-1]} h)")
    i = leads.index(hours)
    return {c: float(v[i]) for c, v in skill["rmse"].items()}


def weighted_rmse(err: torch.Tensor, latitude: np.ndarray) -> torch.Tensor:
    """Latitude-weighted RMSE over ``(..., N, C, lat, lon)`` -> ``(..., C)`` (mean over N inside the root)."""
    w = torch.as_tensor(area_weights(latitude), dtype=torch.float64, device=err.device).view(-1, 1)
    mse = (err.double() ** 2 * w).mean(dim=(-2, -1)) / w.mean()
    return mse.mean(dim=-2).sqrt()


def init_indices(n_times: int, n_inits: int, lead_steps: int) -> np.ndarray:
    """``n_inits`` evenly spaced init indices leaving room for ``lead_steps`` verifying states."""
    last = n_times - 1 - lead_steps
    if last < 0:
        raise ValueError(f"need more than {lead_steps} times, have {n_times}")
    return np.unique(np.linspace(0, last, n_inits).round().astype(int))


def skill_table(
    model,
    block: Block,
    climatology: torch.Tensor,
    n_inits: int = 8,
    lead_steps: int = 40,
    batch: int = 8,
) -> dict:
    """RMSE per channel and lead for model, persistence and climatology on ``block``.

    Returns ``{"lead_hours", "rmse", "persistence", "climatology", "init_times"}`` (JSON-ready).
    """
    cand = block.window_starts(lead_steps)
    if cand.size == 0:
        raise UserError(f"no window of {lead_steps} steps inside one trajectory")
    idx = cand[init_indices(cand.size + lead_steps, n_inits, lead_steps)]
    dt_h = model.time_step.total_seconds() / 3600.0
    sq = {k: torch.zeros(lead_steps, len(model.channels), dtype=torch.float64) for k in ("m", "p", "c")}
    lat = model.latitude
    n_done = 0
    for s in range(0, idx.size, batch):
        ib = idx[s : s + batch]
        x0 = block.data[torch.from_numpy(ib)]
        fc = rollout(model, x0, block.times[ib], lead_steps).cpu()
        for k in range(lead_steps):
            tgt_idx = ib + k + 1
            truth = block.data[torch.from_numpy(tgt_idx)]
            clim = climatology[torch.from_numpy(month_index(block.times[tgt_idx]))]
            for key, f in (("m", fc[k]), ("p", x0), ("c", clim)):
                sq[key][k] += weighted_rmse(f - truth, lat) ** 2 * ib.size
        n_done += ib.size
    res = {key: (v / n_done).sqrt() for key, v in sq.items()}

    def table(t: torch.Tensor) -> dict[str, list[float]]:
        return {c: [float(v) for v in t[:, i]] for i, c in enumerate(model.channels)}

    return {
        "lead_hours": [int(round(dt_h * (k + 1))) for k in range(lead_steps)],
        "rmse": table(res["m"]),
        "persistence": table(res["p"]),
        "climatology": table(res["c"]),
        "init_times": [str(np.datetime64(t, "s")) for t in block.times[idx]],
        "metric": "latitude-weighted RMSE (area weights), physical units",
    }
