"""The stage runner: idempotent, resumable stages writing into one run directory.

Run directory layout::

    RUN_DIR/
      config.yaml                     the workflow with every default filled in (latest invocation)
      provenance.json                 code and package versions, seeds, host, python, stage timings
      logs/<stage>[-shard-i-of-N].log one log file per stage (and shard)
      stages/<stage>.json             status done/failed/running, config hash, timings, outputs
      stages/<stage>/shard-i-of-N.json  the same per shard
      ...                             the stages' outputs (forecast.zarr, scores.zarr, report/, ...)

A stage is **skipped** when its record says ``done`` for the same *stage hash* and its outputs exist.
The stage hash is ``sha256`` of the part of the configuration the stage reads plus the hashes of the
stages before it, so changing ``forecast.members`` reruns forecast, score and report but not
prepare or skill. A stage whose outputs are partial is **resumed** by the stage itself (the forecast
stage through the pipeline's manifest of finished work units).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_catalog.errors import UserError
from workflows.schema import STAGE_ORDER, Workflow, dump_workflow

logger = logging.getLogger(__name__)

DIR_MODE = 0o755
FILE_MODE = 0o644
PACKAGES = ("wxens", "torch", "torch-harmonics", "xarray", "zarr", "dask", "numpy", "pydantic")


class StageError(UserError):
    """A stage failed; the one-line message names the stage and its log file (exit status 1)."""

    exit_code = 1


# --------------------------------------------------------------------------------------------------
# files with explicit permissions
# --------------------------------------------------------------------------------------------------
def make_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` and missing parents with ``mode`` set explicitly (independent of the umask)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=mode)
            os.chmod(p, mode)
    if not path.is_dir():
        raise UserError(f"not a directory: {path}")
    return path


def write_text_atomic(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half)."""
    path = Path(path)
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomically write ``payload`` as indented JSON."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON object; None when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (shards of one stage may finish at the same time)."""
    make_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# stage specifications
# --------------------------------------------------------------------------------------------------
@dataclass
class StageContext:
    """What a stage function receives."""

    workflow: Workflow
    run_dir: Path
    stage: str
    shard: tuple[int, int] = (0, 1)
    log_file: Path | None = None
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_hash: str = ""

    def path(self, rel: str | Path) -> Path:
        """A path inside the run directory (absolute paths are kept)."""
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def mkdir(self, rel: str | Path) -> Path:
        """Create a folder inside the run directory with safe permissions."""
        return make_dir(self.path(rel))

    def output_of(self, stage: str, key: str) -> Path | None:
        """Absolute path of output ``key`` of an upstream stage (None if it has none)."""
        rel = self.upstream.get(stage, {}).get("outputs", {}).get(key)
        return self.path(rel) if rel else None


#: A stage function: does the work of one shard, returns ``{"outputs": {key: relpath}, ...info}``.
StageFunc = Callable[[StageContext], Mapping[str, Any] | None]


@dataclass(frozen=True)
class StageSpec:
    """A stage: its function and the configuration keys (dotted paths) its result depends on."""

    name: str
    func: StageFunc
    depends_on: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    shardable: bool = False
    description: str = ""


Registry = Mapping[str, StageSpec]


def default_registry() -> Registry:
    """The real stages (:mod:`workflows.stages`)."""
    from workflows import stages

    return stages.REGISTRY


def _pick(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _drop(data: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
        if not isinstance(data, dict):
            return
    data.pop(parts[-1], None)


def config_subset(workflow: Workflow, spec: StageSpec) -> dict[str, Any]:
    """The part of the configuration ``spec`` depends on (JSON-ready)."""
    full = workflow.model_dump(mode="json")
    subset = {key: _pick(full, key) for key in spec.depends_on}
    subset = json.loads(json.dumps(subset))
    for key in spec.ignore:
        _drop(subset, key)
    return subset


def stage_hashes(workflow: Workflow, registry: Registry) -> dict[str, str]:
    """Hash of every enabled stage: its config subset chained with the hashes of earlier stages."""
    out: dict[str, str] = {}
    previous: list[str] = []
    for stage in workflow.enabled_stages():
        spec = registry[stage]
        payload = {"stage": stage, "config": config_subset(workflow, spec), "upstream": previous}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        out[stage] = digest[:16]
        previous = [*previous, out[stage]]
    return out


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------
def stage_record_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"{stage}.json"


def shard_record_path(run_dir: Path, stage: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    return Path(run_dir) / "stages" / stage / f"shard-{i}-of-{n}.json"


def log_path(run_dir: Path, stage: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    name = stage if n == 1 else f"{stage}-shard-{i}-of-{n}"
    return Path(run_dir) / "logs" / f"{name}.log"


def read_stage_record(run_dir: Path, stage: str) -> dict[str, Any] | None:
    return read_json(stage_record_path(run_dir, stage))


def shard_records(run_dir: Path, stage: str) -> dict[tuple[int, int], dict[str, Any]]:
    """Every shard record of ``stage``, keyed by ``(i, N)``."""
    folder = Path(run_dir) / "stages" / stage
    out: dict[tuple[int, int], dict[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("shard-*-of-*.json")):
        try:
            _, i, _, n = path.stem.split("-")
            key = (int(i), int(n))
        except ValueError:
            continue
        rec = read_json(path)
        if rec is not None:
            out[key] = rec
    return out


def _outputs_exist(run_dir: Path, record: Mapping[str, Any]) -> bool:
    for rel in (record.get("outputs") or {}).values():
        p = Path(rel)
        if not (p if p.is_absolute() else Path(run_dir) / p).exists():
            return False
    return True


def is_done(run_dir: Path, stage: str, digest: str) -> bool:
    """True when the stage record says done for ``digest`` and its outputs exist."""
    rec = read_stage_record(run_dir, stage)
    return bool(
        rec
        and rec.get("status") == "done"
        and rec.get("config_hash") == digest
        and _outputs_exist(run_dir, rec)
    )


# --------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------
def code_version() -> str:
    """``git describe`` of the source checkout, else the package version."""
    from wxens import __version__

    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            res = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if res.returncode == 0 and res.stdout.strip():
                return f"{__version__}+g{res.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that determine the numbers."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _update_provenance(
    run_dir: Path, workflow: Workflow, stage: str | None, timing: dict[str, Any] | None
) -> None:
    path = Path(run_dir) / "provenance.json"
    with locked(Path(run_dir) / ".provenance.lock"):
        prov = read_json(path) or {"created": _now(), "stages": {}}
        prov.update(
            {
                "workflow": workflow.name,
                "code_version": code_version(),
                "packages": package_versions(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "host": socket.gethostname(),
                "seeds": {
                    "workflow": workflow.seed,
                    "perturbation": workflow.perturbation_seed(),
                    "train": workflow.train.seeds if workflow.train else None,
                },
                "updated": _now(),
            }
        )
        if stage is not None and timing is not None:
            prov.setdefault("stages", {})[stage] = timing
        write_json(path, prov)


# --------------------------------------------------------------------------------------------------
# logging into the run directory
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stage_log(path: Path) -> Iterator[None]:
    """Copy INFO and above of every logger into ``path`` while a stage runs (console level unchanged)."""
    make_dir(path.parent)
    handler = logging.FileHandler(path, encoding="utf-8")
    os.chmod(path, FILE_MODE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    old_handler_levels = [(h, h.level) for h in root.handlers]
    if old_level > logging.INFO:
        for h, level in old_handler_levels:
            h.setLevel(max(level, old_level))
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for h, level in old_handler_levels:
            h.setLevel(level)


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    """What happened to one stage (or shard) in one invocation."""

    stage: str
    shard: tuple[int, int]
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/N`` (0 <= i < N)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise UserError(f"--shard must look like i/N (e.g. 3/8), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < N")
    return i, n


def prepare_run_dir(workflow: Workflow, run_dir: Path) -> None:
    """Create the run directory skeleton and write the config snapshot."""
    for sub in ("", "logs", "stages"):
        make_dir(run_dir / sub)
    write_text_atomic(run_dir / "config.yaml", dump_workflow(workflow))


def _finalise_stage(
    run_dir: Path, stage: str, digest: str, n: int, started_this: float
) -> dict[str, Any] | None:
    """Write the stage record once every shard of a split into ``n`` is done for ``digest``."""
    with locked(run_dir / "stages" / f".{stage}.lock"):
        recs = {k: v for k, v in shard_records(run_dir, stage).items() if k[1] == n}
        if len(recs) < n or any(
            r.get("status") != "done" or r.get("config_hash") != digest for r in recs.values()
        ):
            return None
        outputs: dict[str, str] = {}
        info: dict[str, Any] = {}
        for _, rec in sorted(recs.items()):
            outputs.update(rec.get("outputs") or {})
            info.update(rec.get("info") or {})
        starts = [r["started"] for r in recs.values() if r.get("started")]
        ends = [r["finished"] for r in recs.values() if r.get("finished")]
        record = {
            "stage": stage,
            "status": "done",
            "config_hash": digest,
            "shards": n,
            "started": min(starts) if starts else None,
            "finished": max(ends) if ends else None,
            "seconds": round(sum(float(r.get("seconds") or 0.0) for r in recs.values()), 3),
            "outputs": outputs,
            "info": info,
        }
        write_json(stage_record_path(run_dir, stage), record)
        return record


def run_stage(
    workflow: Workflow,
    run_dir: Path,
    stage: str,
    *,
    shard: tuple[int, int] = (0, 1),
    registry: Registry | None = None,
    force: bool = False,
) -> StageResult:
    """Run one stage (or one shard of it), skipping it when already done for this configuration."""
    registry = registry if registry is not None else default_registry()
    if stage not in registry:
        raise UserError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_ORDER)}")
    enabled = workflow.enabled_stages()
    if stage not in enabled:
        raise UserError(
            f"stage {stage!r} is not enabled in workflow {workflow.name!r} (enabled: {', '.join(enabled)})"
        )
    spec = registry[stage]
    i, n = shard
    if n > 1 and not spec.shardable:
        raise UserError(f"stage {stage!r} cannot be split into shards")
    hashes = stage_hashes(workflow, registry)
    digest = hashes[stage]
    upstream: dict[str, dict[str, Any]] = {}
    for prev in enabled[: enabled.index(stage)]:
        if not is_done(run_dir, prev, hashes[prev]):
            raise UserError(
                f"stage {prev!r} has not finished for this configuration; run it first "
                f"(wxens run WORKFLOW --stage {prev})"
            )
        upstream[prev] = read_stage_record(run_dir, prev) or {}

    if not force and is_done(run_dir, stage, digest):
        logger.info("%s: done for this configuration, skipped", stage)
        return StageResult(stage, shard, "skipped")
    shard_path = shard_record_path(run_dir, stage, shard)
    prior = read_json(shard_path)
    label = stage if n == 1 else f"{stage} shard {i}/{n}"
    if not force and prior and prior.get("status") == "done" and prior.get("config_hash") == digest:
        if _outputs_exist(run_dir, prior):
            logger.info("%s: done for this configuration, skipped", label)
            _finalise_stage(run_dir, stage, digest, n, time.time())
            return StageResult(stage, shard, "skipped")

    log_file = log_path(run_dir, stage, shard)
    ctx = StageContext(
        workflow=workflow,
        run_dir=run_dir,
        stage=stage,
        shard=shard,
        log_file=log_file,
        upstream=upstream,
        config_hash=digest,
    )
    base = {"stage": stage, "shard": [i, n], "config_hash": digest, "config": config_subset(workflow, spec)}
    started, t0 = _now(), time.perf_counter()
    write_json(
        shard_path,
        {**base, "status": "running", "started": started, "host": socket.gethostname(), "pid": os.getpid()},
    )
    if (
        n == 1
        or not stage_record_path(run_dir, stage).exists()
        or (read_stage_record(run_dir, stage) or {}).get("config_hash") != digest
    ):
        write_json(
            stage_record_path(run_dir, stage), {**base, "status": "running", "shards": n, "started": started}
        )
    logger.info("%s: started (log: %s)", label, log_file)
    with _stage_log(log_file):
        try:
            result = dict(spec.func(ctx) or {})
        except BaseException as exc:
            seconds = time.perf_counter() - t0
            # the traceback goes to the stage's log file only; the console gets one line
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(f"{_now()} ERROR {label} failed after {seconds:.1f} s\n{traceback.format_exc()}")
            message = str(exc) or type(exc).__name__
            failed = {
                **base,
                "status": "failed",
                "started": started,
                "finished": _now(),
                "seconds": round(seconds, 3),
                "error": message,
                "host": socket.gethostname(),
            }
            write_json(shard_path, failed)
            write_json(stage_record_path(run_dir, stage), {**failed, "shards": n})
            if isinstance(exc, UserError):
                raise
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise StageError(
                f"stage {label} failed: {type(exc).__name__}: {message} (log: {log_file})"
            ) from exc
    seconds = time.perf_counter() - t0
    outputs = {str(k): str(v) for k, v in (result.pop("outputs", None) or {}).items()}
    done = {
        **base,
        "status": "done",
        "started": started,
        "finished": _now(),
        "seconds": round(seconds, 3),
        "outputs": outputs,
        "info": result,
        "host": socket.gethostname(),
    }
    write_json(shard_path, done)
    record = _finalise_stage(run_dir, stage, digest, n, t0)
    _update_provenance(
        run_dir,
        workflow,
        f"{stage}" if n == 1 else f"{stage}[{i}/{n}]",
        {"seconds": round(seconds, 3), "finished": done["finished"], "host": done["host"]},
    )
    logger.info("%s: done in %.1f s%s", label, seconds, "" if record or n == 1 else " (other shards pending)")
    return StageResult(stage, shard, "done", seconds, outputs)


def run_workflow(
    workflow: Workflow,
    *,
    run_dir: Path | None = None,
    stages: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    registry: Registry | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[StageResult]:
    """Run the workflow's enabled stages in order (or only ``stages``), each skipped when done.

    ``shard=(i, N)`` runs shard ``i`` of ``N`` of a single stage (what a batch array task does).
    ``progress`` receives one human-readable line per stage event.
    """
    registry = registry if registry is not None else default_registry()
    run_dir = Path(run_dir) if run_dir is not None else workflow.resolved_run_dir()
    enabled = workflow.enabled_stages()
    for stage in stages or []:
        if stage not in STAGE_ORDER:
            raise UserError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_ORDER)}")
        if stage not in enabled:
            raise UserError(
                f"stage {stage!r} is not enabled in this workflow (enabled: {', '.join(enabled)})"
            )
    todo = [s for s in enabled if stages is None or s in stages]
    if shard is not None and len(todo) != 1:
        raise UserError("--shard needs exactly one --stage")
    prepare_run_dir(workflow, run_dir)
    _update_provenance(run_dir, workflow, None, None)
    say = progress or (lambda line: logger.info("%s", line))
    results = []
    for k, stage in enumerate(todo, 1):
        say(f"[{k}/{len(todo)}] {stage} ...")
        res = run_stage(workflow, run_dir, stage, shard=shard or (0, 1), registry=registry, force=force)
        results.append(res)
        say(
            f"[{k}/{len(todo)}] {stage}: {res.status}"
            + (f" in {res.seconds:.1f} s" if res.status == "done" else "")
        )
    return results
