"""Bad input: one clear line, a non-zero exit, no traceback, nothing marked complete.

Every case runs the real command line (``workflows.cli.main``, the ``wxens`` entry point, in-process;
a few through a subprocess) and asserts: exit code != 0, stderr is exactly one line starting with
``error:``, that line names the problem (an expected fragment), and the run directory holds no
``COMPLETE`` marker, no manifest entry and no stage record marked done. With
``$WXENS_RELIABILITY_DOC`` set the table of docs/reliability.md is refreshed from these cases.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from rel_helpers import forecast_config, record_result, write_yaml, wxens

WORKFLOW = """\
name: bad
data:
  source: {analysis}
forecast:
  checkpoints: [{ckpt}]
  model_loader: pipeline.testing:load_toy_checkpoint
  members: 4
  init_times: [2008-01-02T00]
  lead_steps: 2
  batch_size: 4
score: {{enabled: false}}
"""


@dataclass
class Ctx:
    """Inputs of the cases: good and bad stores, checkpoints and configs in one folder."""

    root: Path
    world: dict[str, Any]

    @property
    def run(self) -> str:
        return str(self.root / "run")

    def forecast(self, name: str, **over: Any) -> str:
        base: dict[str, Any] = {"init_times": ["2008-01-02T00"], "lead_steps": 2}
        cfg = forecast_config(self.world, **{**base, **over})
        return str(write_yaml(self.root / f"{name}.yaml", cfg))

    def forecast_raw(self, name: str, text: str) -> str:
        p = self.root / f"{name}.yaml"
        p.write_text(text)
        return str(p)

    def workflow(self, name: str, edit: Callable[[dict], None] | None = None, text: str | None = None) -> str:
        p = self.root / f"wf-{name}.yaml"
        if text is None:
            doc = yaml.safe_load(
                WORKFLOW.format(analysis=self.world["analysis"], ckpt=self.world["checkpoints"][0])
            )
            if edit is not None:
                edit(doc)
            text = yaml.safe_dump(doc, sort_keys=False)
        p.write_text(text)
        return str(p)


def _analysis_variant(src: str, dst: Path, fn: Callable[[xr.Dataset], xr.Dataset]) -> str:
    ds = fn(xr.open_zarr(src).load())
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(dst, mode="w", zarr_format=3)
    return str(dst)


def _sfno_checkpoint(path: Path, nlat: int = 32, nlon: int = 64) -> Path:
    import torch

    from models.checkpoint import save_checkpoint
    from models.wrapper import build_model
    from pipeline.testing import CHANNELS, MEANS, STDS, grid

    lat, lon = grid(nlat, nlon)
    stats = {
        "mean": [MEANS[c] for c in CHANNELS],
        "std": [STDS[c] for c in CHANNELS],
        "tendency_std": [0.1 * STDS[c] for c in CHANNELS],
    }
    lmax = nlat // 2
    arch = {"in_chans": 4, "out_chans": 4, "embed_dim": 8, "num_layers": 1, "lmax": lmax, "mmax": lmax}
    skill = {"lead_hours": [48], "rmse": {c: [0.5 * STDS[c]] for c in CHANNELS}}
    m = build_model(arch, list(CHANNELS), lat, lon, stats, (), generator=torch.Generator().manual_seed(0))
    return save_checkpoint(m, path, skill=skill)


@pytest.fixture(scope="module")
def ctx(toy_world, tmp_path_factory) -> Ctx:
    root = tmp_path_factory.mktemp("bad")
    c = Ctx(root, toy_world)
    ana = toy_world["analysis"]
    c.world = dict(toy_world)
    c.nan = _analysis_variant(ana, root / "nan.zarr", lambda d: _set_nan(d))
    c.novo = _analysis_variant(ana, root / "novo.zarr", lambda d: d.drop_vars("vo500"))
    c.coarse = _analysis_variant(
        ana, root / "coarse.zarr", lambda d: d.isel(latitude=slice(0, None, 2), longitude=slice(0, None, 2))
    )
    c.regional = _analysis_variant(ana, root / "regional.zarr", lambda d: d.isel(latitude=slice(0, 16)))
    c.short = _analysis_variant(ana, root / "short.zarr", lambda d: d.isel(time=slice(0, 6)))
    (root / "notzarr").mkdir()
    (root / "notzarr" / "data.csv").write_text("a,b\n1,2\n")
    (root / "afile.zarr").write_text("not a store")
    import zarr

    zarr.open_group(str(root / "empty.zarr"), mode="w", zarr_format=3)
    good = _sfno_checkpoint(root / "sfno")
    c.sfno = str(good)
    c.sfno_coarse = str(_sfno_checkpoint(root / "sfno16", 16, 32))
    for name, damage in (
        ("trunc", "truncate"),
        ("altered", "flip"),
        ("nometa", "nometa"),
        ("badjson", "json"),
    ):
        d = root / f"sfno-{name}"
        shutil.copytree(good, d)
        w = d / "weights.safetensors"
        if damage == "truncate":
            w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        elif damage == "flip":
            raw = bytearray(w.read_bytes())
            raw[-5] ^= 0x40
            w.write_bytes(bytes(raw))
        elif damage == "nometa":
            (d / "metadata.json").unlink()
        else:
            (d / "metadata.json").write_text("{not json")
        setattr(c, f"sfno_{name}", str(d))
    c.cat_noloc = str(
        write_yaml(root / "cat-noloc.yaml", {"version": 1, "entries": {"x": {"description": "no location"}}})
    )
    c.cat_escape = str(
        write_yaml(root / "cat-escape.yaml", {"version": 1, "entries": {"x": {"location": "../../etc"}}})
    )
    c.cat_badver = str(write_yaml(root / "cat-ver.yaml", {"version": 7, "entries": {}}))
    return c


def _set_nan(d: xr.Dataset) -> xr.Dataset:
    d["u500"].loc[{"time": "2008-01-02T00"}] = np.nan
    return d


def _sfno_cfg(ctx: Ctx, name: str, ckpt: str, **over: Any) -> str:
    base: dict[str, Any] = {"init_times": ["2008-01-02T00"], "lead_steps": 1, "checkpoints": [ckpt]}
    cfg = forecast_config(ctx.world, **{**base, **over})
    cfg.pop("model_loader")
    return str(write_yaml(ctx.root / f"{name}.yaml", cfg))


def _wf_set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return edit


def _fc(ctx: Ctx, cfg: str, *extra: str) -> list[str]:
    return ["forecast", cfg, "--run-dir", ctx.run, *extra]


#: (id, argv(ctx), expected fragment of the error line, environment)
CASES: list[tuple[str, Callable[[Ctx], list[str]], str, dict[str, str]]] = [
    # ---------------------------------------------------------------- forecast config (pipeline)
    (
        "forecast: malformed YAML",
        lambda c: _fc(c, c.forecast_raw("m", "init_times: [2008-01-02\nlead_steps: 2\n")),
        "not valid YAML (line",
        {},
    ),
    (
        "forecast: YAML python tag",
        lambda c: _fc(
            c, c.forecast_raw("tag", "lead_steps: !!python/object/apply:os.system ['touch pwned']\n")
        ),
        "not valid YAML",
        {},
    ),
    (
        "forecast: mistyped key",
        lambda c: _fc(c, c.forecast("typo", lead_step=2)),
        "lead_step: unknown key; did you mean 'lead_steps'?",
        {},
    ),
    (
        "forecast: mistyped nested key",
        lambda c: _fc(c, c.forecast("typo2", output={"variabels": ["z500"]})),
        "output.variabels: unknown key; did you mean 'variables'?",
        {},
    ),
    ("forecast: unknown key", lambda c: _fc(c, c.forecast("unk", colour="red")), "colour: unknown key", {}),
    ("forecast: wrong type", lambda c: _fc(c, c.forecast("type", lead_steps="three")), "lead_steps", {}),
    (
        "forecast: negative lead_steps",
        lambda c: _fc(c, c.forecast("neg", lead_steps=-1)),
        "lead_steps: Input should be greater than or equal to 0",
        {},
    ),
    (
        "forecast: zero pairs",
        lambda c: _fc(c, c.forecast("zero", perturbation={"method": "bred", "n_pairs": 0})),
        "perturbation.n_pairs",
        {},
    ),
    (
        "forecast: init time outside the data",
        lambda c: _fc(c, c.forecast("late", init_times=["2012-01-01T00"])),
        "the analysis has no data at 2011-12-31",
        {},
    ),
    (
        "forecast: breeding needs analyses before the data",
        lambda c: _fc(c, c.forecast("early", init_times=["2008-01-01T00"])),
        "no data at 2007-12-31",
        {},
    ),
    (
        "forecast: duplicate init times",
        lambda c: _fc(c, c.forecast("dup", init_times=["2008-01-02T00", "2008-01-02T00"])),
        "duplicate init times",
        {},
    ),
    (
        "forecast: output variable not a channel",
        lambda c: _fc(c, c.forecast("var", output={"variables": ["t850"]})),
        "output variable(s) t850 are not model channels",
        {},
    ),
    (
        "forecast: analysis lacks a model channel",
        lambda c: _fc(c, c.forecast("novo", analysis=c.novo)),
        "vo500",
        {},
    ),
    (
        "forecast: analysis grid differs from the model",
        lambda c: _fc(c, c.forecast("grid", analysis=c.coarse)),
        "latitudes differ from the model grid",
        {},
    ),
    (
        "forecast: non-global analysis, global model",
        lambda c: _fc(c, c.forecast("regional", analysis=c.regional)),
        "latitudes differ from the model grid",
        {},
    ),
    (
        "forecast: NaN in the initial condition",
        lambda c: _fc(c, c.forecast("nan", analysis=c.nan)),
        "NaN/infinite value(s) in the initial conditions",
        {},
    ),
    (
        "forecast: analysis is not a zarr store",
        lambda c: _fc(c, c.forecast("notzarr", analysis=str(c.root / "notzarr"))),
        "not a zarr store",
        {},
    ),
    (
        "forecast: analysis is a file",
        lambda c: _fc(c, c.forecast("afile", analysis=str(c.root / "afile.zarr"))),
        "not a zarr store",
        {},
    ),
    (
        "forecast: analysis store is empty",
        lambda c: _fc(c, c.forecast("empty", analysis=str(c.root / "empty.zarr"))),
        "is empty",
        {},
    ),
    (
        "forecast: analysis does not exist",
        lambda c: _fc(c, c.forecast("nostore", analysis=str(c.root / "nowhere.zarr"))),
        "nowhere.zarr",
        {},
    ),
    (
        "forecast: model loader not found",
        lambda c: _fc(c, c.forecast("loader", model_loader="nosuch.module:load")),
        "model loader 'nosuch.module:load' not found",
        {},
    ),
    (
        "forecast: checkpoint missing",
        lambda c: _fc(c, _sfno_cfg(c, "ck-missing", str(c.root / "no-ckpt"))),
        "checkpoint directory not found",
        {},
    ),
    (
        "forecast: checkpoint truncated",
        lambda c: _fc(c, _sfno_cfg(c, "ck-trunc", c.sfno_trunc)),
        "sha256 of weights.safetensors does not match metadata",
        {},
    ),
    (
        "forecast: checkpoint hash mismatch",
        lambda c: _fc(c, _sfno_cfg(c, "ck-alt", c.sfno_altered)),
        "sha256 of weights.safetensors does not match metadata",
        {},
    ),
    (
        "forecast: checkpoint without metadata",
        lambda c: _fc(c, _sfno_cfg(c, "ck-nometa", c.sfno_nometa)),
        "metadata missing (metadata.json)",
        {},
    ),
    (
        "forecast: checkpoint metadata not JSON",
        lambda c: _fc(c, _sfno_cfg(c, "ck-json", c.sfno_badjson)),
        "metadata.json is not valid JSON",
        {},
    ),
    (
        "forecast: checkpoint grid differs from the data",
        lambda c: _fc(c, _sfno_cfg(c, "ck-grid", c.sfno_coarse)),
        "latitudes differ from the model grid",
        {},
    ),
    (
        "forecast: config file missing",
        lambda c: _fc(c, str(c.root / "nope.yaml")),
        "config file not found",
        {},
    ),
    (
        "forecast: shard 3/2",
        lambda c: _fc(c, c.forecast("ok"), "--shard", "3/2"),
        "shard 3/2 is out of range",
        {},
    ),
    (
        "forecast: shard a/b",
        lambda c: _fc(c, c.forecast("ok"), "--shard", "a/b"),
        "--shard must look like i/N, got 'a/b'",
        {},
    ),
    ("forecast: shard 0/0", lambda c: _fc(c, c.forecast("ok"), "--shard", "0/0"), "out of range", {}),
    (
        "forecast: unknown catalog entry",
        lambda c: _fc(c, c.forecast("cat", analysis="no-such-entry")),
        "no-such-entry",
        {},
    ),
    # ---------------------------------------------------------------------- workflow (wxens run)
    (
        "run: malformed YAML",
        lambda c: ["run", c.workflow("m", text="forecast: {members: [4\n"), "--run-dir", c.run],
        "not valid YAML (line",
        {},
    ),
    (
        "run: YAML python tag",
        lambda c: [
            "run",
            c.workflow("tag", text="name: !!python/object/apply:os.system ['touch pwned']\n"),
            "--run-dir",
            c.run,
        ],
        "not valid YAML",
        {},
    ),
    (
        "run: empty workflow",
        lambda c: ["run", c.workflow("empty", text=""), "--run-dir", c.run],
        "the workflow is empty",
        {},
    ),
    (
        "run: workflow is a list",
        lambda c: ["run", c.workflow("list", text="- a\n- b\n"), "--run-dir", c.run],
        "must be a mapping",
        {},
    ),
    (
        "run: mistyped key",
        lambda c: ["run", c.workflow("typo", _wf_set("forecast.memebrs", 4)), "--run-dir", c.run],
        "forecast.memebrs: unknown key; did you mean 'members'?",
        {},
    ),
    (
        "run: unknown top-level key",
        lambda c: ["run", c.workflow("unk", _wf_set("colour", "red")), "--run-dir", c.run],
        "colour: unknown key",
        {},
    ),
    (
        "run: wrong type",
        lambda c: ["run", c.workflow("type", _wf_set("forecast.members", "many")), "--run-dir", c.run],
        "forecast.members",
        {},
    ),
    (
        "run: zero members",
        lambda c: ["run", c.workflow("zero", _wf_set("forecast.members", 0)), "--run-dir", c.run],
        "forecast.members",
        {},
    ),
    (
        "run: negative members",
        lambda c: ["run", c.workflow("neg", _wf_set("forecast.members", -4)), "--run-dir", c.run],
        "forecast.members",
        {},
    ),
    (
        "run: odd members for +/- pairs",
        lambda c: ["run", c.workflow("odd", _wf_set("forecast.members", 5)), "--run-dir", c.run],
        "members must be even",
        {},
    ),
    (
        "run: impossible date",
        lambda c: [
            "run",
            c.workflow("date", _wf_set("forecast.init_times", ["2008-13-45"])),
            "--run-dir",
            c.run,
        ],
        "2008-13-45",
        {},
    ),
    (
        "run: init time outside the data",
        lambda c: [
            "run",
            c.workflow("late", _wf_set("forecast.init_times", ["2012-01-01"])),
            "--run-dir",
            c.run,
        ],
        "is outside the data",
        {},
    ),
    (
        "run: unknown stage",
        lambda c: ["run", c.workflow("ok"), "--run-dir", c.run, "--stage", "bake"],
        "bake",
        {},
    ),
    (
        "run: bad shard",
        lambda c: ["run", c.workflow("ok"), "--run-dir", c.run, "--stage", "forecast", "--shard", "3/2"],
        "3/2",
        {},
    ),
    (
        "run: unsafe SLURM partition",
        lambda c: [
            "submit",
            c.workflow("part", _wf_set("resources.partition", "gpu;rm -rf /")),
            "--run-dir",
            c.run,
            "--dry-run",
        ],
        "only letters, digits",
        {},
    ),
    # ------------------------------------------------------------------------------------ scoring
    (
        "score: truth lacks valid times",
        lambda c: [
            "score",
            str(c.world["reference_store"]),
            "--truth",
            c.short,
            "--out",
            str(c.root / "s.nc"),
        ],
        "truth lacks",
        {},
    ),
    (
        "score: forecast store missing",
        lambda c: [
            "score",
            str(c.root / "nowhere.zarr"),
            "--truth",
            c.world["analysis"],
            "--out",
            str(c.root / "s.nc"),
        ],
        "forecast store not found",
        {},
    ),
    (
        "score: bad output suffix",
        lambda c: [
            "score",
            str(c.world["reference_store"]),
            "--truth",
            c.world["analysis"],
            "--out",
            str(c.root / "s.txt"),
        ],
        "--out must end in .nc or .zarr",
        {},
    ),
    (
        "score: truth variable missing",
        lambda c: [
            "score",
            str(c.world["reference_store"]),
            "--truth",
            c.novo,
            "--out",
            str(c.root / "s.nc"),
            "--variables",
            "vo500",
        ],
        "unknown variable 'vo500'",
        {},
    ),
    # ------------------------------------------------------------------- verify, catalog, train
    ("verify: not a run directory", lambda c: ["verify", str(c.root)], "is not a forecast run directory", {}),
    (
        "catalog: entry without location",
        lambda c: ["catalog", "list", "--catalog", c.cat_noloc],
        "'location' (a path, URL or builtin:NAME) is required",
        {},
    ),
    (
        "catalog: location escapes its folder",
        lambda c: ["catalog", "list", "--catalog", c.cat_escape],
        "escapes the catalog folder",
        {},
    ),
    (
        "catalog: unsupported version",
        lambda c: ["catalog", "list", "--catalog", c.cat_badver],
        "unsupported version 7",
        {},
    ),
    (
        "catalog: bad entry via $WXENS_CATALOG",
        lambda c: ["catalog", "list"],
        "'location' (a path, URL or builtin:NAME) is required",
        {"WXENS_CATALOG": "@cat_noloc"},
    ),
    (
        "catalog: level that does not exist",
        lambda c: ["catalog", "check", c.world["analysis"], "--variable", "z850"],
        "z850",
        {},
    ),
    ("catalog: non-global grid", lambda c: ["catalog", "check", c.regional], "grid is not global", {}),
    ("catalog: NaN in the data", lambda c: ["catalog", "check", c.nan], "NaN/infinite value(s)", {}),
    (
        "train: bad seed list",
        lambda c: ["train", "--out", str(c.root / "t"), "--seeds", "5-2", "--dataset", c.world["analysis"]],
        "bad seed list '5-2'",
        {},
    ),
    (
        "train: dataset missing",
        lambda c: [
            "train",
            "--out",
            str(c.root / "t"),
            "--seed",
            "0",
            "--dataset",
            str(c.root / "nowhere.zarr"),
        ],
        "nowhere.zarr",
        {},
    ),
]


def _one_line(err: str) -> str:
    # `wxens run` reports stage progress ("[1/3] prepare ...") on stderr before a stage fails
    lines = [ln for ln in err.splitlines() if not re.match(r"^\[\d+/\d+\] \w+ \.\.\.$", ln)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _nothing_complete(run: Path) -> None:
    if not run.exists():
        return
    assert not (run / "COMPLETE").exists()
    assert not list((run / "manifest").glob("*.json")) if (run / "manifest").is_dir() else True
    for rec in run.rglob("stages/*.json"):
        assert json.loads(rec.read_text()).get("status") != "done", rec


_ROWS: dict[str, dict[str, str]] = {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(ctx, reference, case, capsys, monkeypatch):
    name, argv, fragment, env = case
    from workflows.cli import main

    ctx.world["reference_store"] = reference["run_dir"] / "forecast.zarr"
    run = Path(ctx.run)
    shutil.rmtree(run, ignore_errors=True)
    for k, v in env.items():
        monkeypatch.setenv(k, getattr(ctx, v[1:]) if v.startswith("@") else v)
    args = argv(ctx)
    capsys.readouterr()
    code = main(args)
    _, err = capsys.readouterr()
    assert code != 0
    line = _one_line(err)
    assert fragment in line, line
    _nothing_complete(run)
    assert not (Path.cwd() / "pwned").exists()
    _ROWS[name] = {"case": name, "exit": str(code), "error": _redact(line, ctx)}
    if len(_ROWS) == len(CASES):
        record_result("bad_inputs", [_ROWS[c[0]] for c in CASES])


def _redact(line: str, ctx: Ctx) -> str:
    """The error line with temporary paths replaced by ``<tmp>``."""
    for p in sorted({str(ctx.root), str(Path(ctx.world["root"]))}, key=len, reverse=True):
        line = line.replace(p, "<tmp>")
    return line


def test_bad_input_through_the_console_script(ctx, tmp_path):
    """The same contract through a ``wxens`` process (the subprocess
    sees real stderr: no warnings, no log lines, no traceback)."""
    for argv in (["forecast", ctx.forecast("nan", analysis=ctx.nan), "--run-dir", str(tmp_path / "r")],):
        res = wxens(argv)
        assert res.returncode == 2, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if not _is_library_warning(ln)]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        _nothing_complete(tmp_path / "r")


def _is_library_warning(line: str) -> bool:
    """zarr's notice that consolidated metadata is an extension (a warning of zarr, not of wxens)."""
    return "ZarrUserWarning" in line or line.strip() == "warnings.warn("


def test_latitude_reversed_is_normalised(toy_world, tmp_path):
    """An analysis stored south to north is not an error: it is normalised on reading and the
    forecast is bitwise the one from the north-to-south store."""
    from rel_helpers import digest

    from pipeline import run_forecast

    flipped = _analysis_variant(
        toy_world["analysis"], tmp_path / "ascending.zarr", lambda d: d.isel(latitude=slice(None, None, -1))
    )
    assert xr.open_zarr(flipped)["latitude"].values[0] < 0
    small = {"checkpoints": toy_world["checkpoints"][:1], "init_times": ["2008-01-02T00"], "lead_steps": 2}
    a = run_forecast(forecast_config(toy_world, **small), tmp_path / "desc")
    b = run_forecast(forecast_config({**toy_world, "analysis": flipped}, **small), tmp_path / "asc")
    assert a["complete"] and b["complete"]
    da, db = digest(tmp_path / "desc"), digest(tmp_path / "asc")
    da.pop("attrs"), db.pop("attrs")  # the config names a different analysis path
    assert da == db and len(da) > 10
    lat = xr.open_zarr(tmp_path / "asc" / "forecast.zarr")["latitude"].values
    assert lat[0] > 0 and np.all(np.diff(lat) < 0)
