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
