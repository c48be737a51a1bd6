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


def test_slurm_cluster_runs_on_worker_jobs_and_cancels_them(fake_slurm, tmp_path) -> None:
    """A real dask-jobqueue SLURMCluster: its worker jobs go through (fake) sbatch, start as
    processes, connect and compute; leaving the block scancels them and every process ends."""
    pytest.importorskip("dask_jobqueue")
    import os

    from distributed import get_client, get_task_stream

    from workflows.schema import DaskSlurm

    opts = DaskOptions(
        mode="slurm", slurm=DaskSlurm(jobs=2, cores=1, memory="1GB", walltime="00:05:00", account="proj")
    )
    logs = tmp_path / "logs"
    with dask_cluster(opts, log_directory=logs) as where:
        assert where.startswith("dask SLURMCluster (2 jobs x 1 cores, scheduler tcp://")
        client = get_client()
        client.wait_for_workers(2, timeout=120)
        jobs = fake_slurm.jobs()
        assert len(jobs) == 2
        pids = client.run(os.getpid)  # worker address -> pid
        assert len(pids) == 2 and os.getpid() not in pids.values()
        assert set(pids.values()) <= set(fake_slurm.alive())  # the workers are the sbatch'ed processes
        with get_task_stream() as ts:
            assert _work() == EXPECTED
        assert ts.data and {t["worker"] for t in ts.data} <= set(pids)
        for job in jobs:
            assert "#SBATCH -J wxens-score" in job["script"] and "#SBATCH -A proj" in job["script"]
            assert "#SBATCH --cpus-per-task=1" in job["script"] and "#SBATCH -t 00:05:00" in job["script"]
            assert job["out"] == str(logs / f"wxens-score-{job['id']}.out")
    assert fake_slurm.cancelled() == {j["id"] for j in jobs}
    assert fake_slurm.wait_gone() == []
    for job in jobs:  # each worker registered with the scheduler of this process
        assert "Registered to:" in (logs / f"wxens-score-{job['id']}.err").read_text()


def test_slurm_mode_without_sbatch_is_a_user_error(tmp_path, monkeypatch) -> None:
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="sbatch, which is not on PATH"):
        with dask_cluster(DaskOptions(mode="slurm")):
            pass
