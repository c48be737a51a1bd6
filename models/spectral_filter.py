"""A calibrated spectral filter: keeps long rollouts on the truth's angular power spectrum.

A deterministic model trained on a mean error loses variance at the scales it cannot predict and may
pile it up at others; over weeks of rollout that shows as a spectrum too weak at some degrees and too
strong at others (docs/models.md). Numerical weather models meet the same problem and tune their
horizontal diffusion until the kinetic-energy spectrum is realistic. This is that tuning for a learned
model: after every step each channel's spherical-harmonic coefficients of degree ``l`` are multiplied by
a fixed gain ``exp(g[c, l])``, close to 1 (a damping below 1, an amplification above),

    y' = y + ISHT((exp(g) - 1) * SHT(y)),

so the parts of ``y`` beyond the transform's truncation are left as they are and ``g = 0`` is the
identity. The gains are *calibrated* on training years (:func:`calibrate`): roll out from ``n_inits``
states for ``steps`` steps, compare the mean degree power over the last ``window`` steps with the truth's
over the same valid times, and move ``g`` by ``-eta/2 log(ratio)`` (each step at most ``max_change``),
for ``iters`` rounds. The power responds strongly to a per-step gain (it compounds over the roll-out),
hence the small ``eta``. The result lives next to the weights as ``spectral_filter.json`` and is applied by
:class:`models.wrapper.SFNOForecastModel` when the checkpoint is loaded.

``wxens checkpoints calibrate-spectrum DIR`` calibrates every checkpoint in ``DIR`` and rescores its
skill file with the filter on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

FILTER_FILE = "spectral_filter.json"
FILTER_VERSION = 1


class SpectralFilter:
    """``y -> y + ISHT((exp(g) - 1) * SHT(y))`` per channel and degree; ``log_gain`` ``(C, L)``, degrees
    ``0 .. L-1``, on the grid ``latitude`` x ``nlon`` (the model's)."""

    def __init__(self, latitude: np.ndarray, nlon: int, log_gain: np.ndarray | torch.Tensor) -> None:
        from models.sht import GridInverseRealSHT, GridRealSHT

        g = torch.as_tensor(np.asarray(log_gain, dtype=np.float64))
        if g.ndim != 2 or g.shape[1] < 1:
            raise ValueError("log_gain must be (channels, degrees)")
        if not bool(torch.isfinite(g).all()):
            raise ValueError("log_gain must be finite")
        self.log_gain = g
        lmax = int(g.shape[1])
        mmax = min(lmax, nlon // 2 + 1)
        self.sht = GridRealSHT(np.asarray(latitude, dtype=np.float64), nlon, lmax, mmax)
        self.isht = GridInverseRealSHT(np.asarray(latitude, dtype=np.float64), nlon, lmax, mmax)
        self._factor = (torch.exp(g) - 1.0).to(torch.float32)[:, :, None]  # (C, L, 1)
        self.device = torch.device("cpu")

    @property
    def lmax(self) -> int:
        return int(self.log_gain.shape[1])

    def to(self, device: torch.device | str) -> SpectralFilter:
        self.device = torch.device(device)
        self.sht = self.sht.to(self.device)
        self.isht = self.isht.to(self.device)
        self._factor = self._factor.to(self.device)
        return self

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered ``(B, C, lat, lon)``; the transforms run in float32 also under autocast."""
        if y.shape[1] != self._factor.shape[0]:
            raise ValueError(f"the filter has {self._factor.shape[0]} channels, the state {y.shape[1]}")
        with torch.autocast(device_type=y.device.type, enabled=False):
            yf = y.float()
            return yf + self.isht(self.sht(yf) * self._factor)


def degree_power(x: torch.Tensor, sht: Any) -> torch.Tensor:
    """Angular power per degree ``(..., L)`` of fields ``(..., lat, lon)``: ``|c_l0|^2 + 2 sum_m>0 |c_lm|^2``."""
    c = sht(x.float()).abs() ** 2
    return c[..., 0] + 2 * c[..., 1:].sum(dim=-1)


@dataclass(frozen=True)
class CalibrationSettings:
    """How :func:`calibrate` runs (recorded in ``spectral_filter.json``). The defaults are the shipped
    checkpoints' recipe: fewer inits (22 from two years) left one seed's lowest degrees outside a
    factor 2 on the test years, their power varying much between small samples."""

    years: tuple[int, int] = (2000, 2006)
    n_inits: int = 77
    steps: int = 120
    window: int = 40
    iters: int = 24
    eta: float = 0.005
    max_change: float = 0.01

    def check(self) -> None:
        if self.n_inits < 1 or self.iters < 1 or not 1 <= self.window <= self.steps:
            raise UserError("need inits >= 1, iters >= 1 and 1 <= window <= steps")
        if not (self.eta > 0 and self.max_change > 0):
            raise UserError("need eta > 0 and max_change > 0")


def calibration_inits(block: Any, steps: int, n_inits: int) -> np.ndarray:
    """``n_inits`` start indices spread evenly over the windows of ``steps`` inside one trajectory."""
    cand = block.window_starts(steps)
    if cand.size == 0:
        raise UserError(f"no window of {steps} steps inside one trajectory of the calibration years")
    return np.unique(cand[np.round(np.linspace(0, cand.size - 1, min(n_inits, cand.size))).astype(int)])


def spectrum_ratio(model: Any, block: Any, inits: np.ndarray, steps: int, window: int) -> torch.Tensor:
    """Mean degree power of ``model``'s roll-outs over their last ``window`` steps, divided by the
    truth's over the same valid times, ``(C, L)`` with ``L`` the model filter's (or network's) lmax."""
    from models.skill import rollout

    sht = _analysis_sht(model)
    x0 = block.data[torch.from_numpy(inits)]
    fc = rollout(model, x0, block.times[inits], steps).cpu()  # (steps, B, C, lat, lon)
    if not bool(torch.isfinite(fc).all()):
        raise UserError("a calibration roll-out became non-finite; lower --eta or --max-change")
    p_model = degree_power(fc[steps - window :], sht).mean(dim=(0, 1)).double()
    truth = torch.stack(
        [block.data[torch.from_numpy(i + np.arange(steps - window + 1, steps + 1))] for i in inits]
    )  # (B, window, C, lat, lon)
    p_truth = degree_power(truth, sht).mean(dim=(0, 1)).double()
    return p_model / p_truth.clamp_min(torch.finfo(torch.float64).tiny)


def _analysis_sht(model: Any) -> Any:
    from models.sht import GridRealSHT

    lmax = _lmax(model)
    return GridRealSHT(model.latitude, model.longitude.size, lmax, min(lmax, model.longitude.size // 2 + 1))


def _lmax(model: Any) -> int:
    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "config"):
        raise UserError("spectral calibration needs an SFNO checkpoint (a network with an lmax)")
    return int(net.config.lmax)


def calibrate(
    model: Any,
    block: Any,
    settings: CalibrationSettings | None = None,
    start: np.ndarray | None = None,
    first_round: int = 0,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Gains ``g (C, L)`` for ``model`` (an :class:`~models.wrapper.SFNOForecastModel`; any filter it has
    is replaced) from the truth ``block`` (see the module docstring), starting from ``start`` (default
    zero: no filter), and the history: per round the range of the ratio over degrees 1 .. 2/3 lmax
    before the update (rounds numbered from ``first_round``)."""
    s = settings or CalibrationSettings()
    s.check()
    lmax = _lmax(model)
    lcut = (2 * lmax) // 3
    inits = calibration_inits(block, s.steps, s.n_inits)
    g = torch.zeros(len(model.channels), lmax, dtype=torch.float64)
    if start is not None:
        if np.shape(start) != tuple(g.shape):
            raise UserError(f"the starting gains have shape {np.shape(start)}, not {tuple(g.shape)}")
        g = torch.as_tensor(np.asarray(start, dtype=np.float64)).clone()
    history: list[dict[str, float]] = []
    for k in range(first_round, first_round + s.iters + 1):
        model.set_spectral_filter(SpectralFilter(model.latitude, model.longitude.size, g.numpy()))
        tic = time.perf_counter()
        r = spectrum_ratio(model, block, inits, s.steps, s.window)
        band = r[:, 1 : lcut + 1]
        history.append({"round": k, "ratio_min": float(band.min()), "ratio_max": float(band.max())})
        log.info(
            "calibration round %d: ratio %.3f-%.3f over degrees 1-%d (%.1f s)",
            k,
            history[-1]["ratio_min"],
            history[-1]["ratio_max"],
            lcut,
            time.perf_counter() - tic,
        )
        if k == first_round + s.iters:
            break
        step = (-0.5 * s.eta * torch.log(r.clamp(1e-6, 1e6))).clamp(-s.max_change, s.max_change)
        step[:, 0] = 0.0  # the global mean is the model's business
        g = g + step
    return g.numpy(), history


# ------------------------------------------------------------------------------------- file I/O
def write_filter(path: str | Path, channels: list[str], log_gain: np.ndarray, record: dict[str, Any]) -> Path:
    """Write ``spectral_filter.json`` into checkpoint directory ``path`` (atomically)."""
    from models.checkpoint import _atomic_write_text

    doc = {
        "version": FILTER_VERSION,
        "channels": list(channels),
        "lmax": int(np.asarray(log_gain).shape[1]),
        "log_gain": [[float(v) for v in row] for row in np.asarray(log_gain)],
        **record,
    }
    out = Path(path) / FILTER_FILE
    _atomic_write_text(out, json.dumps(doc, indent=1))
    return out


def read_filter(path: str | Path, channels: list[str] | tuple[str, ...], lmax_max: int) -> np.ndarray:
    """The gains of ``path/spectral_filter.json`` for a model with ``channels``; one-line
    :class:`UserError` when it does not fit."""
    f = Path(path) / FILTER_FILE
    try:
        doc = json.loads(f.read_text())
        g = np.asarray(doc["log_gain"], dtype=np.float64)
        names = list(doc["channels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {path}: unreadable {FILTER_FILE}: {exc}") from None
    if names != list(channels):
        raise UserError(
            f"checkpoint {path}: {FILTER_FILE} is for channels {names}, the model has {list(channels)}"
        )
    if g.ndim != 2 or g.shape[0] != len(names) or not 1 <= g.shape[1] <= lmax_max:
        raise UserError(
            f"checkpoint {path}: {FILTER_FILE} has gains of shape {g.shape}, not (channels, <= {lmax_max})"
        )
    if not np.all(np.isfinite(g)):
        raise UserError(f"checkpoint {path}: {FILTER_FILE} has non-finite gains")
    return g


def calibrate_checkpoint(
    path: str | Path,
    dataset: str = "builtin:sphere-swe",
    settings: CalibrationSettings | None = None,
    refine: bool = False,
) -> dict[str, Any]:
    """Calibrate the checkpoint at ``path`` on ``dataset``, write its ``spectral_filter.json`` and rescore
    its ``skill.json`` with the filter (same years, inits and leads as before; the unfiltered skill is
    kept in the filter's record). ``refine``: go on from the checkpoint's present filter (its history
    and unfiltered skill are kept, its settings listed under ``earlier_settings``). Returns the record."""
    from models.checkpoint import SKILL, _atomic_write_text, load_checkpoint
    from models.data import load_years, monthly_climatology, open_dataset
    from models.skill import skill_table

    s = settings or CalibrationSettings()
    s.check()
    p = Path(path)
    model = load_checkpoint(p, spectral_filter=False)
    ds = open_dataset(dataset)
    chans = list(model.channels)
    start, before = None, None
    if refine:
        if not (p / FILTER_FILE).is_file():
            raise UserError(f"checkpoint {p}: no {FILTER_FILE} to refine")
        start = read_filter(p, chans, _lmax(model))
        before = json.loads((p / FILTER_FILE).read_text())
    tic = time.perf_counter()
    first = len(before["history"]) - 1 if before else 0
    g, history = calibrate(model, load_years(ds, chans, s.years), s, start=start, first_round=first)
    seconds = time.perf_counter() - tic
    record: dict[str, Any] = {
        "dataset": dataset,
        "settings": asdict(s),
        "history": (before["history"][:-1] if before else []) + history,
        "seconds": round(seconds + (before["seconds"] if before else 0.0), 1),
        "threads": torch.get_num_threads(),
        "largest_gain": float(math.exp(float(np.max(g)))),
        "smallest_gain": float(math.exp(float(np.min(g)))),
    }
    if before is not None:
        record["earlier_settings"] = before.get("earlier_settings", []) + [before["settings"]]
    old = model.skill
    if before is not None and "skill_unfiltered" in before:
        old = before["skill_unfiltered"]
    if old is not None:
        meta_ds = model.metadata.get("dataset", {})
        valid = tuple(old.get("years") or meta_ds.get("valid_years") or (2007, 2007))
        train = tuple(meta_ds.get("train_years") or (2000, 2006))
        block = load_years(ds, chans, (int(valid[0]), int(valid[1])))
        clim = monthly_climatology(load_years(ds, chans, (int(train[0]), int(train[1]))))
        model.set_spectral_filter(SpectralFilter(model.latitude, model.longitude.size, g))
        new = skill_table(
            model, block, clim, n_inits=len(old["init_times"]), lead_steps=len(old["lead_hours"])
        )
        new["years"] = [int(valid[0]), int(valid[1])]
        new["spectral_filter"] = True
        record["skill_unfiltered"] = old
    write_filter(p, chans, g, record)
    if old is not None:
        _atomic_write_text(p / SKILL, json.dumps(new, indent=1))
    return record


__all__ = [
    "FILTER_FILE",
    "CalibrationSettings",
    "SpectralFilter",
    "calibrate",
    "calibrate_checkpoint",
    "calibration_inits",
    "degree_power",
    "read_filter",
    "spectrum_ratio",
    "write_filter",
]
