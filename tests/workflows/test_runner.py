"""The stage runner with fake stages: order, skipping, reruns on config change, failures, shards,
permissions, provenance."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fakes import FAKE_REGISTRY, calls

from data_catalog.errors import UserError
from workflows.runner import StageError, read_stage_record, run_stage, run_workflow, stage_hashes
from workflows.schema import load_workflow, load_workflow_text

BASE = """\
name: t
forecast:
  members: 4
  init_times: {start: 2008-01-01, end: 2008-01-03, step: 1D}
  lead_steps: 4
"""


def wf(extra: str = ""):
    return load_workflow_text(BASE + extra)


def test_runs_enabled_stages_in_order_and_skips_when_done(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    assert [r.stage for r in res] == ["prepare", "skill", "forecast", "score", "report"]
    assert all(r.status == "done" for r in res)
    assert calls(run) == ["prepare 0/1", "skill 0/1", "forecast 0/1", "score 0/1", "report 0/1"]
    # second invocation: nothing runs again
    res2 = run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    assert [r.status for r in res2] == ["skipped"] * 5
    assert len(calls(run)) == 5
    rec = read_stage_record(run, "forecast")
    assert rec["status"] == "done" and rec["outputs"] == {"forecast-0": "forecast/part-0-of-1.json"}
    assert rec["info"]["members"] == 8 and rec["seconds"] >= 0
    assert (run / "config.yaml").is_file() and (run / "logs" / "forecast.log").is_file()


def test_config_change_reruns_only_downstream(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    # a forecast key: forecast, score and report rerun; prepare and skill do not
    changed = load_workflow_text(BASE.replace("members: 4", "members: 6"))
    run_workflow(changed, run_dir=run, registry=FAKE_REGISTRY)
    assert calls(run)[5:] == ["forecast 0/1", "score 0/1", "report 0/1"]
    # a key no stage depends on (device is ignored by forecast; resources by all): nothing reruns
    run_workflow(
        load_workflow_text(BASE.replace("members: 4", "members: 6") + "resources: {cpus: 8}\n"),
        run_dir=run,
        registry=FAKE_REGISTRY,
    )
    assert len(calls(run)) == 8
    # the report's title: only the report
    run_workflow(
        load_workflow_text(BASE.replace("members: 4", "members: 6") + "report: {title: X}\n"),
        run_dir=run,
        registry=FAKE_REGISTRY,
    )
    assert calls(run)[8:] == ["report 0/1"]


def test_hashes_chain_upstream() -> None:
    a = stage_hashes(wf(), FAKE_REGISTRY)
    b = stage_hashes(load_workflow_text(BASE + "data: {time_step: 12h}\n"), FAKE_REGISTRY)
    # data changes prepare; every later stage inherits the change even if it does not read data
    assert all(a[s] != b[s] for s in a)
    c = stage_hashes(load_workflow_text(BASE + "score: {dask: {mode: threads}}\n"), FAKE_REGISTRY)
    assert c == a


def test_missing_outputs_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    (run / "score" / "part-0-of-1.json").unlink()
    run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    assert calls(run)[5:] == ["score 0/1"]


def test_failure_is_recorded_and_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "FAIL_forecast").touch()
    with pytest.raises(StageError, match="stage forecast failed: RuntimeError: injected failure"):
        run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    rec = read_stage_record(run, "forecast")
    assert rec["status"] == "failed" and "injected" in rec["error"]
    assert "Traceback" in (run / "logs" / "forecast.log").read_text()
    assert read_stage_record(run, "score") is None
    (run / "FAIL_forecast").unlink()
    run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    assert calls(run) == [
        "prepare 0/1",
        "skill 0/1",
        "forecast 0/1",
        "forecast 0/1",
        "score 0/1",
        "report 0/1",
    ]


def test_stage_needs_finished_upstream(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="stage 'prepare' has not finished"):
        run_workflow(wf(), run_dir=tmp_path / "run", stages=["forecast"], registry=FAKE_REGISTRY)


def test_shards_complete_a_stage_only_when_all_done(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w = wf()
    run_workflow(w, run_dir=run, stages=["prepare", "skill"], registry=FAKE_REGISTRY)
    for i in (2, 0):
        r = run_stage(w, run, "forecast", shard=(i, 3), registry=FAKE_REGISTRY)
        assert r.status == "done"
    assert read_stage_record(run, "forecast")["status"] == "running"
    with pytest.raises(UserError, match="'forecast' has not finished"):
        run_stage(w, run, "score", registry=FAKE_REGISTRY)
    assert run_stage(w, run, "forecast", shard=(0, 3), registry=FAKE_REGISTRY).status == "skipped"
    run_stage(w, run, "forecast", shard=(1, 3), registry=FAKE_REGISTRY)
    rec = read_stage_record(run, "forecast")
    assert rec["status"] == "done" and rec["shards"] == 3
    assert set(rec["outputs"]) == {"forecast-0", "forecast-1", "forecast-2"}
    assert [c for c in calls(run) if c.startswith("forecast")] == [
        "forecast 2/3",
        "forecast 0/3",
        "forecast 1/3",
    ]
    assert (run / "logs" / "forecast-shard-1-of-3.log").is_file()
    run_stage(w, run, "score", registry=FAKE_REGISTRY)
    with pytest.raises(UserError, match="cannot be split"):
        run_stage(w, run, "score", shard=(0, 2), registry=FAKE_REGISTRY)


def test_optional_stages_and_unknown_stage(tmp_path: Path) -> None:
    w = load_workflow_text(
        BASE + "train: {seeds: [1, 2]}\nmodel_climate: {init_times: [2005-01-01]}\nreport: {enabled: false}\n"
    )
    assert w.enabled_stages() == ["prepare", "train", "skill", "model_climate", "forecast", "score"]
    run_workflow(w, run_dir=tmp_path / "run", registry=FAKE_REGISTRY)
    assert [c.split()[0] for c in calls(tmp_path / "run")] == w.enabled_stages()
    with pytest.raises(UserError, match="not enabled"):
        run_workflow(w, run_dir=tmp_path / "run", stages=["report"], registry=FAKE_REGISTRY)
    with pytest.raises(UserError, match="unknown stage 'forcast'"):
        run_workflow(w, run_dir=tmp_path / "run", stages=["forcast"], registry=FAKE_REGISTRY)
    with pytest.raises(UserError, match="exactly one --stage"):
        run_workflow(w, run_dir=tmp_path / "run", shard=(0, 2), registry=FAKE_REGISTRY)


def test_permissions_are_explicit_under_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run = tmp_path / "a" / "b" / "run"
        run_workflow(wf(), run_dir=run, registry=FAKE_REGISTRY)
    finally:
        os.umask(old)
    checked = 0
    for root, dirs, files in os.walk(tmp_path / "a"):
        for name in dirs:
            mode = stat.S_IMODE(os.stat(Path(root) / name).st_mode)
            assert mode == 0o755, (name, oct(mode))
            checked += 1
        for name in files:
            if name == "calls.log" or name.startswith("part-"):
                continue  # written by the fake stages themselves
            mode = stat.S_IMODE(os.stat(Path(root) / name).st_mode)
            assert not mode & stat.S_IWOTH, (name, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o755
    assert checked >= 6


def test_provenance(tmp_path: Path) -> None:
    import numpy
    import torch

    run = tmp_path / "run"
    run_workflow(load_workflow_text(BASE + "seed: 17\n"), run_dir=run, registry=FAKE_REGISTRY)
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["packages"]["numpy"] == numpy.__version__
    assert prov["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert prov["seeds"]["workflow"] == 17 and prov["seeds"]["perturbation"] == 17
    assert prov["code_version"].startswith("0.1.0")
    assert set(prov["stages"]) == {"prepare", "skill", "forecast", "score", "report"}
    assert prov["python"].count(".") == 2 and prov["host"]


def test_config_snapshot_roundtrips(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w = wf()
    run_workflow(w, run_dir=run, registry=FAKE_REGISTRY)
    assert load_workflow(run / "config.yaml") == w
