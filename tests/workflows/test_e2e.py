"""The real chain prepare -> skill -> forecast -> score -> report through the real pipeline and
evaluation layers, on a small synthetic analysis with the engine's toy checkpoints (fast, no world
build), checked against independent numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pipeline.engine", reason="the pipeline engine is not committed yet")
pytest.importorskip("evaluation.report", reason="the evaluation report is not committed yet")


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run the whole workflow once for the module: returns (workflow file, run dir)."""
    import torch

    from pipeline.testing import CHANNELS, STDS, synthetic_analysis, write_toy_checkpoint
    from workflows.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("e2e")
    synthetic_analysis(start="2008-01-01T00", periods=40, seed=3).to_zarr(root / "analysis.zarr", mode="w")
    for seed in (1, 2):
        p = write_toy_checkpoint(root / "ckpts" / f"seed-{seed}", seed)
        skill = {c: [0.2 * STDS[c], 0.4 * STDS[c], 0.5 * STDS[c]] for c in CHANNELS}
        (p / "skill.json").write_text(json.dumps({"lead_hours": [6, 24, 48], "rmse": skill}))
    wf = root / "wf.yaml"
    wf.write_text(
        f"""
name: e2e
run_dir: {root / "run"}
seed: 5
data:
  source: {root / "analysis.zarr"}
  test: {{start: 2008-01-01, end: 2008-01-10T18:00}}
forecast:
  checkpoints: {root / "ckpts"}
  model_loader: pipeline.testing:load_toy_checkpoint
  members: 4
  init_times: [2008-01-02, 2008-01-04T12:00]
  lead_steps: 8
  batch_size: 4
score:
  baselines: [persistence]
  dask: {{mode: local, n_workers: 2, threads_per_worker: 1}}
report: {{variables: [z500]}}
"""
    )
    assert main(["-q", "run", str(wf)]) == 0
    return wf, root / "run"


def test_chain_outputs_and_status(e2e_run, capsys) -> None:
    from workflows.cli import main
    from workflows.runner import read_stage_record

    wf, run = e2e_run
    for stage in ("prepare", "skill", "forecast", "score", "report"):
        assert read_stage_record(run, stage)["status"] == "done", stage
    assert (run / "report" / "report.html").is_file()
    assert main(["status", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    fc = rows["forecast"]
    assert fc["units"] == "4/4" and fc["members"] == 8 and fc["member_forecasts_written"] == 16
    assert main(["info", str(run / "forecast" / "forecast.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"]["number"] == 8 and info["dims"]["prediction_timedelta"] == 9
    assert info["members"] == {"count": 8, "checkpoints": 2, "pairs": 2}
    # a second run does nothing
    assert main(["run", str(wf)]) == 0
    out = capsys.readouterr()
    assert out.err.count(": skipped") == 5 and f"report: {run / 'report' / 'report.html'}" in out.out


def test_scores_match_independent_numbers(e2e_run) -> None:
    import scoringrules as sr
    import xarray as xr

    import wxens
    from data_catalog.grid import area_weights

    _, run = e2e_run
    fc = wxens.open_forecast(run / "forecast", channels=True).load()
    assert fc.attrs["wxens_complete"]
    truth = wxens.open_reanalysis(str(Path(run).parent / "analysis.zarr")).load()
    scores = wxens.open_scores(run / "scores.zarr")
    w = area_weights(fc["latitude"].values)[:, None] * np.ones(fc.sizes["longitude"])
    lead = 4
    td = fc["prediction_timedelta"].values[lead]
    x = fc["z500"].isel(prediction_timedelta=lead).values  # (init, member, lat, lon)
    y = np.stack([truth["z500"].sel(time=t + td).values for t in fc["time"].values])
    y0 = np.stack([truth["z500"].sel(time=t).values for t in fc["time"].values])
    rmse = np.sqrt(np.mean([np.average((x[i].mean(0) - y[i]) ** 2, weights=w) for i in range(len(y))]))
    crps = np.mean(
        [
            np.average(sr.crps_ensemble(y[i], x[i], m_axis=0, estimator="fair"), weights=w)
            for i in range(len(y))
        ]
    )
    persistence = np.sqrt(np.mean([np.average((y0[i] - y[i]) ** 2, weights=w) for i in range(len(y))]))
    sel = {"variable": "z500", "region": "global", "prediction_timedelta": td}
    assert float(scores["rmse"].sel(forecast="e2e", **sel)) == pytest.approx(rmse, rel=1e-4)
    assert float(scores["crps"].sel(forecast="e2e", **sel)) == pytest.approx(crps, rel=1e-4)
    assert float(scores["rmse"].sel(forecast="persistence", **sel)) == pytest.approx(persistence, rel=1e-4)
    assert isinstance(truth, xr.Dataset) and rmse > 0


def test_members_follow_the_layout(e2e_run) -> None:
    import wxens

    _, run = e2e_run
    fc = wxens.open_forecast(run / "forecast", channels=True)
    np.testing.assert_array_equal(fc["checkpoint"].values, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(fc["sign"].values, [1, -1, 1, -1, 1, -1, 1, -1])
    x = fc["z500"].isel(time=0, prediction_timedelta=0).values
    # +/- pairs are symmetric about the unperturbed analysis at lead 0
    np.testing.assert_allclose((x[0] + x[1]) / 2, (x[2] + x[3]) / 2, rtol=1e-5)
    assert np.abs(x[0] - x[1]).max() > 0


def test_changed_config_restarts_forecast_cleanly(e2e_run, tmp_path: Path) -> None:
    """Changing members reruns forecast into a fresh engine folder (no 'different config' error)."""
    from workflows.runner import run_stage
    from workflows.schema import load_workflow_text

    wf, run = e2e_run
    text = wf.read_text().replace("members: 4", "members: 2").replace(str(run), str(tmp_path / "run2"))
    import shutil

    shutil.copytree(run, tmp_path / "run2")
    w = load_workflow_text(text)
    res = run_stage(w, tmp_path / "run2", "forecast")
    assert res.status == "done"
    import wxens

    assert wxens.open_forecast(tmp_path / "run2" / "forecast", channels=True).sizes["number"] == 4


def test_notebook_runs_against_the_run(e2e_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """workflows/notebooks/explore_ensemble.ipynb executes top to bottom and draws its two figures."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    _, run = e2e_run
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("WXENS_RUN_DIR", str(run))
    nb = nbformat.read(repo / "workflows" / "notebooks" / "explore_ensemble.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(repo)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # plume and scorecard
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "8 members = 2 checkpoints x 4 per checkpoint" in text and "scored: ['e2e', 'persistence']" in text


def test_skill_calibration_sets_amplitudes(e2e_run, tmp_path: Path) -> None:
    """skill.calibrate recomputes each checkpoint's RMSE; amplitudes = alpha x mean RMSE at the reference lead,
    and the forecast stage hands them to the engine."""
    from workflows.runner import StageContext, run_workflow
    from workflows.schema import load_workflow_text
    from workflows.stages import _amplitude, forecast_config

    wf, run = e2e_run
    text = wf.read_text().replace(str(run), str(tmp_path / "run"))
    text += "skill: {calibrate: true, lead_hours: [6, 12], reference_lead_hours: 12, samples: 4}\n"
    text = text.replace("  test:", "  validation: {start: 2008-01-01, end: 2008-01-09T18:00}\n  test:")
    w = load_workflow_text(text)
    run_workflow(w, run_dir=tmp_path / "run", stages=["prepare", "skill"])
    skill = json.loads((tmp_path / "run" / "skill.json").read_text())
    assert skill["calibrated"] and len(skill["checkpoints"]) == 2
    tables = list(skill["checkpoints"].values())
    for t in tables:
        assert t["lead_hours"] == [6, 12]
        assert all(0 < r6 <= r12 * 1.5 for r6, r12 in t["rmse"].values())
    for ch, amp in skill["amplitude"].items():
        expected = 0.35 * np.mean([t["rmse"][ch][1] for t in tables])
        assert amp == pytest.approx(expected, rel=1e-12)
    ctx = StageContext(
        workflow=w,
        run_dir=tmp_path / "run",
        stage="forecast",
        upstream={"skill": {"outputs": {"skill": "skill.json"}}},
    )
    cfg = forecast_config(w, tmp_path / "run", _amplitude(ctx))
    assert cfg["perturbation"]["amplitude"] == skill["amplitude"]


def _train_workflow(analysis: Path, train_extra: str = "", model_extra: str = "") -> str:
    """A workflow that trains seeds 3 and 4 (tiny) on the fixture's analyses and forecasts with them."""
    return f"""
name: tr
data:
  source: {analysis}
  train: {{start: 2008-01-01, end: 2008-01-10}}
  validation: {{start: 2008-01-01, end: 2008-01-10}}
  test: {{start: 2008-01-01, end: 2008-01-10}}
train:
  seeds: [3, 4]
  steps: 2
  batch_size: 2{train_extra}
  model: {{embed_dim: 8, num_layers: 1, skill_inits: 2, skill_lead_steps: 8, features: [doy]{model_extra}}}
forecast: {{checkpoints: train, members: 2, init_times: [2008-01-03], lead_steps: 2}}
"""


def test_train_stage_feeds_the_forecast(e2e_run, tmp_path: Path) -> None:
    """The train stage (two shards, one seed each) writes real SFNO checkpoints that `checkpoints: train`
    resolves to, with the skill.json the skill stage turns into amplitudes."""
    from workflows.runner import read_stage_record, run_stage, run_workflow
    from workflows.schema import load_workflow_text
    from workflows.stages import forecast_config

    _, run = e2e_run
    w = load_workflow_text(_train_workflow(Path(run).parent / "analysis.zarr"))
    out = tmp_path / "run"
    run_workflow(w, run_dir=out, stages=["prepare"])
    for i in (1, 0):
        assert run_stage(w, out, "train", shard=(i, 2)).status == "done"
    rec = read_stage_record(out, "train")
    assert rec["status"] == "done" and rec["outputs"] == {
        "seed-3": "checkpoints/seed-3",
        "seed-4": "checkpoints/seed-4",
    }
    for seed in (3, 4):
        meta = json.loads((out / "checkpoints" / f"seed-{seed}" / "metadata.json").read_text())
        assert meta["seed"] == seed or meta.get("train", {}).get("seed") == seed
    run_workflow(w, run_dir=out, stages=["skill"])
    skill = json.loads((out / "skill.json").read_text())
    tables = list(skill["checkpoints"].values())
    k = tables[0]["lead_hours"].index(48)
    assert skill["amplitude"]["z500"] == pytest.approx(0.35 * np.mean([t["rmse"]["z500"][k] for t in tables]))
    cfg = forecast_config(w, out)
    assert [Path(c).name for c in cfg["checkpoints"]] == ["seed-3", "seed-4"]


def test_train_processes_give_the_same_checkpoints(e2e_run, tmp_path: Path) -> None:
    """``train.processes: 2`` trains the seeds side by side (two spawned processes): bitwise the weights
    of one process; changing it afterwards reruns nothing (it is not part of the stage hash)."""
    import torch
    from safetensors.torch import load_file

    from workflows.runner import run_stage, run_workflow
    from workflows.schema import load_workflow_text

    _, run = e2e_run
    analysis = Path(run).parent / "analysis.zarr"

    def workflow(processes: int):
        return load_workflow_text(_train_workflow(analysis, f"\n  processes: {processes}", ", threads: 1"))

    for processes in (1, 2):
        run_workflow(workflow(processes), run_dir=tmp_path / f"p{processes}", stages=["prepare", "train"])
    for seed in (3, 4):
        a, b = (
            load_file(tmp_path / f"p{p}" / "checkpoints" / f"seed-{seed}" / "weights.safetensors")
            for p in (1, 2)
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_stage(workflow(1), tmp_path / "p2", "train").status == "skipped"


def test_scores_on_a_slurm_cluster_equal_the_local_cluster_ones(e2e_run, tmp_path: Path, fake_slurm) -> None:
    """The fixture scored on a LocalCluster (2 workers); the score stage again with ``score.dask.mode``
    slurm (a dask-jobqueue SLURMCluster whose 2 worker jobs start through a fake sbatch) gives the same
    scores; the worker jobs log to RUN_DIR/logs/dask and are cancelled, no process is left."""
    pytest.importorskip("dask_jobqueue")
    import shutil

    import wxens
    from workflows.runner import run_workflow
    from workflows.schema import load_workflow

    wf, run = e2e_run
    assert "on dask LocalCluster (2 x 1 threads)" in (run / "logs" / "score.log").read_text()
    reference = wxens.open_scores(run / "scores.zarr").load()
    copy = tmp_path / "slurm-run"
    shutil.copytree(run, copy)
    path = tmp_path / "slurm.yaml"
    slurm = "{mode: slurm, slurm: {jobs: 2, cores: 1, memory: 2GB, walltime: '00:10:00'}}"
    path.write_text(
        wf.read_text().replace("dask: {mode: local, n_workers: 2, threads_per_worker: 1}", f"dask: {slurm}")
    )
    [res] = run_workflow(load_workflow(path), run_dir=copy, stages=["score"], force=True)
    assert res.status == "done"
    assert (
        "on dask SLURMCluster (2 jobs x 1 cores, scheduler tcp://"
        in (copy / "logs" / "score.log").read_text()
    )
    scores = wxens.open_scores(copy / "scores.zarr").load()
    jobs = fake_slurm.jobs()
    assert len(jobs) == 2 and fake_slurm.cancelled() == {j["id"] for j in jobs}
    assert fake_slurm.wait_gone() == []
    logs = copy / "logs" / "dask"
    assert all("Registered to:" in (logs / f"wxens-score-{j['id']}.err").read_text() for j in jobs)
    assert reference["crps"].size > 10 and np.isfinite(reference["crps"]).any()
    assert set(scores.data_vars) == set(reference.data_vars)
    for var in reference.data_vars:
        np.testing.assert_array_equal(scores[var].values, reference[var].values, err_msg=var)
