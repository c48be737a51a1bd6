"""A fake SLURM for dask-jobqueue: ``sbatch`` starts the job script as a detached local process,
``scancel`` ends its process group, ``squeue`` lists the jobs still running.

State lives in ``$FAKE_SLURM_DIR``: ``job-<id>.json`` (arguments, script, pid, output paths),
``job-<id>.sh`` (the script; dask-jobqueue deletes its own copy right after submitting) and
``cancelled-<id>`` once scancel ran.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SBATCH = r"""#!PYTHON
import json, os, re, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
args = sys.argv[1:]
script = Path(args[-1])
text = script.read_text()
job_id = 4000
while True:  # concurrent submissions (SLURMCluster.scale) get distinct ids
    try:
        fd = os.open(state / f"job-{job_id}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        break
    except FileExistsError:
        job_id += 1
copy = state / f"job-{job_id}.sh"
copy.write_text(text)

def directive(*flags):
    for flag in flags:
        m = re.search(r"^#SBATCH\s+" + re.escape(flag) + r"[ =](\S+)\s*$", text, re.M)
        if m:
            return m.group(1).replace("%J", str(job_id)).replace("%j", str(job_id))
    return None

out = directive("-o", "--output") or str(state / f"slurm-{job_id}.out")
err = directive("-e", "--error") or out
env = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOB_NAME=directive("-J", "--job-name") or "")
with open(out, "ab") as fo, open(err, "ab") as fe:
    proc = subprocess.Popen(["bash", str(copy)], stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                            env=env, start_new_session=True)
record = {"id": str(job_id), "args": args, "script": text, "pid": proc.pid, "out": out, "err": err}
with os.fdopen(fd, "w") as fh:
    json.dump(record, fh)
print(f"Submitted batch job {job_id}")
"""

SCANCEL = r"""#!PYTHON
import json, os, signal, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
for job_id in sys.argv[1:]:
    path = state / f"job-{job_id}.json"
    if not path.exists():
        print(f"scancel: error: Invalid job id specified: {job_id}", file=sys.stderr)
        sys.exit(1)
    (state / f"cancelled-{job_id}").touch()
    try:
        os.killpg(json.loads(path.read_text())["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
"""

SQUEUE = r"""#!PYTHON
import json, os
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
print("JOBID STATE")
for path in sorted(state.glob("job-*.json")):
    rec = json.loads(path.read_text() or "{}")
    if not rec:
        continue
    try:
        os.killpg(rec["pid"], 0)
        print(rec["id"], "RUNNING")
    except ProcessLookupError:
        pass
"""


@dataclass
class FakeSlurm:
    bindir: Path
    state: Path

    def jobs(self) -> list[dict]:
        """Submitted jobs, in order of their ids."""
        texts = [p.read_text() for p in self.state.glob("job-*.json")]
        recs = [json.loads(t) for t in texts if t]  # empty while sbatch is still starting the job
        return sorted(recs, key=lambda r: int(r["id"]))

    def cancelled(self) -> set[str]:
        return {p.name.split("-", 1)[1] for p in self.state.glob("cancelled-*")}

    def alive(self) -> list[int]:
        """Processes still running in the jobs' process groups (bash, the nanny, the worker)."""
        import psutil

        groups = {r["pid"] for r in self.jobs()}
        out = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        return out

    def wait_gone(self, timeout: float = 30.0) -> list[int]:
        """Wait until every job process ended; returns those still alive."""
        end = time.monotonic() + timeout
        while (alive := self.alive()) and time.monotonic() < end:
            time.sleep(0.2)
        return alive

    def kill_all(self) -> None:
        for rec in self.jobs():
            try:
                os.killpg(rec["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def install(root: Path) -> FakeSlurm:
    """Write sbatch/scancel/squeue into ``root/bin``; the caller puts it first on PATH and sets
    ``FAKE_SLURM_DIR`` to ``root/state``."""
    bindir, state = root / "bin", root / "state"
    bindir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL), ("squeue", SQUEUE)):
        exe = bindir / name
        exe.write_text(text.replace("PYTHON", sys.executable, 1))
        exe.chmod(0o755)
    return FakeSlurm(bindir, state)
