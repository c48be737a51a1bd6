"""Lexicon: every spelling maps to one canonical channel; unknown names pass through."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_catalog.lexicon import BASES, SURFACE, canonical_name, channel_info, split_channel


@pytest.mark.parametrize(
    ("name", "level", "expected"),
    [
        ("geopotential", 500, "z500"),
        ("temperature", 850, "t850"),
        ("u_component_of_wind", 250, "u250"),
        ("v_component_of_wind", 1000, "v1000"),
        ("specific_humidity", 700, "q700"),
        ("relative_humidity", 850, "r850"),
        ("vertical_velocity", 500, "w500"),
        ("vorticity", 500, "vo500"),
        ("z", 500, "z500"),
        ("t", 850.0, "t850"),
        ("q", "700", "q700"),
        ("2m_temperature", None, "t2m"),
        ("2t", None, "t2m"),
        ("t2m", None, "t2m"),
        ("10m_u_component_of_wind", None, "u10m"),
        ("10u", None, "u10m"),
        ("u10", None, "u10m"),
        ("10m_v_component_of_wind", None, "v10m"),
        ("10v", None, "v10m"),
        ("mean_sea_level_pressure", None, "msl"),
        ("msl", None, "msl"),
        ("total_column_water_vapour", None, "tcwv"),
        ("tcwv", None, "tcwv"),
        ("surface_pressure", None, "sp"),
        ("total_precipitation_6hr", None, "tp06"),
        ("geopotential_500", None, "z500"),
        ("z_500", None, "z500"),
        ("Z500", None, "z500"),
        ("temperature_850", None, "t850"),
        ("z500", None, "z500"),
        ("u500", None, "u500"),
        ("v500", None, "v500"),
        ("vo500", None, "vo500"),
        ("vorticity", None, "vo"),
        ("geopotential", None, "z"),
        ("100m_u_component_of_wind", None, "u100m"),
    ],
)
def test_aliases(name: str, level: object, expected: str) -> None:
    assert canonical_name(name, level) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["geopotential_height", "gh", "zg", "my_field", "soil_moisture", "x"])
def test_unknown_names_pass_through(name: str) -> None:
    assert canonical_name(name) == name
    assert canonical_name(name, 500) == name


def test_channel_info_units() -> None:
    assert channel_info("z500").units == "m2 s-2"
    assert channel_info("z500").long_name == "Geopotential at 500 hPa"
    assert channel_info("t850").units == "K"
    assert channel_info("q700").units == "kg kg-1"
    assert channel_info("u10m").units == "m s-1"
    assert channel_info("msl").units == "Pa"
    assert channel_info("tcwv").units == "kg m-2"
    assert channel_info("vo500").units == "s-1"
    assert channel_info("nonsense") is None
    assert split_channel("t2m") == ("t2m", None) and split_channel("u10m") == ("u10m", None)


@settings(max_examples=60, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), level=st.integers(1, 1100), sep=st.sampled_from(["", "_", ":"]))
def test_levelled_spellings_round_trip(base: str, level: int, sep: str) -> None:
    channel = canonical_name(base, level)
    assert channel == f"{base}{level}"
    assert canonical_name(f"{base}{sep}{level}") == channel or (base, level) in {("u", 10), ("v", 10)}
    assert split_channel(channel) == (base, level)
    assert canonical_name(channel) == canonical_name(canonical_name(channel))


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"xq_[a-z]{1,8}[0-9]{0,3}", fullmatch=True))
def test_unknown_random_names_unchanged(name: str) -> None:
    assert canonical_name(name) == name


@pytest.mark.parametrize("channel", sorted(SURFACE))
def test_surface_channels_are_fixed_points(channel: str) -> None:
    assert canonical_name(channel) == channel
    assert split_channel(channel) == (channel, None)
