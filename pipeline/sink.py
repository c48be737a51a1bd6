"""A unit's per-lead output on worker threads, overlapping the model's next step.

Profiled on a GPU (docs/benchmarks.md "GPU"), the engine spent most of a 1,024-member run on its CPU
side: zstd-encoding each variable's chunk, one after the other, in the rollout thread; fsync and sha256
of every chunk file at the end of the unit; the inline reductions. :class:`LeadSink` takes each lead's
block state (copied to host memory, so the rollout may go on), writes its variables' chunks on
``threads`` writer threads (one task per variable; fsync and checksum right after the write) and runs the
inline scorer on one more thread, in lead order. At most ``max_pending`` leads wait; :meth:`drain`
waits for all and re-raises the first error, so a unit is recorded in the manifest only after every
file it lists is written, fsynced and hashed, exactly as before.

``threads=0`` does everything synchronously in the calling thread (the reference behaviour).
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch


def auto_threads(n_variables: int, device: torch.device) -> int:
    """Writer threads for ``io_threads: auto``: the cores the model leaves free (all but torch's
    threads on a CPU, all but one beside a GPU), at most one per variable; 0 (synchronous) when none
    is free: on a CPU whose cores all run the model, output threads only compete with it (measured:
    docs/engine.md "Output threads")."""
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (a batch job's share)
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 2
    busy = 1 if device.type == "cuda" else torch.get_num_threads()
    return max(0, min(n_variables, cores - busy))


class LeadSink:
    """Callable ``(lead, state)`` for :func:`pipeline.rollout.run_unit` (see the module docstring)."""

    def __init__(
        self,
        run_dir: Path,
        writer: Any | None,
        prefix: str,
        init: int,
        members: np.ndarray,
        channels: list[str],
        scorer: Any | None,
        threads: int,
        max_pending: int = 2,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.writer, self.prefix, self.init, self.members = writer, prefix, init, members
        self.channels, self.scorer = channels, scorer
        self.sums: dict[str, str] = {}
        self.max_pending = max(1, max_pending)
        self._io = ThreadPoolExecutor(threads, thread_name_prefix="wxens-write") if threads > 0 else None
        self._score = (
            ThreadPoolExecutor(1, thread_name_prefix="wxens-score") if threads > 0 and scorer else None
        )
        self._leads: collections.deque[list[Future]] = collections.deque()

    # ---------------------------------------------------------------------------------------- work
    def _write(self, lead: int, variables: list[str], x: torch.Tensor) -> dict[str, str]:
        assert self.writer is not None
        sums = self.writer.write_lead(
            self.init, lead, self.members, x, self.channels, variables=variables, durable=True
        )
        return {f"{self.prefix}/{f}": digest for f, digest in sums.items()}

    def __call__(self, lead: int, x: torch.Tensor) -> None:
        if self._io is None:  # synchronous reference path
            if self.writer is not None:
                self.sums.update(self._write(lead, self.writer.variables, x))
            if self.scorer is not None:
                self.scorer.on_lead(lead, x)
            return
        # private copies: the rollout replaces x next step, and a model may reuse its buffers; a scorer
        # that reduces on the rollout's device (a GPU) gets a device copy, the writers a host copy
        on_device = self.scorer is not None and getattr(self.scorer, "device", None) is not None
        xc = x.detach().to("cpu", copy=True) if self.writer is not None or not on_device else None
        futs: list[Future] = []
        if self.writer is not None:
            assert xc is not None
            futs += [self._io.submit(self._write, lead, [v], xc) for v in self.writer.variables]
        if self.scorer is not None and self._score is not None:
            xs = x.detach().clone() if on_device or xc is None else xc
            futs.append(self._score.submit(self.scorer.on_lead, lead, xs))
        self._leads.append(futs)
        while len(self._leads) > self.max_pending:
            self._collect(self._leads.popleft())

    def _collect(self, futs: list[Future]) -> None:
        for f in futs:
            r = f.result()  # re-raises a worker's error
            if isinstance(r, dict):
                self.sums.update(r)

    def drain(self) -> dict[str, str]:
        """Wait for every pending lead; ``{file relative to the run dir: sha256}`` of all written files."""
        try:
            while self._leads:
                self._collect(self._leads.popleft())
        finally:
            self.close()
        return self.sums

    def close(self) -> None:
        for ex in (self._io, self._score):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)
        self._io = self._score = None
