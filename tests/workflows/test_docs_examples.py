"""Commands shown in the docs that no other test ran (found by test_docs_commands.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fakes import calls

from workflows import submit
from workflows.cli import main
from workflows.runner import read_stage_record

HERE = Path(__file__).resolve().parent


def _workflow(tmp_path: Path) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(
        "name: docs\n"
        f"run_dir: {json.dumps(str(tmp_path / 'run'))}\n"
        "forecast: {members: 4, init_times: [2008-01-01], lead_steps: 2}\n"
        "resources:\n  partition: cpu\n  account: proj_1\n  stages: {forecast: {shards: 2, partition: gpu}}\n"
    )
    return path


def test_submit_account_override_dry_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/batch.md: `wxens submit W --partition P --account A --time T --gpus 1`."""
    monkeypatch.chdir(tmp_path)
    path = _workflow(tmp_path)
    argv = ["submit", str(path), "--dry-run", "--partition", "gpu-long", "--account", "myproj"]
    assert main([*argv, "--time", "08:00:00", "--gpus", "1"]) == 0
    jobs = tmp_path / "run" / "jobs"
    scripts = {p.stem: p.read_text() for p in jobs.glob("*.sbatch")}
    assert set(scripts) == {"prepare", "skill", "forecast", "score", "report"}
    for text in scripts.values():  # the flags win over the workflow's resources, for every stage
        assert "#SBATCH --account=myproj\n" in text and "#SBATCH --partition=gpu-long\n" in text
        assert "#SBATCH --time=08:00:00\n" in text and "#SBATCH --gpus=1\n" in text
        assert "proj_1" not in text
    assert "#SBATCH --array=0-1" in scripts["forecast"]
    assert capsys.readouterr().err.count("sbatch --parsable") == 5
    assert main(["submit", str(path), "--dry-run", "--account", "a b"]) == 2
    assert "--account" in capsys.readouterr().err


def test_submit_local_scheduler_with_jobs(tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/batch.md: `wxens submit workflows/demo.yaml --scheduler local -j 2` (the stages are fakes)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(submit, "default_command", lambda: [sys.executable, str(HERE / "fakes.py")])
    path = _workflow(tmp_path)
    assert main(["submit", str(path), "--scheduler", "local", "-j", "2"]) == 0
    err = capsys.readouterr().err
    assert "forecast: 2 shard(s)" in err and "report: done" in err
    seq = calls(tmp_path / "run")
    assert seq[:2] == ["prepare 0/1", "skill 0/1"] and seq[-2:] == ["score 0/1", "report 0/1"]
    assert sorted(seq[2:4]) == ["forecast 0/2", "forecast 1/2"]
    assert read_stage_record(tmp_path / "run", "forecast")["status"] == "done"
    assert main(["submit", str(path), "--scheduler", "local", "-j", "2", "--dry-run"]) == 2
    assert "--dry-run applies to --scheduler slurm" in capsys.readouterr().err


def test_profile_summarize_pyspy_raw(tmp_path: Path, capsys) -> None:
    """docs/benchmarks.md: `python -m benchmarks.profile --summarize rollout.txt` on a known raw file."""
    from benchmarks import profile

    raw = tmp_path / "rollout.txt"
    raw.write_text(
        "<module> (x.py:1);run_forecast (engine.py:10);step (sfno.py:5);sht (sht.py:7) 6\n"
        "<module> (x.py:1);run_forecast (engine.py:10);write (store.py:3) 3\n"
        "<module> (x.py:1);run_forecast (engine.py:10) 1\n"
        "<module> (x.py:1);import_torch (t.py:2) 90\n"  # outside run_forecast: not counted
    )
    assert profile.main(["--summarize", str(raw)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("10 samples inside run_forecast\n")
    # inclusive: run_forecast 10/10, step 6/10, sht 6/10, write 3/10; self: sht 6, write 3, run_forecast 1
    assert "| 100.0 | `run_forecast (engine.py)` |" in out
    assert "| 60.0 | `step (sfno.py)` |" in out and "| 30.0 | `write (store.py)` |" in out
    self_part = out.split("| self % |")[1]
    assert "| 60.0 | `sht (sht.py)` |" in self_part and "| 10.0 | `run_forecast (engine.py)` |" in self_part
    assert "step (sfno.py)" not in self_part and "import_torch" not in out


def test_profile_rollout_without_torch_profiler(capsys) -> None:
    """docs/benchmarks.md: `python -m benchmarks.profile --no-torch` (small sizes)."""
    import torch

    from benchmarks import profile

    threads = torch.get_num_threads()
    try:
        assert (
            profile.main(["--no-torch", "--members", "2", "--steps", "1", "--nlat", "16", "--rows", "5"]) == 0
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out  # (after a CLI test, log lines of the engine come first)
    assert "\n## run_forecast: 2 members x 1 steps, 32x16, 1 thread(s): " in "\n" + out
    assert "member-steps/s" in out and "cumulative" in out and "torch.profiler" not in out


@pytest.mark.slow
def test_benchmark_suite_huge_figure_with_repeats(tmp_path: Path) -> None:
    """docs/benchmarks.md: `python -m benchmarks --threads 2 --repeats 5 --huge-members ... --out DIR`
    (quick sizes, 1 thread, 2 rounds: about 60 s)."""
    import torch

    from benchmarks import suite

    threads = torch.get_num_threads()
    try:
        rc = suite.main(
            [
                "--quick",
                "--only",
                "huge",
                "--threads",
                "1",
                "--repeats",
                "2",
                "--huge-members",
                "2,4",
                "--out",
                str(tmp_path),
                "--workdir",
                str(tmp_path / "work"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["figures"]["huge"]["rows"]
    assert [r["members"] for r in rows] == [2, 4]
    assert all(r["complete"] and r["member_steps"] == r["members"] * r["steps"] for r in rows)
    assert all(len(r["repeat_wall_s"]) == 2 for r in rows)  # --repeats: rounds of figure 4's sizes
    assert (tmp_path / "RESULTS.md").is_file()


@pytest.mark.slow
def test_pipeline_experiment_small(tmp_path: Path) -> None:
    """docs/engine.md: `python -m pipeline.experiment OUT --inits 20 --leads 40 --pairs 2 --alpha 0.1
    --stochastic z500=2.0,u500=3.2,v500=3.2,vo500=2.4 --stochastic-ramp u500=36,v500=36,vo500=36
    --stochastic-schedule 0:1,72:1,192:0.3` at 1 init, 1 lead, 1 pair (shipped checkpoints, the built-in
    world; about 20 s once the world is cached)."""
    import torch

    from pipeline import experiment

    threads = torch.get_num_threads()
    try:
        argv = [str(tmp_path), "--inits", "1", "--leads", "1", "--pairs", "1", "--alpha", "0.1",
                "--stochastic", "z500=2.0,u500=3.2,v500=3.2,vo500=2.4", "--stochastic-ramp", "u500=36,v500=36,vo500=36",
                "--stochastic-schedule", "0:1,72:1,192:0.3"]  # fmt: skip
        assert experiment.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "summary.json").read_text())
    runs = {k: v for k, v in res.items() if isinstance(v, dict) and "crps" in v}
    assert set(runs) == {"a_bred_x_ckpts", "b_bred_x_1ckpt", "c_ckpts_only", "d_noise_x_ckpts"}
    n = runs["c_ckpts_only"]["members"]  # one unperturbed member per checkpoint
    assert runs["a_bred_x_ckpts"]["members"] == runs["b_bred_x_1ckpt"]["members"] == 2 * n  # 1 +/- pair each
    assert runs["d_noise_x_ckpts"]["members"] == 2 * n
    for name, r in runs.items():
        assert r["lead_hours"] == [0, 6]
        # at lead 0 the ensemble mean is the analysis (+/- pairs cancel; no perturbation in c)
        assert all(v[0] <= 1e-6 * v[1] for v in r["rmse_mean"].values()), name  # float32 cancellation
        assert all(v[1] > 0 for v in r["crps"].values()), name
    # unperturbed members all start on the analysis: CRPS 0 at lead 0; perturbed ones do not
    assert all(v[0] == 0.0 for v in runs["c_ckpts_only"]["crps"].values())
    assert runs["a_bred_x_ckpts"]["crps"]["z500"][0] > 0 and runs["d_noise_x_ckpts"]["crps"]["z500"][0] > 0
