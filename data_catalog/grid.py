"""Latitude-longitude grid helpers: cell bounds, area weights, grid descriptions.

Canonical order (see docs/architecture.md): latitude descending (north to south), longitude ascending
in [0, 360).
"""

from __future__ import annotations

import numpy as np


def latitude_bounds(latitude: np.ndarray) -> np.ndarray:
    """Cell edges (degrees) for latitude centres in either order: midpoints between neighbours,
    closed by the poles. Works for grids with poles (the pole cell is a half cell) and without.

    Returns an array of shape ``(nlat, 2)`` with ``[lower, upper]`` edges per cell.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    order = np.argsort(lat)
    s = lat[order]
    mids = 0.5 * (s[1:] + s[:-1])
    edges = np.concatenate([[-90.0], mids, [90.0]])
    b = np.stack([edges[:-1], edges[1:]], axis=-1)
    out = np.empty_like(b)
    out[order] = b
    return out


def area_weights(latitude: np.ndarray) -> np.ndarray:
    """Area weight of each latitude row from its cell bounds, normalised to mean 1.

    ``w_i = sin(phi_upper) - sin(phi_lower)``, scaled so that ``mean(w) == 1``; exact for
    equiangular grids with or without poles (a pole row gets its half cell, not zero).
    """
    b = np.deg2rad(latitude_bounds(latitude))
    w = np.sin(b[:, 1]) - np.sin(b[:, 0])
    return w / w.mean()
