"""Where scoring runs: threads, a LocalCluster, a running scheduler, SLURM (needs dask-jobqueue)."""

from __future__ import annotations

import importlib.util

import dask.array as da
import numpy as np
import pytest

from data_catalog.errors import UserError
from workflows.cluster import dask_cluster
from workflows.schema import DaskOptions


def _work() -> float:
    x = da.arange(1000, chunks=100, dtype="float64")
    return float((x**2).sum().compute())


EXPECTED = float(np.sum(np.arange(1000, dtype="float64") ** 2))


def test_threads_and_local_cluster_compute() -> None:
    with dask_cluster(DaskOptions(mode="threads", threads_per_worker=2)) as where:
        assert where == "dask threads x2" and _work() == EXPECTED
    with dask_cluster(DaskOptions(mode="local", n_workers=1, threads_per_worker=1)) as where:
        from distributed import get_client

        assert "LocalCluster" in where
        assert get_client().scheduler_info()["workers"]  # the computation goes to the cluster
        assert _work() == EXPECTED


def test_address_and_slurm_errors() -> None:
    with pytest.raises(UserError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"):
        with dask_cluster(DaskOptions(mode="address", address="tcp://127.0.0.1:9"), connect_timeout="1s"):
            pass
    if importlib.util.find_spec("dask_jobqueue") is None:
        with pytest.raises(UserError, match=r"pip install 'wxens\[slurm\]'"):
            with dask_cluster(DaskOptions(mode="slurm")):
                pass
