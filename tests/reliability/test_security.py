"""Security: unsafe pickles, unsafe YAML, shell injection through batch submission, catalog paths
escaping their roots, world-writable outputs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from rel_helpers import REPO, forecast_config, record_result, write_yaml

from data_catalog.errors import UserError


class _Evil:
    """Unpickling this runs ``os.system(cmd)``: what a malicious checkpoint would do."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _evil_checkpoint(folder: Path, marker: Path, name: str = "weights.pt") -> Path:
    """A checkpoint directory whose foreign weights file is a malicious pickle; its metadata carries
    the file's true sha256, so only the unpickling itself can stop it."""
    from models.checkpoint import sha256_file

    folder.mkdir(parents=True)
    weights = folder / name
    torch.save({"layer.weight": _Evil(f"touch {marker}")}, weights)
    meta = {
        "architecture": {
            "in_chans": 4,
            "out_chans": 4,
            "embed_dim": 8,
            "num_layers": 1,
            "lmax": 16,
            "mmax": 16,
        },
        "channels": ["z500", "u500", "v500", "vo500"],
        "grid": {"latitude": [0.0], "longitude": [0.0]},
        "normalisation": {"mean": [0.0] * 4, "std": [1.0] * 4, "tendency_std": [1.0] * 4},
        "weights_sha256": sha256_file(weights),
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def test_pickle_is_really_malicious(tmp_path):
    """Control: full unpickling of the same file does execute the payload (so the refusals below
    are meaningful)."""
    marker = tmp_path / "pwned-control"
    ck = _evil_checkpoint(tmp_path / "ck", marker)
    torch.load(ck / "weights.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth", "weights.tar"])
def test_malicious_pickle_refused_by_load_checkpoint(tmp_path, name):
    from models.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    ck = _evil_checkpoint(tmp_path / "ck", marker, name)
    with pytest.raises(
        UserError, match=r"unsafe or unreadable checkpoint .*refused by torch.load\(weights_only=True\)"
    ):
        load_checkpoint(ck)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(ck / name)  # the weights file given directly
    assert not marker.exists()


def test_malicious_pickle_refused_through_the_cli(toy_world, tmp_path, capsys):
    from workflows.cli import main

    marker = tmp_path / "pwned"
    ck = _evil_checkpoint(tmp_path / "ck", marker)
    cfg = forecast_config(toy_world, checkpoints=[str(ck)], init_times=["2008-01-02T00"], lead_steps=1)
    cfg.pop("model_loader")
    capsys.readouterr()
    code = main(["forecast", str(write_yaml(tmp_path / "f.yaml", cfg)), "--run-dir", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert code == 2
    err = stderr.splitlines()
    assert len(err) == 1 and "refused by torch.load(weights_only=True)" in err[0], stderr
    assert err[0].startswith("error: ")
    assert not marker.exists() and not (tmp_path / "run" / "COMPLETE").exists()
    record_result(
        "security_pickle",
        [{"case": "malicious .pt via wxens forecast", "error": err[0].replace(str(tmp_path), "<tmp>")}],
    )


def test_malicious_training_state_refused(tmp_path, capsys):
    """A planted ``train_state.pt`` (resumed by ``wxens train``) is never unpickled."""
    from workflows.cli import main

    marker = tmp_path / "pwned"
    out = tmp_path / "ck"
    out.mkdir()
    torch.save({"config": _Evil(f"touch {marker}")}, out / "train_state.pt")
    from pipeline.testing import synthetic_analysis

    ds = synthetic_analysis(periods=8, start="2000-01-01T00")
    ds.to_zarr(tmp_path / "d.zarr", mode="w", zarr_format=3)
    code = main(["train", "--dataset", str(tmp_path / "d.zarr"), "--out", str(out), "--seed", "0", "--steps", "2",
                 "--features", "", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------- YAML
PY_TAG = "!!python/object/apply:os.system ['touch {marker}']"


def test_yaml_python_tags_refused_everywhere(tmp_path, capsys):
    """Workflow, forecast config and catalog files are safe-loaded: a python tag is an error and
    runs nothing."""
    from data_catalog.catalog import parse_catalog
    from pipeline.config import load_config
    from workflows.schema import load_workflow_text

    marker = tmp_path / "pwned"
    tag = PY_TAG.format(marker=marker)
    with pytest.raises(UserError, match="not valid YAML"):
        load_workflow_text(f"name: {tag}\n")
    cfg = tmp_path / "f.yaml"
    cfg.write_text(f"lead_steps: {tag}\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(cfg)
    with pytest.raises(UserError, match="not valid YAML"):
        parse_catalog(f"version: 1\nentries:\n  x: {{location: {tag}}}\n")
    for text in (f"!!python/object/new:os.system ['touch {marker}']\n", "x: !!python/name:os.system\n"):
        with pytest.raises(UserError):
            load_workflow_text(text)
    assert not marker.exists()


# --------------------------------------------------------------------------------------- SLURM/shell
NASTY = "x$(touch PWNED1);`touch PWNED2`'\"; touch PWNED3 #"


def _fake_bin(folder: Path, log: Path) -> Path:
    """A fake ``sbatch`` that logs its argv and runs the job script with the wxens command replaced
    by ``fakewxens``, a program that records the argv it receives (as the job would run it)."""
    folder.mkdir()
    (folder / "fakewxens").write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, sys
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"job_argv": sys.argv[1:]}}) + "\\n")
            """
        )
    )
    (folder / "sbatch").write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, os, re, subprocess, sys, itertools
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"sbatch_argv": sys.argv[1:]}}) + "\\n")
            script = open(sys.argv[-1]).read()
            # run the job as SLURM would, with the wxens executable swapped for the recorder
            script = re.sub(r"^exec \\S+", "exec " + {str(folder / "fakewxens")!r}, script, flags=re.M)
            env = dict(os.environ, SLURM_ARRAY_TASK_ID="0")
            subprocess.run(["bash", "-c", script], check=True, env=env)
            n = len(open({str(log)!r}).readlines())
            print(f"{{1000 + n}}")
            """
        )
    )
    for name in ("sbatch", "fakewxens"):
        os.chmod(folder / name, 0o755)
    return folder


def test_submit_never_lets_config_values_reach_a_shell(toy_world, tmp_path):
    """Job name, workflow path and run directory full of ``$(...)``, backticks, ``;`` and quotes: the
    fake sbatch receives them as single arguments, the job script passes them unchanged to wxens,
    and nothing is executed."""
    base = tmp_path / NASTY
    base.mkdir()
    wf = base / f"wf {NASTY}.yaml"
    doc = {
        "name": NASTY,
        "data": {"source": toy_world["analysis"]},
        "forecast": {
            "checkpoints": [toy_world["checkpoints"][0]],
            "members": 2,
            "init_times": ["2008-01-02"],
            "lead_steps": 1,
        },
        "resources": {"shards": 2},
    }
    wf.write_text(yaml.safe_dump(doc))
    run_dir = base / f"run {NASTY}"
    log = tmp_path / "calls.jsonl"
    fake = _fake_bin(tmp_path / "bin", log)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflows.cli",
            "submit",
            str(wf),
            "--run-dir",
            str(run_dir),
            "--stage",
            "forecast",
            "--stage",
            "prepare",
        ],
        cwd=base,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    sb = [c["sbatch_argv"] for c in calls if "sbatch_argv" in c]
    jobs = [c["job_argv"] for c in calls if "job_argv" in c]
    assert len(sb) == 2 and len(jobs) == 2
    assert f"--job-name={NASTY}-prepare" in sb[0] and f"--job-name={NASTY}-forecast" in sb[1]
    assert sb[1][-2].startswith("--dependency=afterok:")
    for job in jobs:
        assert job[:4] == ["run", str(wf), "--run-dir", str(run_dir)]
    assert jobs[1][4:] == ["--stage", "forecast", "--shard", "0/2"]
    for root in (base, tmp_path, REPO, Path.cwd()):
        assert not [p for p in root.rglob("PWNED*")], "a config value reached a shell"
    record_result(
        "security_shell",
        [{"case": "job name, workflow path, run dir with $(...), backticks, ; and quotes", "executed": 0}],
    )


# ----------------------------------------------------------------------------------- catalog roots
def test_catalog_paths_cannot_escape_their_root(tmp_path):
    from data_catalog.catalog import parse_catalog

    root = tmp_path / "cat"
    (root / "data").mkdir(parents=True)
    ok = parse_catalog("version: 1\nentries:\n  a: {location: data/../data/x.zarr}\n", root=str(root))
    assert ok["a"].resolved_location() == str(root / "data" / "x.zarr")
    for loc in (
        "../x.zarr",
        "data/../../x.zarr",
        "./../../../../etc/passwd",
        "file://../x.zarr",
        "data/./../../x",
    ):
        with pytest.raises(UserError, match="escapes the catalog folder"):
            parse_catalog(f"version: 1\nentries:\n  a: {{location: '{loc}'}}\n", root=str(root))
    outside = tmp_path / "elsewhere.zarr"  # explicit absolute paths are the user's choice
    got = parse_catalog(f"version: 1\nentries:\n  a: {{location: '{outside}'}}\n", root=str(root))
    assert got["a"].resolved_location() == str(outside)


# ----------------------------------------------------------------------------------------- permissions
def _world_writable(root: Path) -> list[str]:
    bad = []
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.stat().st_mode & stat.S_IWOTH:
            bad.append(f"{p.relative_to(root.parent)} {oct(p.stat().st_mode & 0o777)}")
    return bad


def test_outputs_not_world_writable_even_with_umask_000(reference, tmp_path, capsys):
    """``wxens forecast`` and ``wxens submit --dry-run`` under ``umask 000``: no directory or file
    of the run directory (store, manifest, locks, inline scores, job scripts, logs) is world-writable."""
    from workflows.cli import main

    run_dir = tmp_path / "run"
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        yaml.safe_dump(
            {"name": "perm", "forecast": {"members": 2, "init_times": ["2008-01-02"], "lead_steps": 1}}
        )
    )
    old = os.umask(0)
    try:
        assert main(["forecast", str(reference["config_path"]), "--run-dir", str(run_dir)]) == 0
        os.umask(0)
        assert main(["submit", str(wf), "--run-dir", str(tmp_path / "wfrun"), "--dry-run"]) == 0
    finally:
        os.umask(old)
    assert (run_dir / "COMPLETE").is_file()
    bad = _world_writable(run_dir) + _world_writable(tmp_path / "wfrun")
    assert (tmp_path / "wfrun" / "jobs").is_dir()
    record_result("permissions", [{"case": "umask 000", "world_writable": len(bad), "examples": bad[:5]}])
    assert bad == []
