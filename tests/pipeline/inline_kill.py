"""``python -m tests.pipeline.inline_kill POINT CONFIG RUN_DIR [SHARD]``: a forecast process (the
``forecast_main`` code path) that SIGKILLs itself at one point of the inline-score finalisation.
Only this test helper patches the library; the library has no fault hooks.

``marker``    the init's score chunks are written and fsynced, its marker (final npz) is not
``cleanup``   the marker is written and one unit's partials/spills are deleted, the others not
``rename``    every init is final, the small arrays are written into the partial store, not renamed
``merged``    ``scores.zarr`` is renamed into place, ``MERGED``/``COMPLETE`` are not written
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


_COUNTS: dict[str, int] = {}


def _hit(point: str) -> int:
    _COUNTS[point] = _COUNTS.get(point, 0) + 1
    return _COUNTS[point]


def install(point: str) -> None:
    import pipeline.inline as inl

    if point == "marker":

        def save(path: Path, arrays: dict[str, Any]) -> None:
            _die()

        inl._save_durable = save  # type: ignore[assignment]
    elif point == "cleanup":

        def remove(run_dir: Path, plan: Any, init: int) -> None:
            dirs = [run_dir / inl.INLINE / u.name for u in plan.units() if u.init == init]
            shutil.rmtree(dirs[0])
            _die()

        inl._remove_unit_dirs = remove  # type: ignore[assignment]
    elif point == "rename":  # the 1st fsync of the whole partial store follows its creation
        real = inl._fsync_tree

        def fsync_tree(path: Path) -> None:
            real(path)
            if path.name == Path(inl.PARTIAL).name and _hit("rename") == 2:
                _die()

        inl._fsync_tree = fsync_tree  # type: ignore[assignment]
    elif point == "merged":  # the 1st atomic write of inline.py marks the partial store created
        real_aw = inl.atomic_write

        def atomic_write(path: Path, text: str) -> None:
            if _hit("merged") == 2:
                _die()
            real_aw(path, text)

        inl.atomic_write = atomic_write  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    install(argv[0])
    from pipeline.cli import forecast_main

    return forecast_main(argv[1], argv[2], argv[3] if len(argv) > 3 else "0/1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
