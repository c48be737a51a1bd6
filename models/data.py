"""Reading training and evaluation data into memory for the models layer.

Data come through :func:`data_catalog.readers.open_reanalysis` (canonical form: latitude descending,
longitude ascending, one float32 variable per channel). An in-memory canonical ``xarray.Dataset`` is
accepted too (tests, notebooks).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from data_catalog.errors import UserError

log = logging.getLogger(__name__)

#: world split by years (docs/architecture.md)
DEFAULT_TRAIN_YEARS = (2000, 2006)
DEFAULT_VALID_YEARS = (2007, 2007)
DEFAULT_TEST_YEARS = (2008, 2009)


def open_dataset(dataset: str | xr.Dataset) -> xr.Dataset:
    """Open ``dataset`` (an id such as ``builtin:sphere-swe``, a path, or a Dataset) in canonical form."""
    if isinstance(dataset, xr.Dataset):
        ds = dataset
    else:
        from data_catalog.readers import open_reanalysis

        ds = open_reanalysis(dataset)
    lat = np.asarray(ds["latitude"].values)
    if lat.size > 1 and not np.all(np.diff(lat) < 0):
        raise UserError("dataset latitude must be descending (north to south); open it with open_reanalysis")
    return ds


def dataset_id(dataset: str | xr.Dataset) -> str:
    """A recordable name for ``dataset``."""
    if isinstance(dataset, xr.Dataset):
        return str(dataset.attrs.get("dataset_id", dataset.attrs.get("source", "in-memory")))
    return str(dataset)


def channels_of(ds: xr.Dataset) -> list[str]:
    """Data variables with dims ``(time, latitude, longitude)``, in dataset order."""
    return [str(v) for v, da in ds.data_vars.items() if tuple(da.dims) == ("time", "latitude", "longitude")]


@dataclass
class Block:
    """A contiguous block of states in memory: ``data (T, C, lat, lon)`` float32 and its times."""

    data: torch.Tensor
    times: np.ndarray  # datetime64[ns], (T,)
    segment_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def window_starts(self, k: int) -> np.ndarray:
        """Indices ``t`` whose window ``t .. t+k`` stays inside one trajectory (no restart inside)."""
        t = np.arange(len(self) - k)
        ok = np.ones(t.size, dtype=bool)
        for s in self.segment_starts:
            ok &= ~((t < s) & (s <= t + k))
        return t[ok]


def load_years(ds: xr.Dataset, channels: list[str], years: tuple[int, int]) -> Block:
    """Load ``channels`` for the inclusive year range into a float32 tensor ``(T, C, lat, lon)``."""
    sel = ds[channels].sel(time=slice(f"{years[0]}-01-01", f"{years[1]}-12-31T23:59:59"))
    n = sel.sizes["time"]
    if n < 2:
        raise UserError(f"dataset has {n} time steps in years {years[0]}-{years[1]}; need at least 2")
    first = sel[channels[0]]
    arr = np.empty((n, len(channels), *first.shape[1:]), dtype=np.float32)
    for i, c in enumerate(channels):  # one channel at a time: no second full-size copy
        arr[:, i] = np.asarray(sel[c].values, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise UserError(f"dataset has non-finite values in years {years[0]}-{years[1]}")
    times = np.asarray(sel["time"].values).astype("datetime64[ns]")
    return Block(torch.from_numpy(np.ascontiguousarray(arr)), times, trajectory_starts(ds, times))


def trajectory_starts(ds: xr.Dataset, times: np.ndarray) -> np.ndarray:
    """Indices into ``times`` where an independent trajectory starts (store attribute ``trajectory_starts``,
    a JSON list of times, as the embedded world records: each of its years is a separate run)."""
    raw = ds.attrs.get("trajectory_starts")
    if not raw:
        return np.zeros(0, dtype=int)
    try:
        starts = np.array(json.loads(raw) if isinstance(raw, str) else list(raw), dtype="datetime64[ns]")
    except (ValueError, TypeError):
        log.warning("ignoring unreadable trajectory_starts attribute")
        return np.zeros(0, dtype=int)
    idx = np.searchsorted(times, starts)
    keep = (idx > 0) & (idx < times.size)
    keep[keep] &= times[idx[keep]] == starts[keep]
    return np.unique(idx[keep])


def time_step_of(times: np.ndarray) -> np.timedelta64:
    """The (single) spacing of ``times``; raises UserError when irregular."""
    d = np.unique(np.diff(times))
    if d.size != 1:
        raise UserError("dataset times are not regularly spaced")
    return d[0]


def statistics(block: Block, area_w: np.ndarray, chunk: int = 256) -> dict[str, Any]:
    """Per-channel area-weighted mean/std of the state and std of the one-step tendency.

    ``mu_c = sum_t,i,j w_i x / sum w``, ``sigma_c^2`` likewise of ``(x - mu)^2``; ``sigma_d`` the same
    for ``x_{t+1} - x_t`` (mean not removed: tendencies are centred on zero). Two passes in float64
    over ``chunk`` times at a time, so the working memory is a few chunks, not several float64 copies
    of the whole block (7.5 GB for 7 years x 12 channels at 64x32 before).
    """
    x = block.data
    nt = x.shape[0]
    w = torch.as_tensor(area_w, dtype=torch.float64).view(1, 1, -1, 1)
    field_w = float(w.sum()) * x.shape[-1]  # sum of the weights over one field
    zero = torch.zeros(x.shape[1], dtype=torch.float64)
    total, sq, tend = zero.clone(), zero.clone(), zero.clone()
    for a in range(0, nt, chunk):
        total += (x[a : a + chunk].double() * w).sum(dim=(0, 2, 3))
    mean = total / (field_w * nt)
    for a in range(0, nt, chunk):
        xc = x[a : a + chunk].double()
        sq += ((xc - mean.view(1, -1, 1, 1)) ** 2 * w).sum(dim=(0, 2, 3))
        d = x[a + 1 : a + chunk + 1].double() - x[a : min(a + chunk, nt - 1)].double()
        tend += (d**2 * w).sum(dim=(0, 2, 3))
    var = sq / (field_w * nt)
    tvar = tend / (field_w * (nt - 1))
    return {
        "mean": mean.tolist(),
        "std": var.sqrt().clamp_min(1e-12).tolist(),
        "tendency_std": tvar.sqrt().clamp_min(1e-12).tolist(),
    }


def monthly_climatology(block: Block) -> torch.Tensor:
    """Per-gridpoint mean state for each calendar month, ``(12, C, lat, lon)``."""
    months = block.times.astype("datetime64[M]").astype(int) % 12
    out = torch.zeros((12, *block.data.shape[1:]), dtype=torch.float64)
    for m in range(12):
        idx = np.nonzero(months == m)[0]
        if idx.size:
            out[m] = block.data[torch.from_numpy(idx)].double().mean(dim=0)
        else:  # a short block: fall back to the overall mean
            out[m] = block.data.double().mean(dim=0)
    return out.float()


def month_index(times: np.ndarray) -> np.ndarray:
    """Calendar month (0..11) of each time."""
    return np.asarray(times).astype("datetime64[M]").astype(int) % 12


def static_fields(ds: xr.Dataset, names: list[str], latitude: np.ndarray) -> np.ndarray | None:
    """Static ``(latitude, longitude)`` fields (data variables or coordinates), each normalised to
    area-weighted mean 0 and standard deviation 1; ``None`` when ``names`` is empty."""
    if not names:
        return None
    from data_catalog.grid import area_weights

    w = area_weights(latitude)[:, None]
    out = []
    for n in names:
        if n not in ds.variables or tuple(ds[n].dims) != ("latitude", "longitude"):
            raise UserError(
                f"static input field '{n}' not found in the dataset (need a (latitude, longitude) variable)"
            )
        f = np.asarray(ds[n].values, dtype=np.float64)
        mu = (f * w).mean() / w.mean()
        sd = np.sqrt(((f - mu) ** 2 * w).mean() / w.mean())
        out.append((f - mu) / (sd if sd > 0 else 1.0))
    return np.stack(out).astype(np.float32)
