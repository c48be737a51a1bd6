"""Catalog loading: default entries, user files, path safety, malformed files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_catalog import UserError, load_catalog, open_reanalysis
from data_catalog.catalog import CatalogEntry, parse_catalog
from tests.data_catalog.dc_stores import wb2_dataset, write


def test_default_catalog_entries() -> None:
    cat = load_catalog()
    assert {"sphere-swe", "era5-wb2-64x32", "era5-wb2-240x121", "era5-wb2-1440x721", "arco-era5"} <= set(cat)
    swe = cat["sphere-swe"]
    assert swe.location == "builtin:sphere-swe" and not swe.remote
    assert swe.variables == ("z500", "u500", "v500", "vo500")
    assert (swe.time_start, swe.time_end, swe.time_step) == ("2000-01-01T00", "2009-12-31T18", "6h")
    wb2 = cat["era5-wb2-64x32"]
    assert wb2.remote and wb2.location == (
        "gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32_equiangular_conservative.zarr"
    )
    assert wb2.resolved_location() == wb2.location
    assert cat["arco-era5"].remote and cat["arco-era5"].time_end is None


def _write_catalog(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.yaml"
    path.write_text(body)
    return path


def test_user_catalog_relative_location_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    write(wb2_dataset(levels=(500,)), root / "stores" / "mine.zarr")
    cat_path = _write_catalog(
        root,
        "version: 1\nentries:\n"
        "  mine:\n    location: stores/../stores/mine.zarr\n    description: test store\n"
        "    time: {start: 2000-01-01, end: 2000-01-01T18:00:00}\n"
        "  sphere-swe:\n    location: stores/mine.zarr\n",
    )
    monkeypatch.setenv("WXENS_CATALOG", str(cat_path))
    cat = load_catalog()
    assert cat["mine"].resolved_location() == str(root / "stores" / "mine.zarr")
    assert cat["mine"].time_start == "2000-01-01" and cat["mine"].time_end == "2000-01-01T18:00:00"
    assert cat["sphere-swe"].location == "stores/mine.zarr"  # user entry replaces the default one
    assert str(cat_path) in cat.files
    ds = open_reanalysis("mine", variables=["z500"])
    assert list(ds.data_vars) == ["z500"]
    monkeypatch.delenv("WXENS_CATALOG")
    ds = open_reanalysis("mine", variables=["t2m"], catalog=cat_path)
    assert list(ds.data_vars) == ["t2m"]


@pytest.mark.parametrize("location", ["../outside.zarr", "a/../../outside.zarr", "./../../etc"])
def test_relative_paths_cannot_escape_the_catalog_folder(tmp_path: Path, location: str) -> None:
    path = _write_catalog(tmp_path / "cat", f"entries:\n  bad:\n    location: {location}\n")
    with pytest.raises(UserError, match="escapes the catalog folder"):
        load_catalog(path)


def test_absolute_paths_and_urls_are_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.zarr"
    path = _write_catalog(
        tmp_path / "cat",
        f"entries:\n  abs:\n    location: {outside}\n  url:\n    location: s3://bucket/x.zarr\n",
    )
    cat = load_catalog(path, include_default=False)
    assert cat["abs"].resolved_location() == str(outside)
    assert cat["url"].remote and cat["url"].resolved_location() == "s3://bucket/x.zarr"
    assert not cat["abs"].remote


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("entries: [1, 2]", "'entries' must be a mapping"),
        ("- a\n- b\n", "expected a mapping with 'entries'"),
        ("entries:\n  x:\n    description: no location\n", "'location' .* is required"),
        ("entries:\n  x:\n    location: a.zarr\n    colour: blue\n", r"unknown key\(s\) colour"),
        ("entries:\n  'bad name':\n    location: a.zarr\n", "names use letters"),
        ("entries:\n  x:\n    location: a.zarr\n    remote: maybe\n", "'remote' must be true or false"),
        ("version: 7\nentries: {}\n", "unsupported version 7"),
        ("entries:\n  x: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
        ("entries: {x: {location: [unclosed\n", r"not valid YAML \(line"),
        ("entries:\n  no:\n    location: a.zarr\n", "entry name False is not a string; quote it"),
    ],
)
def test_malformed_catalogs(tmp_path: Path, body: str, pattern: str) -> None:
    path = _write_catalog(tmp_path, body)
    with pytest.raises(UserError, match=pattern):
        load_catalog(path)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_unknown_entry_lists_names() -> None:
    with pytest.raises(UserError, match=r"no catalog entry 'nope' \(entries: .*sphere-swe"):
        load_catalog()["nope"]


_segment = st.sampled_from(["..", ".", "a", "b", "data", "x.zarr"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_segment, min_size=1, max_size=6))
def test_resolved_relative_locations_stay_inside_root(tmp_path: Path, parts: list[str]) -> None:
    root = str(tmp_path / "root")
    entry = CatalogEntry(name="e", location="/".join(parts), root=root)
    try:
        resolved = entry.resolved_location()
    except UserError:
        assert ".." in parts
        return
    assert os.path.commonpath([root, resolved]) == root


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True), min_size=1, max_size=5, unique=True
    ),
    step=st.sampled_from(["1h", "6h", "12h"]),
)
def test_parse_round_trip(names: list[str], step: str) -> None:
    body = "entries:\n" + "".join(
        f"  '{n}':\n    location: gs://b/{n}.zarr\n    time_step: {step}\n" for n in names
    )
    entries = parse_catalog(body, root="/tmp")
    assert list(entries) == names
    assert all(
        e.remote and e.time_step == step and e.location == f"gs://b/{n}.zarr" for n, e in entries.items()
    )
