"""Fake stage functions for testing the runner, the CLI and batch submission without real data.

Each fake appends ``<stage> <i>/<N>`` to ``RUN_DIR/calls.log`` and writes a small output; it fails
(raises) when a file ``RUN_DIR/FAIL_<stage>`` exists, so tests can inject failures across processes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from workflows.runner import StageContext, StageSpec


def _fake(name: str):
    def func(ctx: StageContext) -> dict[str, Any]:
        i, n = ctx.shard
        with open(ctx.run_dir / "calls.log", "a", encoding="utf-8") as fh:
            fh.write(f"{name} {i}/{n}\n")
        if (ctx.run_dir / f"FAIL_{name}").exists():
            raise RuntimeError(f"injected failure in {name}")
        folder = ctx.mkdir(name)
        out = folder / f"part-{i}-of-{n}.json"
        upstream = {k: v.get("config_hash") for k, v in ctx.upstream.items()}
        out.write_text(json.dumps({"stage": name, "shard": [i, n], "upstream": upstream}))
        return {"outputs": {f"{name}-{i}": str(out.relative_to(ctx.run_dir))}, "members": 8}

    func.__name__ = f"fake_{name}"
    return func


FAKE_REGISTRY: dict[str, StageSpec] = {
    "prepare": StageSpec("prepare", _fake("prepare"), ("data",)),
    "train": StageSpec("train", _fake("train"), ("data", "train", "seed"), shardable=True),
    "skill": StageSpec("skill", _fake("skill"), ("data", "skill", "forecast.checkpoints")),
    "model_climate": StageSpec("model_climate", _fake("model_climate"), ("model_climate",), shardable=True),
    "forecast": StageSpec(
        "forecast",
        _fake("forecast"),
        ("data", "forecast", "seed"),
        ignore=("forecast.device",),
        shardable=True,
    ),
    "score": StageSpec("score", _fake("score"), ("score",), ignore=("score.dask",)),
    "report": StageSpec("report", _fake("report"), ("report", "name")),
}


def calls(run_dir: Path) -> list[str]:
    """Stage invocations recorded by the fakes, in order."""
    p = Path(run_dir) / "calls.log"
    return p.read_text().splitlines() if p.exists() else []


def main() -> int:  # used as `python fakes.py run ...` by the subprocess tests
    from workflows import cli, stages

    stages.REGISTRY.clear()
    stages.REGISTRY.update(FAKE_REGISTRY)
    cli._register = lambda: None  # the other layers' commands (and their torch imports) are not needed
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
