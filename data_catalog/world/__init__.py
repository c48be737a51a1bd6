"""The embedded physical world ``builtin:sphere-swe``: forced-dissipative shallow water on the sphere.

A stand-in for ERA5 that makes every stage runnable offline (see docs/world.md)::

    from data_catalog.world import world_store
    path = world_store()          # builds once into $WXENS_CACHE, then reuses
    ds = xarray.open_zarr(path)   # z500, u500, v500, vo500 on the WeatherBench2 64x32 grid
"""

from data_catalog.world.model import ShallowWaterModel, WorldParams
from data_catalog.world.store import (
    SPLITS,
    VARIABLES,
    WORLD_VERSION,
    build_world,
    cache_root,
    cached_world,
    is_complete,
    simulate,
    world_spec,
    world_store,
)

__all__ = [
    "SPLITS",
    "VARIABLES",
    "WORLD_VERSION",
    "ShallowWaterModel",
    "WorldParams",
    "build_world",
    "cache_root",
    "cached_world",
    "is_complete",
    "simulate",
    "world_spec",
    "world_store",
]
