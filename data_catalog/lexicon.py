"""Name lexicon: every spelling of a weather variable -> one canonical short channel name.

Canonical channels are the short names ERA5-trained SFNO checkpoints use: a *base* code plus the
pressure level in hPa for upper-air fields (``z500``, ``t850``, ``q700``, ``vo500``) and a fixed name
for single-level fields (``t2m``, ``u10m``, ``v10m``, ``msl``, ``tcwv``, ``sp``).

Recognised spellings (see docs/data.md for the table):

* WeatherBench2 / ARCO-ERA5 long names (``geopotential`` + level -> ``z<level>``,
  ``2m_temperature`` -> ``t2m``, ``10m_u_component_of_wind`` -> ``u10m``, ...);
* ERA5 GRIB short names and their cfgrib spellings (``z``, ``t``, ``2t``/``t2m``, ``10u``/``u10``, ...);
* names carrying the level (``geopotential_500``, ``z_500``, ``z500``, ``z:500``);
* the embedded world's names (``z500``, ``u500``, ``v500``, ``vo500``; ``vorticity`` -> ``vo``).

Unknown names pass through unchanged (lower-level code keeps them as they are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BASES",
    "SURFACE",
    "ChannelInfo",
    "base_name",
    "canonical_name",
    "channel_info",
    "is_level_base",
    "holds_level",
    "split_channel",
    "wb2_name",
]


@dataclass(frozen=True)
class ChannelInfo:
    """CF description of a canonical base (upper air) or single-level channel."""

    long_name: str
    units: str
    standard_name: str = ""


#: Upper-air bases: code -> description (the channel adds the level, e.g. ``z`` + 500 -> ``z500``).
BASES: dict[str, ChannelInfo] = {
    "z": ChannelInfo("Geopotential", "m2 s-2", "geopotential"),
    "t": ChannelInfo("Temperature", "K", "air_temperature"),
    "u": ChannelInfo("U component of wind", "m s-1", "eastward_wind"),
    "v": ChannelInfo("V component of wind", "m s-1", "northward_wind"),
    "w": ChannelInfo("Vertical velocity", "Pa s-1", "lagrangian_tendency_of_air_pressure"),
    "q": ChannelInfo("Specific humidity", "kg kg-1", "specific_humidity"),
    "r": ChannelInfo("Relative humidity", "%", "relative_humidity"),
    "vo": ChannelInfo("Relative vorticity", "s-1", "atmosphere_relative_vorticity"),
    "d": ChannelInfo("Divergence", "s-1", "divergence_of_wind"),
    "pv": ChannelInfo("Potential vorticity", "K m2 kg-1 s-1", "ertel_potential_vorticity"),
    "ws": ChannelInfo("Wind speed", "m s-1", "wind_speed"),
    "clwc": ChannelInfo("Specific cloud liquid water content", "kg kg-1"),
    "ciwc": ChannelInfo("Specific cloud ice water content", "kg kg-1"),
    "cc": ChannelInfo("Fraction of cloud cover", "1", "cloud_area_fraction_in_atmosphere_layer"),
    "o3": ChannelInfo("Ozone mass mixing ratio", "kg kg-1", "mass_fraction_of_ozone_in_air"),
}

#: Single-level channels: canonical name -> description.
SURFACE: dict[str, ChannelInfo] = {
    "t2m": ChannelInfo("2 metre temperature", "K", "air_temperature"),
    "d2m": ChannelInfo("2 metre dewpoint temperature", "K", "dew_point_temperature"),
    "u10m": ChannelInfo("10 metre U wind component", "m s-1", "eastward_wind"),
    "v10m": ChannelInfo("10 metre V wind component", "m s-1", "northward_wind"),
    "ws10m": ChannelInfo("10 metre wind speed", "m s-1", "wind_speed"),
    "u100m": ChannelInfo("100 metre U wind component", "m s-1", "eastward_wind"),
    "v100m": ChannelInfo("100 metre V wind component", "m s-1", "northward_wind"),
    "msl": ChannelInfo("Mean sea level pressure", "Pa", "air_pressure_at_mean_sea_level"),
    "sp": ChannelInfo("Surface pressure", "Pa", "surface_air_pressure"),
    "tcwv": ChannelInfo(
        "Total column vertically-integrated water vapour",
        "kg m-2",
        "lwe_thickness_of_atmosphere_mass_content_of_water_vapor",
    ),
    "tcw": ChannelInfo("Total column water", "kg m-2"),
    "tp": ChannelInfo("Total precipitation", "m", "precipitation_amount"),
    "tp06": ChannelInfo("Total precipitation over 6 hours", "m", "precipitation_amount"),
    "tp12": ChannelInfo("Total precipitation over 12 hours", "m", "precipitation_amount"),
    "tp24": ChannelInfo("Total precipitation over 24 hours", "m", "precipitation_amount"),
    "sst": ChannelInfo("Sea surface temperature", "K", "sea_surface_temperature"),
    "skt": ChannelInfo("Skin temperature", "K", "surface_temperature"),
    "tcc": ChannelInfo("Total cloud cover", "1", "cloud_area_fraction"),
    "tisr": ChannelInfo("TOA incident solar radiation", "J m-2", "toa_incoming_shortwave_flux"),
    "lsm": ChannelInfo("Land-sea mask", "1", "land_binary_mask"),
    "zs": ChannelInfo("Geopotential at the surface", "m2 s-2", "surface_geopotential"),
    "ivt": ChannelInfo("Integrated vapour transport", "kg m-1 s-1"),
}

# Every spelling (lower case) of an upper-air base.
_BASE_ALIASES: dict[str, str] = {
    # WeatherBench2 / ARCO-ERA5 long names
    "geopotential": "z",
    "temperature": "t",
    "air_temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "eastward_wind": "u",
    "northward_wind": "v",
    "vertical_velocity": "w",
    "specific_humidity": "q",
    "relative_humidity": "r",
    "vorticity": "vo",
    "relative_vorticity": "vo",
    "divergence": "d",
    "potential_vorticity": "pv",
    "wind_speed": "ws",
    "specific_cloud_liquid_water_content": "clwc",
    "specific_cloud_ice_water_content": "ciwc",
    "fraction_of_cloud_cover": "cc",
    "ozone_mass_mixing_ratio": "o3",
    # ERA5 short names (and a few CMIP-style ones)
    "z": "z",
    "t": "t",
    "ta": "t",
    "u": "u",
    "ua": "u",
    "v": "v",
    "va": "v",
    "w": "w",
    "q": "q",
    "hus": "q",
    "r": "r",
    "hur": "r",
    "vo": "vo",
    "d": "d",
    "pv": "pv",
    "ws": "ws",
    "clwc": "clwc",
    "ciwc": "ciwc",
    "cc": "cc",
    "o3": "o3",
}
# Geopotential *height* (``gh``, ``zg``, m) is deliberately absent: it is not geopotential (m2 s-2).

# Every spelling (lower case) of a single-level channel.
_SURFACE_ALIASES: dict[str, str] = {
    "2m_temperature": "t2m",
    "2t": "t2m",
    "t2m": "t2m",
    "tas": "t2m",
    "2m_dewpoint_temperature": "d2m",
    "2d": "d2m",
    "d2m": "d2m",
    "10m_u_component_of_wind": "u10m",
    "10u": "u10m",
    "u10": "u10m",
    "u10m": "u10m",
    "uas": "u10m",
    "10m_v_component_of_wind": "v10m",
    "10v": "v10m",
    "v10": "v10m",
    "v10m": "v10m",
    "vas": "v10m",
    "10m_wind_speed": "ws10m",
    "10si": "ws10m",
    "si10": "ws10m",
    "ws10m": "ws10m",
    "100m_u_component_of_wind": "u100m",
    "100u": "u100m",
    "u100": "u100m",
    "u100m": "u100m",
    "100m_v_component_of_wind": "v100m",
    "100v": "v100m",
    "v100": "v100m",
    "v100m": "v100m",
    "mean_sea_level_pressure": "msl",
    "msl": "msl",
    "mslp": "msl",
    "psl": "msl",
    "prmsl": "msl",
    "surface_pressure": "sp",
    "sp": "sp",
    "ps": "sp",
    "total_column_water_vapour": "tcwv",
    "total_column_water_vapor": "tcwv",
    "tcwv": "tcwv",
    "prw": "tcwv",
    "total_column_water": "tcw",
    "tcw": "tcw",
    "total_precipitation": "tp",
    "tp": "tp",
    "total_precipitation_6hr": "tp06",
    "tp06": "tp06",
    "tp6": "tp06",
    "total_precipitation_12hr": "tp12",
    "tp12": "tp12",
    "total_precipitation_24hr": "tp24",
    "tp24": "tp24",
    "sea_surface_temperature": "sst",
    "sst": "sst",
    "skin_temperature": "skt",
    "skt": "skt",
    "total_cloud_cover": "tcc",
    "tcc": "tcc",
    "toa_incident_solar_radiation": "tisr",
    "tisr": "tisr",
    "land_sea_mask": "lsm",
    "lsm": "lsm",
    "geopotential_at_surface": "zs",
    "zs": "zs",
    "integrated_vapor_transport": "ivt",
    "integrated_vapour_transport": "ivt",
    "ivt": "ivt",
}

# <base><sep><level>[hPa]: "z500", "z_500", "geopotential_500", "z:500", "t850hPa", "o3_1"
_LEVEL_PART = re.compile(r"^[_:\-]?(?P<level>\d+(?:\.\d+)?)(?:hpa)?$")


def _split_levelled(key: str, aliases: dict[str, str]) -> tuple[str, str] | None:
    """First split of ``key`` into a known base spelling and a level (``"o31"`` -> o3, 1)."""
    for i in range(1, len(key)):
        m = _LEVEL_PART.match(key[i:])
        if m is not None and key[:i] in aliases:
            return aliases[key[:i]], m.group("level")
    return None


def _fmt_level(level: float | int | str) -> str:
    value = float(level)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def base_name(name: str) -> str | None:
    """Canonical upper-air base code for ``name`` (``"geopotential"`` -> ``"z"``), else ``None``."""
    return _BASE_ALIASES.get(name.strip().lower())


def is_level_base(name: str) -> bool:
    """True when ``name`` spells an upper-air variable without a level (``temperature``, ``t``)."""
    return base_name(name) is not None


def canonical_name(name: str, level: float | int | str | None = None) -> str:
    """Canonical channel name of a variable spelling, with its pressure level (hPa) if it has one.

    ``canonical_name("geopotential", 500) == "z500"``, ``canonical_name("z_500") == "z500"``,
    ``canonical_name("10m_u_component_of_wind") == "u10m"``. A bare upper-air name without a level
    returns its base code (``"temperature"`` -> ``"t"``). Unknown names pass through unchanged.
    """
    key = name.strip().lower()
    if level is not None:
        base = _BASE_ALIASES.get(key)
        if base is not None:
            return f"{base}{_fmt_level(level)}"
        return name
    if key in _SURFACE_ALIASES:
        return _SURFACE_ALIASES[key]
    if key in _BASE_ALIASES:
        return _BASE_ALIASES[key]
    split = _split_levelled(key, _BASE_ALIASES)
    if split is not None:
        return f"{split[0]}{_fmt_level(split[1])}"
    return name


def split_channel(channel: str) -> tuple[str, int | float | None]:
    """Split a canonical channel into ``(base, level)``; single-level channels give ``(name, None)``.

    ``split_channel("z500") == ("z", 500)``, ``split_channel("t2m") == ("t2m", None)``.
    """
    if channel in SURFACE:
        return channel, None
    for i in range(1, len(channel)):
        if channel[:i] in BASES and re.fullmatch(r"\d+(?:\.\d+)?", channel[i:]):
            value = float(channel[i:])
            return channel[:i], int(value) if value.is_integer() else value
    return channel, None


def channel_info(channel: str) -> ChannelInfo | None:
    """CF description of a canonical channel (``z500`` -> "Geopotential at 500 hPa", m2 s-2)."""
    if channel in SURFACE:
        return SURFACE[channel]
    base, level = split_channel(channel)
    if level is None or base not in BASES:
        return None
    info = BASES[base]
    return ChannelInfo(f"{info.long_name} at {_fmt_level(level)} hPa", info.units, info.standard_name)


def _first_spelling(aliases: dict[str, str]) -> dict[str, str]:
    # each canonical code's first spelling in its alias table: the WeatherBench2 / ARCO long name
    out: dict[str, str] = {}
    for spelling, code in aliases.items():
        out.setdefault(code, spelling)
    return out


#: Canonical code -> WeatherBench2 variable name (``z`` -> ``geopotential``, ``t2m`` -> ``2m_temperature``).
WB2_NAMES: dict[str, str] = {**_first_spelling(_BASE_ALIASES), **_first_spelling(_SURFACE_ALIASES)}


def wb2_name(channel: str) -> tuple[str, int | float | None]:
    """WeatherBench2 variable name and pressure level of a canonical channel.

    ``wb2_name("z500") == ("geopotential", 500)``, ``wb2_name("t2m") == ("2m_temperature", None)``;
    an unknown channel keeps its name (``("noise", None)``). The inverse of :func:`canonical_name`.
    """
    base, level = split_channel(channel)
    return WB2_NAMES.get(base, base), level


def holds_level(attrs: dict, level: float) -> bool:
    """Whether a levelled variable holds data at ``level``: a wxens forecast store lists the levels it
    wrote in the variable's ``wxens_levels`` attribute (the others are NaN fill); without it, all."""
    held = attrs.get("wxens_levels")
    return held is None or any(float(h) == float(level) for h in held)
