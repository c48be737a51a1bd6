"""Where the scoring computation runs: a dask LocalCluster, a running scheduler, or SLURM workers.

``score.dask.mode`` in the workflow selects one of

* ``local`` (default): a :class:`distributed.LocalCluster` on this machine (threads by default);
* ``threads``: no cluster, dask's plain threaded scheduler (least overhead on a laptop);
* ``address``: connect to a running scheduler (``tcp://host:8786``), e.g. one started by the user;
* ``slurm``: a ``dask_jobqueue.SLURMCluster`` (``pip install 'wxens[slurm]'``): the scheduler runs in
  this process (the score job), ``slurm.jobs`` worker jobs are submitted with ``sbatch`` and connect
  back to it; leaving the block cancels them with ``scancel``. Options the workflow does not set
  (``interface``, ``local-directory``, ``job-extra-directives``, ...) come from dask's
  ``jobqueue.slurm`` configuration (``~/.config/dask/jobqueue.yaml``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_catalog.errors import UserError
from workflows.schema import DaskOptions

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_cluster(
    options: DaskOptions, connect_timeout: str = "30s", log_directory: str | Path | None = None
) -> Iterator[str]:
    """Run the enclosed dask computations on the configured cluster; yields a description.

    ``connect_timeout`` bounds the wait for a scheduler at ``options.address``; ``log_directory``
    receives the output of SLURM worker jobs (``dask-worker-<jobid>.out/.err``).
    """
    if options.mode == "threads":
        import dask

        with dask.config.set(scheduler="threads", num_workers=options.threads_per_worker):
            yield f"dask threads x{options.threads_per_worker}"
        return

    from distributed import Client

    if options.mode == "address":
        assert options.address is not None
        try:
            client = Client(options.address, timeout=connect_timeout, set_as_default=True)
        except OSError as exc:
            raise UserError(f"cannot reach the dask scheduler at {options.address}: {exc}") from None
        try:
            yield f"dask scheduler {options.address}"
        finally:
            client.close()
        return

    if options.mode == "slurm":
        with _slurm_cluster(options, log_directory) as where:
            yield where
        return

    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=options.n_workers,
        threads_per_worker=options.threads_per_worker,
        processes=options.processes,
        dashboard_address=None,
        silence_logs=logging.WARNING,
    )
    client = Client(cluster, set_as_default=True)
    try:
        yield f"dask LocalCluster ({options.n_workers} x {options.threads_per_worker} threads)"
    finally:
        client.close()
        cluster.close()


@contextlib.contextmanager
def _slurm_cluster(options: DaskOptions, log_directory: str | Path | None) -> Iterator[str]:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise UserError("score.dask.mode 'slurm' needs dask-jobqueue: pip install 'wxens[slurm]'") from None
    from distributed import Client

    if shutil.which("sbatch") is None:
        raise UserError(
            "score.dask.mode 'slurm' submits worker jobs with sbatch, which is not on PATH "
            "(run the score stage where SLURM is available, or use mode 'local')"
        )
    s = options.slurm
    kwargs: dict[str, Any] = {
        "cores": s.cores,
        "memory": s.memory,
        "walltime": s.walltime,
        "job_name": "wxens-score",
    }
    if s.queue:
        kwargs["queue"] = s.queue
    if s.account:
        kwargs["account"] = s.account
    if log_directory is not None:
        from workflows.runner import make_dir

        kwargs["log_directory"] = str(make_dir(Path(log_directory)))
    cluster = SLURMCluster(**kwargs)
    try:
        logger.debug("dask worker job script:\n%s", cluster.job_script())
        cluster.scale(jobs=s.jobs)
        client = Client(cluster, set_as_default=True)
        try:
            logger.info(
                "dask scheduler %s: %d worker job(s) submitted; the work starts as they connect",
                cluster.scheduler_address,
                s.jobs,
            )
            yield f"dask SLURMCluster ({s.jobs} jobs x {s.cores} cores, scheduler {cluster.scheduler_address})"
        finally:
            client.close()
    finally:
        cluster.close()  # scancel of every worker job
