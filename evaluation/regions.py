"""Regions for scoring: masks, area weights and region-weighted means on latitude-longitude grids.

Predefined regions follow WeatherBench2 (Rasp et al. 2024): ``global``, ``nhextratropics``
(latitude >= 20N), ``shextratropics`` (latitude <= 20S), ``tropics`` (20S <= latitude <= 20N; a grid row
exactly at +-20 belongs to both the tropics and an extratropical band), plus named boxes (``europe``,
``north_america``, ...) and user-defined latitude/longitude boxes with longitude wrap-around
(``lon_min > lon_max`` crosses the 0/360 meridian, e.g. ``Region("atlantic", 20, 70, 300, 20)``).

Longitudes may be given in [0, 360) or [-180, 180); boxes are compared modulo 360.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data_catalog.errors import UserError
from data_catalog.grid import area_weights

log = logging.getLogger(__name__)

__all__ = ["REGIONS", "Region", "get_region", "region_mask", "region_mean", "region_weights"]


@dataclass(frozen=True)
class Region:
    """A latitude band times a longitude sector (inclusive bounds, degrees).

    ``lon_min > lon_max`` means the sector wraps through 0/360 (e.g. 340 -> 40). ``lon_min == lon_max``
    is rejected; use ``0, 360`` for all longitudes.
    """

    name: str
    lat_min: float = -90.0
    lat_max: float = 90.0
    lon_min: float = 0.0
    lon_max: float = 360.0

    def __post_init__(self) -> None:
        if not -90.0 <= self.lat_min <= self.lat_max <= 90.0:
            raise UserError(f"region {self.name!r}: need -90 <= lat_min <= lat_max <= 90")
        if self.lon_min == self.lon_max:
            raise UserError(f"region {self.name!r}: empty longitude sector (lon_min == lon_max)")

    @property
    def all_longitudes(self) -> bool:
        return self.lon_max - self.lon_min >= 360.0

    def lat_mask(self, latitude: np.ndarray) -> np.ndarray:
        lat = np.asarray(latitude, dtype=np.float64)
        return (lat >= self.lat_min - 1e-9) & (lat <= self.lat_max + 1e-9)

    def lon_mask(self, longitude: np.ndarray) -> np.ndarray:
        lon = np.mod(np.asarray(longitude, dtype=np.float64), 360.0)
        if self.all_longitudes:
            return np.ones(lon.shape, dtype=bool)
        a, b = self.lon_min % 360.0, self.lon_max % 360.0
        if self.lon_max == 360.0:
            b = 360.0
        if a <= b:
            return (lon >= a - 1e-9) & (lon <= b + 1e-9)
        return (lon >= a - 1e-9) | (lon <= b + 1e-9)


REGIONS: dict[str, Region] = {
    r.name: r
    for r in (
        Region("global"),
        Region("nhextratropics", 20.0, 90.0),
        Region("shextratropics", -90.0, -20.0),
        Region("tropics", -20.0, 20.0),
        Region("arctic", 60.0, 90.0),
        Region("antarctic", -90.0, -60.0),
        Region("europe", 35.0, 75.0, 347.5, 42.5),
        Region("north_america", 25.0, 60.0, 240.0, 300.0),
        Region("north_atlantic", 25.0, 65.0, 270.0, 350.0),
        Region("north_pacific", 25.0, 60.0, 145.0, 237.5),
        Region("east_asia", 25.0, 60.0, 102.5, 150.0),
        Region("australia", -45.0, -12.5, 120.0, 155.0),
    )
}


def get_region(region: str | Region | Sequence[float]) -> Region:
    """A :class:`Region` from a name in :data:`REGIONS`, a Region, or ``(lat_min, lat_max, lon_min,
    lon_max)``."""
    if isinstance(region, Region):
        return region
    if isinstance(region, str):
        try:
            return REGIONS[region]
        except KeyError:
            raise UserError(f"unknown region {region!r}; known: {', '.join(sorted(REGIONS))}") from None
    vals = [float(v) for v in region]
    if len(vals) != 4:
        raise UserError("a region box is (lat_min, lat_max, lon_min, lon_max)")
    return Region("box", *vals)


def region_mask(
    latitude: np.ndarray, longitude: np.ndarray, region: str | Region | Sequence[float]
) -> np.ndarray:
    """Boolean mask of shape ``(nlat, nlon)``: True inside the region."""
    r = get_region(region)
    return r.lat_mask(latitude)[:, None] & r.lon_mask(longitude)[None, :]


def region_weights(
    latitude: np.ndarray, longitude: np.ndarray, region: str | Region | Sequence[float] = "global"
) -> np.ndarray:
    """Area weights ``(nlat, nlon)`` restricted to the region and normalised to mean 1 over it (zero
    outside). ``sum(w * x) / sum(w)`` is then the area-weighted regional mean."""
    mask = region_mask(latitude, longitude, region)
    if not mask.any():
        raise UserError(f"region {get_region(region).name!r} contains no grid point")
    w = area_weights(np.asarray(latitude))[:, None] * mask
    return w / w[mask].mean()


def region_mean(
    field: Any,
    latitude: np.ndarray,
    longitude: np.ndarray,
    region: str | Region | Sequence[float] = "global",
    lat_axis: int = -2,
    lon_axis: int = -1,
) -> Any:
    """Area-weighted mean over a region of a numpy array or torch tensor (NaN points carry no weight).

    ``mean = sum_p w_p x_p / sum_p w_p`` with ``w`` from :func:`region_weights`; reduces ``lat_axis`` and
    ``lon_axis``, keeps every other axis.
    """
    w = region_weights(latitude, longitude, region)
    if isinstance(field, torch.Tensor):
        x = torch.movedim(field, (lat_axis, lon_axis), (-2, -1)).to(torch.float64)
        wt = torch.as_tensor(w, device=x.device)
        ok = ~torch.isnan(x)
        num = torch.where(ok, x, 0.0).mul(wt).sum(dim=(-2, -1))
        den = (ok * wt).sum(dim=(-2, -1))
        return (num / den).to(field.dtype if field.is_floating_point() else torch.float64)
    arr = np.asarray(field)
    xn = np.moveaxis(arr.astype(np.float64), (lat_axis, lon_axis), (-2, -1))
    okn = ~np.isnan(xn)
    num_n = (np.where(okn, xn, 0.0) * w).sum(axis=(-2, -1))
    den_n = (okn * w).sum(axis=(-2, -1))
    out = num_n / den_n
    return out.astype(arr.dtype) if np.issubdtype(arr.dtype, np.floating) else out
