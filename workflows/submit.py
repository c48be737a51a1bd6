"""Batch submission: one SLURM array job per stage, chained with ``--dependency=afterok``.

Each array task runs one shard of a stage::

    wxens run WORKFLOW --run-dir RUN_DIR --stage forecast --shard $SLURM_ARRAY_TASK_ID/N

Every value that comes from the workflow or the command line reaches the batch system either as one
element of an argument list (``subprocess.run([...])``, never a shell) or, inside the job script,
quoted with :func:`shlex.quote`; resource values are checked against a safe character set by the
schema. ``--scheduler local`` runs the same shards as local processes in dependency order.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from data_catalog.errors import UserError
from workflows.runner import FILE_MODE, log_path, make_dir, write_text_atomic
from workflows.schema import SHARDABLE_STAGES, StageResources, Workflow

logger = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^\s*(?:Submitted batch job\s+)?(\d+)(?:;\S+)?\s*$")


@dataclass
class Job:
    """One stage as a batch job."""

    stage: str
    shards: int
    resources: StageResources
    script: Path | None = None
    job_id: str | None = None
    argv: list[str] = field(default_factory=list)


def default_command() -> list[str]:
    """How a job calls wxens: the ``wxens`` script beside this Python, else ``python -m workflows.cli``."""
    script = Path(sys.executable).parent / "wxens"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "workflows.cli"]


def _apply_overrides(res: StageResources, overrides: dict[str, Any] | None) -> StageResources:
    data = res.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return StageResources.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"--{key}: {msg}") from None


def plan_jobs(
    workflow: Workflow, stages: Sequence[str] | None = None, overrides: dict[str, Any] | None = None
) -> list[Job]:
    """One :class:`Job` per enabled stage (or per requested stage), resources merged with overrides."""
    enabled = workflow.enabled_stages()
    for s in stages or []:
        if s not in enabled:
            raise UserError(f"stage {s!r} is not enabled in this workflow (enabled: {', '.join(enabled)})")
    jobs = []
    for stage in enabled:
        if stages and stage not in stages:
            continue
        res = _apply_overrides(workflow.resources.for_stage(stage), overrides)
        shards = res.shards or 1
        if stage not in SHARDABLE_STAGES:
            shards = 1
        jobs.append(Job(stage=stage, shards=shards, resources=res))
    return jobs


def _template() -> str:
    return (
        importlib_resources.files("workflows")
        .joinpath("templates/slurm_array.sh")
        .read_text(encoding="utf-8")
    )


def _fill(template: str, values: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {key!r} has no value")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", repl, template)


def render_script(
    job: Job, workflow_path: Path, run_dir: Path, *, command: Sequence[str], cwd: Path, name: str
) -> str:
    """The job script of ``job``: #SBATCH resource lines, then ``wxens run ... --stage S --shard i/N``."""
    r = job.resources
    lines = []
    if job.shards > 1:
        lines.append(f"#SBATCH --array=0-{job.shards - 1}")
    if r.partition:
        lines.append(f"#SBATCH --partition={r.partition}")
    if r.account:
        lines.append(f"#SBATCH --account={r.account}")
    if r.time:
        lines.append(f"#SBATCH --time={r.time}")
    if r.gpus:
        lines.append(f"#SBATCH --gpus={int(r.gpus)}")
    if r.cpus:
        lines.append(f"#SBATCH --cpus-per-task={int(r.cpus)}")
    if r.mem:
        lines.append(f"#SBATCH --mem={r.mem}")
    lines.append("#SBATCH --ntasks=1")
    shard_arg = f' --shard "${{SLURM_ARRAY_TASK_ID}}/{job.shards}"' if job.shards > 1 else ""
    env = ['export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"']
    # the name only ever appears in a comment, quoted and on one line (control characters are refused)
    return _fill(
        _template(),
        {
            "stage": job.stage,
            "workflow_comment": shlex.quote(name),
            "sbatch_lines": "\n".join(lines),
            "cwd": shlex.quote(str(cwd)),
            "env_lines": "\n".join(env),
            "command": shlex.join(list(command)),
            "workflow": shlex.quote(str(workflow_path)),
            "run_dir": shlex.quote(str(run_dir)),
            "shard_arg": shard_arg,
        },
    )


def parse_job_id(stdout: str) -> str:
    """Job id from ``sbatch --parsable`` (``123`` or ``123;cluster``) or ``Submitted batch job 123``."""
    for line in reversed(stdout.strip().splitlines()):
        m = _JOB_ID.match(line)
        if m:
            return m.group(1)
    raise UserError(f"could not read a job id from sbatch's output: {stdout.strip()[:200]!r}")


def write_scripts(
    workflow: Workflow, workflow_path: Path, run_dir: Path, jobs: list[Job], command: Sequence[str], cwd: Path
) -> None:
    """Write ``RUN_DIR/jobs/<stage>.sbatch`` for every job."""
    folder = make_dir(run_dir / "jobs")
    make_dir(run_dir / "logs")
    for job in jobs:
        text = render_script(job, workflow_path, run_dir, command=command, cwd=cwd, name=workflow.name)
        job.script = folder / f"{job.stage}.sbatch"
        write_text_atomic(job.script, text, mode=0o755)


def _prepare(
    workflow: Workflow,
    workflow_path: str | Path,
    run_dir: Path | None,
    stages: Sequence[str] | None,
    overrides: dict[str, Any] | None,
    say: Callable[[str], None] | None,
) -> tuple[Callable[[str], None], Path, Path, Path, list[Job]]:
    """Shared start of every scheduler: resolve paths, create the run dir, plan the jobs."""
    say = say or (lambda line: logger.info("%s", line))
    cwd = Path.cwd()
    run_dir = Path(run_dir).resolve() if run_dir else workflow.resolved_run_dir(cwd)
    make_dir(run_dir)
    return say, Path(workflow_path).resolve(), cwd, run_dir, plan_jobs(workflow, stages, overrides)


def submit_slurm(
    workflow: Workflow,
    workflow_path: str | Path,
    *,
    run_dir: Path | None = None,
    stages: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    command: Sequence[str] | None = None,
    sbatch: str = "sbatch",
    say: Callable[[str], None] | None = None,
) -> list[Job]:
    """Write the job scripts and submit them in stage order, each after the previous one succeeded."""
    say, workflow_path, cwd, run_dir, jobs = _prepare(
        workflow, workflow_path, run_dir, stages, overrides, say
    )
    write_scripts(workflow, workflow_path, run_dir, jobs, command or default_command(), cwd)
    exe = shutil.which(sbatch) if not dry_run else sbatch
    if exe is None:
        raise UserError(
            f"{sbatch} not found on PATH (use --scheduler local, or --dry-run to see the scripts)"
        )
    previous: str | None = None
    for job in jobs:
        assert job.script is not None
        argv = [
            exe,
            "--parsable",
            f"--job-name={workflow.name}-{job.stage}",
            f"--output={run_dir / 'logs' / ('slurm-' + job.stage + ('-%A_%a' if job.shards > 1 else '-%j') + '.out')}",
        ]
        if previous is not None:
            argv.append(f"--dependency=afterok:{previous}")
        argv.append(str(job.script))
        job.argv = argv
        if dry_run:
            job.job_id = f"<{job.stage}>"
            say(shlex.join(argv))
            previous = job.job_id
            continue
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            msg = (res.stderr or res.stdout).strip().splitlines()
            raise UserError(
                f"sbatch failed for stage {job.stage}: {msg[-1] if msg else f'exit {res.returncode}'}"
            )
        job.job_id = parse_job_id(res.stdout)
        previous = job.job_id
        say(
            f"submitted {job.stage} as job {job.job_id}"
            + (f" (array of {job.shards})" if job.shards > 1 else "")
        )
    return jobs


def run_local(
    workflow: Workflow,
    workflow_path: str | Path,
    *,
    run_dir: Path | None = None,
    stages: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
    command: Sequence[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Job]:
    """Run every stage's shards as local processes, a stage only after the previous one succeeded."""
    say, workflow_path, cwd, run_dir, plan = _prepare(
        workflow, workflow_path, run_dir, stages, overrides, say
    )
    base = list(command or default_command())
    for job in plan:

        def one(i: int, job: Job = job) -> tuple[int, int]:
            argv = [*base, "run", str(workflow_path), "--run-dir", str(run_dir), "--stage", job.stage]
            if job.shards > 1:
                argv += ["--shard", f"{i}/{job.shards}"]
            out = log_path(run_dir, job.stage, (i, job.shards)).with_suffix(".out")
            make_dir(out.parent)
            with open(out, "w", encoding="utf-8") as fh:
                os.chmod(out, FILE_MODE)
                env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i)}
                proc = subprocess.run(
                    argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, check=False
                )
            return i, proc.returncode

        say(f"{job.stage}: {job.shards} shard(s)")
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, job.shards))) as pool:
            results = list(pool.map(one, range(job.shards)))
        failed = [i for i, rc in results if rc != 0]
        if failed:
            out = log_path(run_dir, job.stage, (failed[0], job.shards)).with_suffix(".out")
            tail = ""
            try:
                lines = [
                    ln for ln in out.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
                ]
                tail = f": {lines[-1].strip()}" if lines else ""
            except OSError:
                pass
            raise UserError(f"stage {job.stage} shard {failed[0]}/{job.shards} failed{tail} (output: {out})")
        say(f"{job.stage}: done")
    return plan
