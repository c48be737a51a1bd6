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
