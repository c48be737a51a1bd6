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


def _uniform(values: np.ndarray, tol: float) -> bool:
    if values.size < 3:
        return True
    d = np.diff(values)
    return bool(np.all(np.abs(d - d[0]) <= tol))


def describe_grid(latitude: np.ndarray, longitude: np.ndarray, tol: float = 1e-4) -> dict[str, object]:
    """Describe a latitude-longitude grid (any order), for messages, catalogs and checks.

    Returns a dict with ``kind`` (``"equiangular with poles"``, ``"equiangular without poles"``,
    ``"gaussian"``, ``"regional"`` or ``"irregular"``), ``nlat``, ``nlon``, ``dlat``, ``dlon``
    (degrees; None when non-uniform), latitude/longitude ranges, and flags ``global`` and ``poles``.
    Gaussian latitudes are checked against ``arcsin`` of the Gauss-Legendre nodes.
    """
    lat = np.sort(np.asarray(latitude, dtype=np.float64))
    lon = np.sort(np.mod(np.asarray(longitude, dtype=np.float64), 360.0))
    if lon.size > 2:  # a regional grid across the 0 meridian: start after the widest gap
        gaps = np.diff(np.concatenate([lon, lon[:1] + 360.0]))
        k = int(np.argmax(gaps))
        if gaps[k] > np.min(gaps) + tol and k != lon.size - 1:
            lon = np.concatenate([lon[k + 1 :], lon[: k + 1] + 360.0])
    nlat, nlon = lat.size, lon.size
    lat_uniform = _uniform(lat, tol)
    lon_uniform = _uniform(lon, tol)
    dlat = float(lat[1] - lat[0]) if nlat > 1 and lat_uniform else None
    dlon = float(lon[1] - lon[0]) if nlon > 1 and lon_uniform else None
    lon_global = dlon is not None and abs(dlon * nlon - 360.0) <= max(tol * nlon, 1e-6)
    poles = bool(nlat > 1 and abs(lat[0] + 90.0) <= tol and abs(lat[-1] - 90.0) <= tol)
    offset = bool(
        dlat is not None and abs(lat[0] + 90.0 - dlat / 2) <= tol and abs(90.0 - dlat / 2 - lat[-1]) <= tol
    )
    gaussian = False
    if dlat is None and nlat > 2:
        nodes = np.rad2deg(np.arcsin(np.polynomial.legendre.leggauss(nlat)[0]))
        gaussian = bool(np.allclose(np.sort(nodes), lat, atol=1e-3))
    if dlat is not None and poles:
        kind = "equiangular with poles"
    elif offset:
        kind = "equiangular without poles"
    elif gaussian:
        kind = "gaussian"
    elif dlat is not None and dlon is not None:
        kind = "regional"
    else:
        kind = "irregular"
    lat_global = poles or offset or gaussian
    return {
        "kind": kind,
        "nlat": int(nlat),
        "nlon": int(nlon),
        "dlat": dlat,
        "dlon": dlon,
        "latitude_range": [float(lat[0]), float(lat[-1])] if nlat else [],
        "longitude_range": [float(lon[0]), float(np.mod(lon[-1], 360.0))] if nlon else [],
        "global": bool(lat_global and lon_global),
        "poles": poles,
    }
