"""`wxens forecast` and `wxens verify` through the composed CLI."""

from __future__ import annotations

import json

import yaml

from tests.pipeline.conftest import base_config
from workflows.cli import main


def test_forecast_and_verify_commands(world, tmp_path, capsys):
    cfg = base_config(world, init_times=["2008-01-02T00"], lead_steps=1, inline={"enabled": False})
    path = tmp_path / "forecast.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    assert main(["forecast", str(path), "--run-dir", str(run_dir), "--shard", "0/1"]) == 0
    assert (run_dir / "COMPLETE").is_file()
    capsys.readouterr()
    assert main(["verify", str(run_dir)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == {"ok": 4, "corrupted": {}, "missing": 0, "total": 4}
    assert main(["forecast", str(path), "--run-dir", str(run_dir), "--shard", "2/2"]) == 2
    assert "error: shard 2/2" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
