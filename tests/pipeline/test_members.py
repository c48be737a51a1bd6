"""Member numbering bijection, block sizes, work units and shard splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_catalog.errors import UserError
from pipeline.members import MemberLayout, block_size_for, parse_shard, shard_units, work_units


@given(st.integers(1, 6), st.integers(0, 9))
def test_numbering_is_a_bijection(nc, npairs):
    lay = MemberLayout(nc, npairs)
    n = np.arange(lay.size)
    c, p, s = lay.decompose(n)
    back = [lay.number(int(a), int(b), int(d)) for a, b, d in zip(c, p, s, strict=True)]
    assert back == n.tolist()
    if npairs:
        assert np.array_equal(n, c * 2 * npairs + 2 * p + (s < 0))
        assert set(zip(c.tolist(), p.tolist(), s.tolist(), strict=True)) == {
            (a, b, d) for a in range(nc) for b in range(npairs) for d in (1, -1)
        }


def test_block_sizes_divide_and_keep_pairs():
    assert block_size_for(6, 16) == 4
    assert block_size_for(100, 16) == 16
    assert block_size_for(1, 16) == 2
    assert block_size_for(5, 1) == 1
    for per in (2, 6, 12, 20):
        for req in range(1, 25):
            b = block_size_for(req, per)
            assert per % b == 0 and b % 2 == 0


@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(1, 7))
def test_shards_partition_the_units(nc, ni, npairs, n):
    lay = MemberLayout(nc, npairs)
    units = work_units(ni, lay, 2)
    parts = [shard_units(units, (i, n)) for i in range(n)]
    flat = [u for p in parts for u in p]
    assert flat == units  # disjoint, covering, in order
    members = np.concatenate([u.members(lay, 2) for u in units])
    assert sorted(members.tolist()) == sorted(list(range(lay.size)) * ni)


def test_parse_shard_cli_and_slurm():
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}
    assert parse_shard(None, env) == (3, 4)
    with pytest.raises(UserError):
        parse_shard("4/4", {})
    with pytest.raises(UserError):
        parse_shard("x", {})
