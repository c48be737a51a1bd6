"""The QG world's store (data_catalog.world.qg_store): WeatherBench2 layout with levels, fields that
obey the model's exact relations, deterministic builds."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from data_catalog.readers import open_reanalysis
from data_catalog.world.qg import QGParams
from data_catalog.world.qg_store import G0, LEVELS, REFERENCE_HEIGHT, QGWorldSpec, build_qg_world
from tests.data_catalog.test_world import _ddlat_spectral, _ddlon

P = QGParams()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qg") / "qg.zarr"
    return build_qg_world(path, QGWorldSpec(years=2, days=2, spinup_days=5.0))


def test_layout_and_channels(store: Path) -> None:
    """WB2 names with a ``level`` dim (hPa); 2 trajectories x 2 days x 4 outputs; the readers open it
    as 12 channels ``z200 ... vo800``, latitude descending; building over it is refused."""
    ds = xr.open_zarr(store)
    assert ds.geopotential.dims == ("time", "level", "latitude", "longitude")
    assert list(ds.level.values) == list(LEVELS) and ds.level.attrs["units"] == "hPa"
    assert ds.sizes["time"] == 16 and str(ds.time.values[8])[:10] == "2001-01-01"
    assert ds.attrs["world_version"] == "qg3-v1"
    opened = open_reanalysis(str(store))
    names = [f"{v}{lv}" for v in ("z", "u", "v", "vo") for lv in LEVELS]
    assert sorted(n for n in opened.data_vars if n != "orography") == sorted(names)
    assert opened.latitude.values[0] > opened.latitude.values[-1]
    # each year is its own run: training windows and skill inits never straddle the restart
    from models.data import load_years

    block = load_years(opened, ["z500"], (2000, 2001))
    assert block.segment_starts.tolist() == [8]
    assert 5 not in block.window_starts(3).tolist() and 4 in block.window_starts(3).tolist()
    with pytest.raises(UserError, match="already exists"):
        build_qg_world(store, QGWorldSpec(years=1, days=1, spinup_days=1.0))


def test_fields_obey_the_model_relations(store: Path) -> None:
    """Exact QG relations of the stored fields (spectral derivatives, T21 band limit): the wind is
    geostrophic with the constant ``f0``, ``u = -(1 / (f0 a)) dz / dphi``, non-divergent, and its curl
    is the stored vorticity, each to 1e-4 relative RMS; the area mean of each level's geopotential is
    its standard-atmosphere reference (the streamfunction has no global mean)."""
    ds = xr.open_zarr(store).isel(time=slice(0, None, 5))
    lat = ds.latitude.values
    cos = np.cos(np.deg2rad(lat))[:, None]
    a = P.radius
    w = area_weights(lat)[:, None]
    for i, lv in enumerate(LEVELS):
        z, u, v, vo = (
            ds[k].isel(level=i).values.astype(np.float64)
            for k in ("geopotential", "u_component_of_wind", "v_component_of_wind", "vorticity")
        )

        def rel(x: np.ndarray, ref: np.ndarray) -> float:
            return float(np.sqrt(np.mean(x**2)) / np.sqrt(np.mean(ref**2)))

        ug = -_ddlat_spectral(z, lat, P.lmax) / (P.f0 * a)
        assert rel(ug - u, u) < 1e-4
        curl = (_ddlon(v) - _ddlat_spectral(u * cos, lat, P.lmax + 1)) / (a * cos)
        assert rel(curl - vo, vo) < 1e-4
        div = (_ddlon(u) + _ddlat_spectral(v * cos, lat, P.lmax + 1)) / (a * cos)
        assert rel(div, vo) < 1e-4
        anomaly = z - G0 * REFERENCE_HEIGHT[lv]
        mean = (anomaly * w).mean(axis=(-2, -1))
        assert np.all(np.abs(mean) < 0.01 * anomaly.std()), (lv, mean)
    assert math.isclose(float(ds.orography.max()), 2000.0, rel_tol=0.3)  # the tallest mountain, truncated


def test_build_is_deterministic(store: Path, tmp_path: Path) -> None:
    again = build_qg_world(tmp_path / "again.zarr", QGWorldSpec(years=2, days=2, spinup_days=5.0))
    a, b = xr.open_zarr(store), xr.open_zarr(again)
    for name in ("geopotential", "vorticity"):
        assert np.array_equal(a[name].values, b[name].values)
    assert a.attrs["world_hash"] == b.attrs["world_hash"]


def assert_cached_once(get: Callable[[bool], Path], name: str, prefix: str, cache: Path) -> Path:
    """``get(build)`` is a cached builtin store: ``build=False`` before the first build is a one-line
    error naming ``builtin:<name>``; the first call builds into ``cache`` as ``<prefix><hash>.zarr``;
    the second reuses it without writing."""
    with pytest.raises(UserError, match=rf"not built yet \(open builtin:{name} once"):
        get(False)
    path = get(True)
    assert path.parent == cache and path.name.startswith(prefix)
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert get(True) == path and (path / "zarr.json").stat().st_mtime_ns == stamp
    return path


def test_builtin_qg3_is_cached_and_opens(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``qg_world_store`` builds once into ``$WXENS_CACHE`` and then reuses the store (no rebuild);
    ``build=False`` on a missing store is a one-line error naming ``builtin:qg3``; ``builtin:qg3`` and
    the catalog entry ``qg3`` open the world as 12 level channels."""
    from data_catalog.world import qg_store

    monkeypatch.setenv("WXENS_CACHE", str(tmp_path / "cache"))
    tiny = QGWorldSpec(years=1, days=1, spinup_days=1.0)
    assert_cached_once(
        lambda build: qg_store.qg_world_store(build=build, spec=tiny), "qg3", "qg3-v1-", tmp_path / "cache"
    )
    monkeypatch.setattr(qg_store, "qg_world_store", lambda build=True, spec=None: store)
    for source in ("builtin:qg3", "qg3"):
        ds = open_reanalysis(source)
        assert "z500" in ds and "vo800" in ds and ds.sizes["time"] == 16
