"""Storage encodings: bit rounding against torch's bfloat16 rounding, error bounds, float16 guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.store import encode, round_mantissa

finite32 = st.floats(
    -1.0000000150474662e30,
    1.0000000150474662e30,
    width=32,
    allow_nan=False,
    allow_infinity=False,
    allow_subnormal=False,
)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_keepbits7_is_bfloat16_round_to_nearest_even(a):
    ref = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(round_mantissa(a, 7).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("keepbits", [4, 7, 10, 16])
def test_bit_rounding_error_bound(keepbits):
    rng = np.random.default_rng(keepbits)
    a = (rng.normal(size=100_000) * 10.0 ** rng.integers(-6, 6, 100_000)).astype(np.float32)
    r = round_mantissa(a, keepbits)
    rel = np.abs(r.astype(np.float64) - a) / np.abs(a)
    assert rel.max() <= 2.0 ** -(keepbits + 1) * (1 + 1e-6)
    assert rel.max() > 2.0 ** -(keepbits + 1) * 0.9  # the bound is attained (not a no-op)


def test_encode_dtypes():
    x = torch.tensor([[1.0, 3.14159, -2.5e4, 1e-3]])
    assert encode(x, "float16", None).dtype == np.float16
    b = encode(x, "bfloat16", None)
    assert b.dtype == np.float32 and np.all(b.view(np.uint32) & 0xFFFF == 0)
    np.testing.assert_allclose(encode(x, "float32", None), x.numpy(), rtol=0)


def test_encoding_errors_report_within_bounds():
    from pipeline.store import encoding_errors

    rng = np.random.default_rng(0)
    x = (5.4e4 + 600 * rng.normal(size=5000)).astype(np.float32)
    rep = encoding_errors(x, [("bfloat16", None), ("float32", 12), ("float32", 23)])
    assert 2.0**-9 < rep["bfloat16"]["max_rel"] <= 2.0**-8
    assert rep["keepbits=12"]["max_rel"] <= 2.0**-13
    assert rep["keepbits=23"]["max_rel"] == 0.0


@pytest.mark.parametrize("threads", [1, 4])
def test_writer_writes_fill_value_chunks_from_any_thread(tmp_path, threads):
    """A lead whose members are all NaN (the fill value) is still written as a chunk file, from worker
    threads as from the caller, whatever zarr's global ``write_empty_chunks`` is at the time: the
    manifest checksums every chunk file of a unit (found by a fresh-clone CI run, where the global
    setting depended on which test ran before)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import zarr

    from pipeline.store import StoreWriter, create_store

    lat, lon = np.linspace(80, -80, 8), np.arange(16) * 22.5
    chans = ["z500", "u500"]
    create_store(
        tmp_path / "s.zarr", times=np.array(["2008-01-01T00"], "datetime64[ns]"), numbers=np.arange(4),
        member_coords={"checkpoint": np.zeros(4, int), "pair": np.repeat(np.arange(2), 2), "sign": np.tile([1, -1], 2)}, leads=np.arange(3) * np.timedelta64(6, "h"),
        latitude=lat, longitude=lon, variables=chans, var_attrs={}, chunk_members=2, dtype="float32",
        attrs={"wxens_chunk_members": 2, "wxens_dtype": "float32", "wxens_variables": chans},
    )  # fmt: skip
    w = StoreWriter(tmp_path / "s.zarr")
    x = torch.full((4, 2, 8, 16), float("nan"))
    with zarr.config.set({"array.write_empty_chunks": False}), ThreadPoolExecutor(threads) as ex:
        jobs = [
            ex.submit(w.write_lead, 0, lead, np.arange(4), x, chans, [v]) for lead in range(3) for v in chans
        ]
        files = sorted(f for j in jobs for f in j.result())
    assert len(files) == 3 * 2 * 2
    assert all((tmp_path / "s.zarr" / f).is_file() for f in files)


def test_store_layout_groups_levels_into_wb2_variables():
    from data_catalog.errors import UserError
    from pipeline.store import store_layout

    lay = store_layout(["z500", "z200", "u500", "t2m", "noise"])
    assert lay.levels == [200, 500]
    assert lay.variables == {
        "geopotential": [200, 500], "u_component_of_wind": [500], "2m_temperature": None, "noise": None
    }  # fmt: skip
    assert lay.slots["z500"] == ("geopotential", 1) and lay.slots["z200"] == ("geopotential", 0)
    assert lay.slots["u500"] == ("u_component_of_wind", 1) and lay.slots["t2m"] == ("2m_temperature", None)
    assert store_layout(["z500", "t2m"], "channels").slots == {"z500": ("z500", None), "t2m": ("t2m", None)}
    with pytest.raises(UserError, match="layout"):
        store_layout(["z500"], "grib")
    with pytest.raises(UserError, match="geopotential"):
        store_layout(["z500", "geopotential"])  # an unknown name colliding with a long name


@pytest.mark.parametrize("layout", ["wb2", "channels"])
def test_level_subsets_round_trip(tmp_path, layout):
    """Channels with different level sets (z at 200 and 500 hPa, u only at 500, one single-level field):
    the WeatherBench2 store has the union of levels; u at 200 hPa is never written (NaN fill, no chunk
    file) and every reader (``channels=True``, the data catalog, the evaluation) sees exactly the
    written channels, equal to what was written."""
    import xarray as xr

    from data_catalog import open_forecast_store
    from evaluation.score import normalize_forecast
    from pipeline.store import StoreWriter, create_store, open_forecast

    lat, lon = np.linspace(80, -80, 8), np.arange(16) * 22.5
    chans = ["z500", "u500", "t2m", "z200"]
    attrs = {"units": "m2 s-2", "long_name": "Geopotential at 500 hPa"}
    create_store(
        tmp_path / "s.zarr", times=np.array(["2008-01-01T00", "2008-01-02T00"], "datetime64[ns]"), numbers=np.arange(4),
        member_coords={"checkpoint": np.zeros(4, int), "pair": np.repeat(np.arange(2), 2), "sign": np.tile([1, -1], 2)},
        leads=np.arange(3) * np.timedelta64(6, "h"), latitude=lat, longitude=lon, variables=chans,
        var_attrs={"z500": attrs, "z200": {**attrs, "long_name": "Geopotential at 200 hPa"}, "t2m": {"units": "K"}},
        chunk_members=2, dtype="float32", layout=layout,
        attrs={"wxens_chunk_members": 2, "wxens_dtype": "float32", "wxens_variables": chans},
    )  # fmt: skip
    w = StoreWriter(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 3, 4, 4, 8, 16)).astype(np.float32))  # init, lead, member, C
    files = [
        f
        for i in range(2)
        for lead in range(3)
        for f in w.write_lead(i, lead, np.arange(4), x[i, lead], chans)
    ]
    assert len(files) == len(set(files)) == 2 * 3 * 2 * 4 and all(
        (tmp_path / "s.zarr" / f).is_file() for f in files
    )
    raw = open_forecast(tmp_path / "s.zarr")
    if layout == "wb2":
        assert set(raw.data_vars) == {
            "geopotential",
            "u_component_of_wind",
            "2m_temperature",
            "nonfinite_step",
            "nonfinite",
        }
        assert raw["level"].values.tolist() == [200, 500]
        u = raw["u_component_of_wind"]
        assert u.dims[3] == "level" and u.attrs["wxens_levels"] == [500]
        assert np.isnan(u.sel(level=200).values).all()  # the level u does not have: fill, never written
        assert not any(f.startswith("u_component_of_wind/c/") and f.split("/")[5] == "0" for f in files)
        assert raw["geopotential"].attrs["long_name"] == "Geopotential"
        assert raw["2m_temperature"].attrs["units"] == "K"
    else:
        assert set(raw.data_vars) == {*chans, "nonfinite_step", "nonfinite"}
    want = {
        c: x[..., k, :, :].permute(0, 2, 1, 3, 4).numpy() for k, c in enumerate(chans)
    }  # time, number, lead
    by_channel = open_forecast(tmp_path / "s.zarr", channels=True)
    catalog = open_forecast_store(tmp_path / "s.zarr")
    scored = normalize_forecast(xr.open_zarr(tmp_path / "s.zarr"))
    for ds in (by_channel, catalog, scored):
        assert {v for v in ds.data_vars if "latitude" in ds[v].dims} == set(chans)
        for c in chans:
            got = ds[c].transpose("time", "number", "prediction_timedelta", "latitude", "longitude")
            np.testing.assert_array_equal(got.sel(latitude=lat).values, want[c])
    assert by_channel["z200"].attrs["long_name"] == "Geopotential at 200 hPa"


def _codec_store(path, codec, dtype, chans, n=5, chunk=2):
    from pipeline.store import create_store

    lat, lon = np.linspace(80, -80, 8), np.arange(16) * 22.5
    create_store(
        path, times=np.array(["2008-01-01T00"], "datetime64[ns]"), numbers=np.arange(n),
        member_coords={"checkpoint": np.zeros(n, int), "pair": np.arange(n) // 2, "sign": np.where(np.arange(n) % 2, -1, 1)},
        leads=np.arange(2) * np.timedelta64(6, "h"), latitude=lat, longitude=lon, variables=chans, var_attrs={},
        chunk_members=chunk, dtype=dtype, codec=codec,
        attrs={"wxens_chunk_members": chunk, "wxens_dtype": dtype, "wxens_variables": chans},
    )  # fmt: skip


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_direct_chunk_files_are_zarrs_bytes(tmp_path, codec, dtype):
    """The writer encodes whole chunks itself; every file is byte for byte the one zarr writes for the
    same values (same codec, levelled and single-level arrays, an edge chunk padded with the fill
    value), its sha256 is the file's, and the store reads back the written values."""
    import hashlib
    import json

    import zarr

    from pipeline.store import StoreWriter, encode, open_forecast, store_layout

    chans = ["z500", "z200", "t2m"]
    _codec_store(tmp_path / "direct.zarr", codec, dtype, chans)
    _codec_store(tmp_path / "zarr.zarr", codec, dtype, chans)
    meta = json.loads((tmp_path / "direct.zarr" / "geopotential" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert names == {"lz4": ["bytes", "blosc"], "zstd": ["bytes", "zstd"], "none": ["bytes"]}[codec]
    rng = np.random.default_rng(1)
    x = torch.from_numpy((5e4 + 900 * rng.normal(size=(2, 5, 3, 8, 16))).astype(np.float32))
    x[1, 3, 2, 0, 0] = float("nan")  # a non-finite value survives the codec
    w = StoreWriter(tmp_path / "direct.zarr")
    assert all(f is not None for f in w._files.values())  # the direct path, not zarr's
    sums = {k: v for lead in range(2) for k, v in w.write_lead(0, lead, np.arange(5), x[lead], chans).items()}
    assert len(sums) == 2 * 3 * 3  # leads x chunks (2 + 2 + 1 members) x channels
    g = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="r+")
    lay = store_layout(chans)
    for lead in range(2):
        for k, c in enumerate(chans):
            name, li = lay.slots[c]
            arr = g[name].with_config({"write_empty_chunks": True})
            data = encode(x[lead, :, k], dtype, None)
            if li is None:
                arr[0, :, lead] = data
            else:
                arr[0, :, lead, li] = data
    for rel, digest in sums.items():
        mine = (tmp_path / "direct.zarr" / rel).read_bytes()
        assert mine == (tmp_path / "zarr.zarr" / rel).read_bytes(), rel
        assert hashlib.sha256(mine).hexdigest() == digest
    assert not list((tmp_path / "direct.zarr").rglob("*.partial"))
    back = open_forecast(tmp_path / "direct.zarr", channels=True)
    for k, c in enumerate(chans):
        want = np.stack([encode(x[lead, :, k], dtype, None) for lead in range(2)], axis=1).astype(np.float32)
        np.testing.assert_array_equal(back[c].isel(time=0).values, want)


def test_partly_owned_chunks_go_through_zarr(tmp_path):
    """Members that fill only part of a chunk are written through zarr (the other members' values
    stay); the returned checksums are those of the files on disk."""
    import hashlib

    from pipeline.store import StoreWriter, open_forecast

    _codec_store(tmp_path / "s.zarr", "lz4", "float32", ["z500"], n=6, chunk=4)
    w = StoreWriter(tmp_path / "s.zarr")
    x = torch.arange(6 * 8 * 16, dtype=torch.float32).reshape(6, 1, 8, 16)
    first = w.write_lead(0, 0, np.arange(2), x[:2], ["z500"])  # half of chunk 0
    second = w.write_lead(0, 0, np.arange(2, 6), x[2:], ["z500"])  # the rest of chunk 0, all of chunk 1
    assert list(first) == ["geopotential/c/0/0/0/0/0/0"]
    assert sorted(second) == ["geopotential/c/0/0/0/0/0/0", "geopotential/c/0/1/0/0/0/0"]
    for rel, digest in second.items():
        assert hashlib.sha256((tmp_path / "s.zarr" / rel).read_bytes()).hexdigest() == digest
    back = open_forecast(tmp_path / "s.zarr", channels=True)["z500"].isel(time=0, prediction_timedelta=0)
    np.testing.assert_array_equal(back.values, x[:, 0].numpy())


def test_codec_is_a_store_property_not_part_of_the_run_identity():
    from pipeline.config import ForecastConfig

    base = {"init_times": ["2008-01-01T00"], "checkpoints": ["c"], "lead_steps": 2}
    a = ForecastConfig.model_validate(base)
    b = ForecastConfig.model_validate({**base, "output": {"codec": "zstd"}})
    assert a.output.codec == "lz4" and a.identity_hash() == b.identity_hash()
    assert (
        a.identity_hash()
        != ForecastConfig.model_validate({**base, "output": {"dtype": "float16"}}).identity_hash()
    )
    with pytest.raises(ValueError, match="codec"):
        ForecastConfig.model_validate({**base, "output": {"codec": "gzip"}})


def test_chunk_files_only_for_layouts_it_writes_as_zarr_does(tmp_path):
    """Arrays the direct writer cannot reproduce byte for byte (sharded, big-endian, an extra
    filter, integer data) are left to zarr."""
    import zarr
    from zarr.codecs import BytesCodec

    from pipeline.store import ChunkFiles

    def arr(name, **kw):
        return zarr.create_array(tmp_path / f"{name}.zarr", shape=(4, 8), chunks=(2, 8), **kw)

    assert ChunkFiles.for_array(tmp_path, "a", arr("plain", dtype="float32")) is not None
    assert ChunkFiles.for_array(tmp_path, "a", arr("sharded", dtype="float32", shards=(4, 8))) is None
    big = arr("big", dtype="float32", serializer=BytesCodec(endian="big"))
    assert ChunkFiles.for_array(tmp_path, "a", big) is None
    assert ChunkFiles.for_array(tmp_path, "a", arr("int", dtype="int32")) is None
    two = arr("two", dtype="float32", compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.ZstdCodec()])
    assert ChunkFiles.for_array(tmp_path, "a", two) is None
