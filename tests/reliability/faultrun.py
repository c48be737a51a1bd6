"""Run the real ``wxens`` command line with a fault injected (used as a subprocess by the tests).

``python faultrun.py ARGS...`` is ``wxens ARGS...`` (``workflows.cli.main``) with one torch thread and
the fault named by the environment variable ``WXENS_FAULT``, of the form ``ACTION:POINT=N``:

``kill:step=N``        SIGKILL at the N-th model step (``pipeline.testing.ToyModel.step``)
``slow:step=S``        sleep S seconds in every model step (to make two processes overlap)
``kill:chunk=N``       SIGKILL right after the N-th chunk file has been written (by zarr or
                       ``pipeline.store.ChunkFiles``)
``torn:chunk=N``       write the first half of the N-th chunk file in place (no temporary file), then
                       SIGKILL: a torn chunk on disk whose unit never reached the manifest
``kill:manifest=N``    SIGKILL inside the N-th manifest entry write, after its temporary file is
                       written and before the rename
``kill:record=N``      SIGKILL at the start of the N-th ``pipeline.manifest.record`` (all chunks of the
                       unit written, none checksummed)
``enospc:chunk=N``     every chunk write from the N-th on fails with ``OSError(ENOSPC)`` (disk full)
``kill:trainstep=N``   SIGKILL at the N-th optimiser step of ``wxens train``
``kill:trainsave=N``   SIGKILL inside the N-th training-state save, after ``torch.save`` wrote the
                       temporary file and before the rename
``kill:scorewrite=N``  SIGKILL at the N-th ``os.replace`` inside ``evaluation.score.write_scores``
``kill:score=N``       SIGKILL when ``score_forecast`` returns (scores computed, nothing written)

Only test code patches library functions here; the libraries carry no fault hooks. The process
writes ``<pid>`` to ``$WXENS_FAULT_PIDFILE`` when set.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_COUNTS: dict[str, int] = {}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _hit(point: str, n: int) -> bool:
    """Count a call at ``point``; True on the n-th."""
    _COUNTS[point] = _COUNTS.get(point, 0) + 1
    return _COUNTS[point] == n


def _wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    setattr(owner, name, make(getattr(owner, name)))


def install(spec: str) -> None:
    """Install the fault ``spec`` (see module docstring)."""
    action, _, rest = spec.partition(":")
    point, _, num = rest.partition("=")
    n = int(num or "1") if action != "slow" else 0

    if point == "step":
        import pipeline.testing as pt

        def make_step(orig: Callable[..., Any]) -> Callable[..., Any]:
            def step(self: Any, *a: Any, **k: Any) -> Any:
                if action == "slow":
                    time.sleep(float(num))
                elif _hit("step", n):
                    _die()
                return orig(self, *a, **k)

            return step

        _wrap(pt.ToyModel, "step", make_step)
    elif point == "chunk":
        import zarr.storage._local as zl

        from pipeline.store import ChunkFiles

        orig_put = zl._put

        def chunk(path: Path, data: Callable[[], bytes], write: Callable[[], Any]) -> Any:
            """One chunk file write, through zarr or the engine's own chunk writer."""
            _COUNTS["chunk"] = _COUNTS.get("chunk", 0) + 1
            k = _COUNTS["chunk"]
            if action == "enospc" and k >= n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            if action == "torn" and k == n:
                raw = data()
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(raw[: max(1, len(raw) // 2)])
                    f.flush()
                    os.fsync(f.fileno())
                _die()
            out = write()
            if action == "kill" and k == n:
                _die()
            return out

        def put(path: Any, value: Any, exclusive: bool = False) -> int:
            if "/c/" not in str(path).replace(os.sep, "/"):  # metadata, not a chunk
                return orig_put(path, value, exclusive=exclusive)
            return chunk(
                Path(path),
                lambda: bytes(value.as_buffer_like()),
                lambda: orig_put(path, value, exclusive=exclusive),
            )

        zl._put = put

        def make_cw(orig: Callable[..., Any]) -> Callable[..., Any]:
            def write(self: Any, key: str, payload: bytes, durable: bool) -> str:
                return chunk(
                    self.root / self.name / key, lambda: payload, lambda: orig(self, key, payload, durable)
                )

            return write

        _wrap(ChunkFiles, "write", make_cw)
    elif point == "manifest":
        import pipeline.manifest as mf

        real_replace = os.replace

        def make_aw(orig: Callable[..., Any]) -> Callable[..., Any]:
            def atomic_write(path: Any, text: str) -> None:
                if os.path.basename(os.path.dirname(str(path))) == mf.MANIFEST and _hit("manifest", n):

                    def replace(src: Any, dst: Any) -> None:
                        _die()

                    os.replace = replace  # type: ignore[assignment]
                    try:
                        orig(path, text)
                    finally:
                        os.replace = real_replace
                    return
                orig(path, text)

            return atomic_write

        _wrap(mf, "atomic_write", make_aw)
    elif point == "record":
        import pipeline.manifest as mf

        def make_rec(orig: Callable[..., Any]) -> Callable[..., Any]:
            def record(*a: Any, **k: Any) -> Any:
                if _hit("record", n):
                    _die()
                return orig(*a, **k)

            return record

        _wrap(mf, "record", make_rec)
    elif point == "trainstep":
        import torch

        def make_opt(orig: Callable[..., Any]) -> Callable[..., Any]:
            def step(self: Any, *a: Any, **k: Any) -> Any:
                if _hit("trainstep", n):
                    _die()
                return orig(self, *a, **k)

            return step

        _wrap(torch.optim.AdamW, "step", make_opt)
    elif point == "trainsave":
        import models.train as mt

        real_replace = os.replace

        def make_save(orig: Callable[..., Any]) -> Callable[..., Any]:
            def save_state(path: Any, state: Any) -> None:
                if _hit("trainsave", n):

                    def replace(src: Any, dst: Any) -> None:
                        _die()

                    os.replace = replace  # type: ignore[assignment]
                try:
                    orig(path, state)
                finally:
                    os.replace = real_replace

            return save_state

        _wrap(mt, "_save_state", make_save)
    elif point == "scorewrite":
        import evaluation.score as es

        real_replace = os.replace

        def make_ws(orig: Callable[..., Any]) -> Callable[..., Any]:
            def write_scores(*a: Any, **k: Any) -> Any:
                def replace(src: Any, dst: Any) -> None:
                    if _hit("scorewrite", n):
                        _die()
                    real_replace(src, dst)

                es.os.replace = replace  # type: ignore[attr-defined]
                try:
                    return orig(*a, **k)
                finally:
                    es.os.replace = real_replace  # type: ignore[attr-defined]

            return write_scores

        _wrap(es, "write_scores", make_ws)
    elif point == "score":
        import evaluation.score as es

        def make_sf(orig: Callable[..., Any]) -> Callable[..., Any]:
            def score_forecast(*a: Any, **k: Any) -> Any:
                out = orig(*a, **k)
                if _hit("score", n):
                    _die()
                return out

            return score_forecast

        _wrap(es, "score_forecast", make_sf)
    else:
        raise SystemExit(f"faultrun: unknown fault {spec!r}")


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    pidfile = os.environ.get("WXENS_FAULT_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    spec = os.environ.get("WXENS_FAULT", "")
    if spec:
        install(spec)
    from workflows.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
