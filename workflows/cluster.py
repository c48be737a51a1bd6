"""Where the scoring computation runs: a dask LocalCluster, a running scheduler, or SLURM workers.

``score.dask.mode`` in the workflow selects one of

* ``local`` (default): a :class:`distributed.LocalCluster` on this machine (threads by default);
* ``threads``: no cluster, dask's plain threaded scheduler (least overhead on a laptop);
* ``address``: connect to a running scheduler (``tcp://host:8786``), e.g. one started by the user;
* ``slurm``: a ``dask_jobqueue.SLURMCluster`` submitting worker jobs (``pip install 'wxens[slurm]'``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from data_catalog.errors import UserError
from workflows.schema import DaskOptions

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_cluster(options: DaskOptions, connect_timeout: str = "30s") -> Iterator[str]:
    """Run the enclosed dask computations on the configured cluster; yields a description.

    ``connect_timeout`` bounds the wait for a scheduler at ``options.address``.
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
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise UserError(
                "score.dask.mode 'slurm' needs dask-jobqueue: pip install 'wxens[slurm]'"
            ) from None
        s = options.slurm
        kwargs = {"cores": s.cores, "memory": s.memory, "walltime": s.walltime}
        if s.queue:
            kwargs["queue"] = s.queue
        if s.account:
            kwargs["account"] = s.account
        cluster = SLURMCluster(**kwargs)
        cluster.scale(jobs=s.jobs)
        client = Client(cluster)
        try:
            yield f"dask SLURMCluster ({s.jobs} jobs x {s.cores} cores)"
        finally:
            client.close()
            cluster.close()
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
