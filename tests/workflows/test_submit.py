"""Batch submission with a fake ``sbatch`` on PATH: scripts, array shards, afterok chains, quoting."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from fakes import calls

from data_catalog.errors import UserError
from workflows.runner import read_stage_record
from workflows.schema import load_workflow
from workflows.submit import parse_job_id, plan_jobs, run_local, submit_slurm

HERE = Path(__file__).resolve().parent
FAKE_CMD = [sys.executable, str(HERE / "fakes.py")]

FAKE_SBATCH = r'''#!PYTHON
"""Fake sbatch: records its arguments and script, runs every array index, prints a job id."""
import json, os, re, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SBATCH_DIR"])
args = sys.argv[1:]
script = Path(args[-1])
text = script.read_text()
jobs_file = state / "jobs.json"
jobs = json.loads(jobs_file.read_text()) if jobs_file.exists() else []
job_id = str(1000 + len(jobs))
opts = dict(a[2:].split("=", 1) for a in args[:-1] if a.startswith("--") and "=" in a)
deps = opts.get("dependency", "").removeprefix("afterok:").split(":") if "dependency" in opts else []
ok = {j["id"]: j["ok"] for j in jobs}
for d in deps:
    if d not in ok:
        print(f"sbatch: error: unknown dependency {d}", file=sys.stderr)
        sys.exit(1)
m = re.search(r"^#SBATCH --array=(\d+)-(\d+)$", text, re.M)
indices = range(int(m.group(1)), int(m.group(2)) + 1) if m else [None]
rcs = []
if all(ok[d] for d in deps):
    for i in indices:
        env = dict(os.environ, SLURM_JOB_ID=job_id)
        if i is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(i)
        rcs.append(subprocess.run(["bash", str(script)], env=env).returncode)
jobs.append({"id": job_id, "args": args, "script": text, "ok": bool(rcs) and all(r == 0 for r in rcs),
             "ran": len(rcs)})
jobs_file.write_text(json.dumps(jobs))
print(job_id if "--parsable" in args else f"Submitted batch job {job_id}")
'''


@pytest.fixture
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "sbatch"
    exe.write_text(FAKE_SBATCH.replace("PYTHON", sys.executable))
    exe.chmod(0o755)
    state = tmp_path / "sbatch-state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_DIR", str(state))
    return state


def _workflow(tmp_path: Path, name: str = "t", extra: str = "", run_dir: Path | None = None) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(
        f"name: {json.dumps(name)}\n"
        f"run_dir: {json.dumps(str(run_dir or tmp_path / 'run'))}\n"
        "forecast: {members: 4, init_times: [2008-01-01], lead_steps: 2}\n"
        "resources:\n  partition: cpu\n  account: proj_1\n  stages: {forecast: {shards: 3, gpus: 1, partition: gpu}}\n"
        + extra
    )
    return path


HOSTILE = "x$(touch pwned); touch pwned2 `touch pwned3` \"q\" 'r'"


def test_chain_of_array_jobs_runs_every_shard(tmp_path: Path, fake_sbatch: Path, monkeypatch) -> None:
    """The whole chain through a fake sbatch, with a hostile job name and run directory."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "r $(touch pwned);'x'"
    path = _workflow(tmp_path, name=HOSTILE, run_dir=run)
    wf = load_workflow(path)
    assert wf.name == HOSTILE
    jobs = submit_slurm(wf, path, command=FAKE_CMD)
    recorded = json.loads((fake_sbatch / "jobs.json").read_text())
    assert [j.stage for j in jobs] == ["prepare", "skill", "forecast", "score", "report"]
    assert [j.job_id for j in jobs] == [r["id"] for r in recorded] == ["1000", "1001", "1002", "1003", "1004"]
    # each job depends on the previous one
    for prev, rec in zip(recorded, recorded[1:], strict=False):
        assert f"--dependency=afterok:{prev['id']}" in rec["args"]
    assert not any(a.startswith("--dependency") for a in recorded[0]["args"])
    assert all(r["ok"] for r in recorded)
    fc = recorded[2]
    assert "#SBATCH --array=0-2" in fc["script"] and "#SBATCH --partition=gpu" in fc["script"]
    assert "#SBATCH --gpus=1" in fc["script"] and "#SBATCH --account=proj_1" in fc["script"]
    assert '--stage forecast --shard "${SLURM_ARRAY_TASK_ID}/3"' in fc["script"]
    assert fc["ran"] == 3 and recorded[0]["ran"] == 1
    assert "#SBATCH --partition=cpu" in recorded[0]["script"] and "--array" not in recorded[0]["script"]
    names = [a.split("=", 1)[1] for r in recorded for a in r["args"] if a.startswith("--job-name=")]
    assert names == [f"{HOSTILE}-{s}" for s in ("prepare", "skill", "forecast", "score", "report")]
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    assert sorted(c for c in calls(run) if c.startswith("forecast")) == [
        "forecast 0/3",
        "forecast 1/3",
        "forecast 2/3",
    ]
    assert calls(run)[-1] == "report 0/1"
    rec = read_stage_record(run, "forecast")
    assert rec["status"] == "done" and rec["shards"] == 3
    assert (run / "jobs" / "forecast.sbatch").is_file()


def test_failed_shard_stops_the_chain(tmp_path: Path, fake_sbatch: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _workflow(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "FAIL_skill").touch()
    submit_slurm(load_workflow(path), path, command=FAKE_CMD)
    recorded = json.loads((fake_sbatch / "jobs.json").read_text())
    assert [r["ok"] for r in recorded] == [True, False, False, False, False]
    assert [r["ran"] for r in recorded] == [1, 1, 0, 0, 0]  # afterok: later stages never start
    assert read_stage_record(tmp_path / "run", "skill")["status"] == "failed"


def test_dry_run_and_overrides(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    from workflows.cli import main

    path = _workflow(tmp_path)
    rc = main(["submit", str(path), "--dry-run", "--partition", "big", "--time", "02:30:00", "--gpus", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("--parsable") == 5 and "--dependency=afterok:" in err
    script = (tmp_path / "run" / "jobs" / "forecast.sbatch").read_text()
    assert "#SBATCH --partition=big" in script and "#SBATCH --time=02:30:00" in script
    assert "#SBATCH --gpus=2" in script
    assert not (tmp_path / "run" / "stages").exists()  # nothing ran
    assert main(["submit", str(path), "--dry-run", "--partition", "a;b"]) == 2
    assert "--partition: only letters" in capsys.readouterr().err
    assert main(["submit", str(path), "--scheduler", "pbs"]) == 2


def test_sbatch_missing_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    path = _workflow(tmp_path)
    with pytest.raises(UserError, match="sbatch not found"):
        submit_slurm(load_workflow(path), path, command=FAKE_CMD)


def test_parse_job_id() -> None:
    assert parse_job_id("Submitted batch job 4242\n") == "4242"
    assert parse_job_id("4243;cluster1\n") == "4243"
    assert parse_job_id("4244") == "4244"
    with pytest.raises(UserError):
        parse_job_id("sbatch: error: Batch job submission failed")


def test_plan_shards_only_shardable(tmp_path: Path) -> None:
    wf = load_workflow(_workflow(tmp_path, extra="  shards: 5\n"))
    assert {j.stage: j.shards for j in plan_jobs(wf)} == {
        "prepare": 1,
        "skill": 1,
        "forecast": 3,
        "score": 1,
        "report": 1,
    }


def test_local_scheduler_runs_shards_in_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _workflow(tmp_path)
    run_local(load_workflow(path), path, command=FAKE_CMD, jobs=2, stages=["prepare", "skill", "forecast"])
    seq = calls(tmp_path / "run")
    assert seq[:2] == ["prepare 0/1", "skill 0/1"]
    assert sorted(seq[2:]) == ["forecast 0/3", "forecast 1/3", "forecast 2/3"]
    assert read_stage_record(tmp_path / "run", "forecast")["status"] == "done"
    assert (tmp_path / "run" / "logs" / "forecast-shard-2-of-3.out").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "FAIL_prepare").touch()
    with pytest.raises(UserError, match="stage prepare shard 0/1 failed: error: stage prepare failed"):
        run_local(load_workflow(path), path, run_dir=other, command=FAKE_CMD)
    assert calls(other) == ["prepare 0/1"]
