"""The real stages, each a thin call into one layer through a small adapter function.

=============== ===================================================== ==============================
stage           does                                                  writes (relative to run_dir)
=============== ===================================================== ==============================
prepare         opens the analyses (builds the embedded world once),  ``data.json``
                checks variables and that the test years cover the
                initial times plus the forecast length
train           trains one checkpoint per seed (optional)             ``checkpoints/seed-<k>/``
skill           per-checkpoint RMSE table (read or recalibrated);     ``skill.json``
                sets the perturbation amplitudes
model_climate   unperturbed reforecasts over past years (optional)    ``model_climate/``
forecast        the ensemble (pipeline.run_forecast, resumable)       ``forecast/`` (store + manifest)
score           scores vs truth and baselines on a dask cluster       ``scores.zarr``, ``scores.csv``
report          the HTML report                                       ``report/report.html``
=============== ===================================================== ==============================

The adapters (functions named ``_call_*``) are the only places that know the other layers' signatures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_catalog.errors import UserError
from workflows.runner import StageContext, StageSpec, locked, make_dir, write_json, write_text_atomic
from workflows.schema import Workflow, to_datetime64, to_timedelta64

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# adapters to the other layers
# --------------------------------------------------------------------------------------------------
def _call_open_reanalysis(source: str, variables: Sequence[str] | None = None, time: Any = None) -> Any:
    from data_catalog import open_reanalysis

    return open_reanalysis(source, variables=variables, time=time)


def _call_pretrained_dir(name: str) -> Path:
    import models

    return Path(models.pretrained_dir(name))


def _call_train(workflow: Workflow, seeds: Sequence[int], out_dir: Path) -> list[Path]:
    """Train one checkpoint per seed into ``out_dir/seed-<S>`` (:func:`models.train.train_many`: the
    training data loaded once, or ``train.processes`` seeds side by side; a partial training state found
    there is resumed)."""
    import dataclasses

    from models import train as mtrain

    t = workflow.train
    assert t is not None
    d = workflow.data
    fields = {f.name for f in dataclasses.fields(mtrain.TrainConfig)}
    unknown = sorted(set(t.model) - fields)
    if unknown:
        raise UserError(f"train.model: unknown option(s) {', '.join(unknown)} (see models.train.TrainConfig)")
    cfg = mtrain.TrainConfig(
        dataset=d.source,
        seed=seeds[0],
        steps=t.steps,
        batch_size=t.batch_size,
        lr=t.learning_rate,
        rollout_steps=t.rollout_steps,
        train_years=(int(d.train.start[:4]), int(d.train.end[:4])),
        valid_years=(int(d.validation.start[:4]), int(d.validation.end[:4])),
        channels=tuple(d.variables) if d.variables else None,
        **t.model,
    )
    logger.info("training seeds %s -> %s (%d process(es))", list(seeds), out_dir, t.processes)
    res = mtrain.train_many(cfg, list(seeds), out_dir, progress=False, processes=t.processes)
    return [Path(r.path) for r in res]


def _call_checkpoint_skill(
    checkpoint: Path, workflow: Workflow, lead_hours: Sequence[int], samples: int
) -> dict[str, Any]:
    """Latitude-weighted RMSE of one checkpoint on the validation years, ``{lead_hours, rmse{ch: []}}``.

    ``RMSE(l) = sqrt(mean_i sum_j w_j (f_ij(l) - y_ij(l))^2 / sum_j w_j)`` over ``samples`` initial
    times ``i`` spread evenly over the validation years, area weights ``w``
    (:func:`data_catalog.grid.area_weights`), any :class:`models.base.ForecastModel`.
    """
    import torch

    from data_catalog.grid import area_weights

    model = _load_model(workflow.forecast.model_loader, checkpoint)
    channels = list(model.channels)
    step = np.timedelta64(int(model.time_step.total_seconds()), "s").astype("timedelta64[ns]")
    step_h = model.time_step.total_seconds() / 3600.0
    bad = [h for h in lead_hours if h % step_h]
    if bad:
        raise UserError(f"skill.lead_hours {bad} are not multiples of the model step ({step_h:g} h)")
    n = int(max(lead_hours) // step_h)
    v = workflow.data.validation
    ds = _call_open_reanalysis(workflow.data.source, channels, time=slice(v.start, v.end))
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    ok = [i for i in range(len(times) - n) if times[i + n] - times[i] == n * step]
    if not ok:
        raise UserError(f"the validation years {v.start}..{v.end} hold no {n}-step window")
    picks = np.unique(np.asarray(ok)[np.linspace(0, len(ok) - 1, min(samples, len(ok))).round().astype(int)])
    need = np.unique((picks[:, None] + np.arange(n + 1)[None, :]).ravel())
    sub = ds.isel(time=need)
    data = np.stack([np.asarray(sub[c].values, dtype=np.float32) for c in channels], axis=1)
    pos = {int(t): k for k, t in enumerate(need)}
    w = torch.as_tensor(area_weights(np.asarray(ds["latitude"].values)), dtype=torch.float64)[:, None]
    sq = torch.zeros(n, len(channels), dtype=torch.float64)
    with torch.no_grad():
        for i in picks:  # one init at a time: step() takes one valid time per batch
            x = torch.from_numpy(data[pos[int(i)]][None]).to(model.device)
            for k in range(n):
                x = model.step(x, times[i + k])
                y = torch.from_numpy(data[pos[int(i) + k + 1]][None])
                err2 = (x.detach().cpu().double() - y.double()) ** 2
                sq[k] += (err2 * w).mean(dim=(-2, -1))[0] / w.mean()
    rmse = (sq / len(picks)).sqrt()
    index = [int(h // step_h) - 1 for h in lead_hours]
    return {
        "lead_hours": [int(h) for h in lead_hours],
        "rmse": {c: [float(rmse[k, j]) for k in index] for j, c in enumerate(channels)},
        "init_times": [str(np.datetime_as_string(times[i], unit="h")) for i in picks],
    }


def _load_model(loader: str, path: Path) -> Any:
    import importlib

    module, func = loader.split(":")
    return getattr(importlib.import_module(module), func)(str(path))


def _call_run_forecast(config: Mapping[str, Any], run_dir: Path, shard: tuple[int, int]) -> Any:
    import pipeline

    return pipeline.run_forecast(dict(config), run_dir, shard=shard)


def _call_forecast_progress(run_dir: Path) -> dict[str, Any]:
    """Work units done / planned from the pipeline's manifest (``units.json`` + ``manifest/``)."""
    from pipeline import manifest

    done = manifest.done_units(run_dir)
    plan = Path(run_dir) / "units.json"
    total = len(json.loads(plan.read_text())) if plan.is_file() else None
    return {"units_done": len(done), "units_total": total, "complete": (Path(run_dir) / "COMPLETE").exists()}


def _call_open_forecast(path: Path) -> Any:
    import pipeline

    return pipeline.open_forecast(path)


def _call_score(workflow: Workflow, forecast: Any, truth: Any) -> Any:
    import evaluation

    s = workflow.score
    kwargs: dict[str, Any] = {
        "baselines": list(s.baselines) or None,
        "fair": s.fair,
        "thresholds": s.thresholds,
        "seed": workflow.seed,
        "name": workflow.name,
        "reference": (workflow.data.train.start, workflow.data.train.end),
    }
    if s.metrics is not None:
        kwargs["metrics"] = list(s.metrics)
    if s.regions is not None:
        kwargs["regions"] = list(s.regions)
    return evaluation.score_forecast(forecast, truth, variables=workflow.data.variables, **kwargs)


def _call_write_scores(scores: Any, path: Path) -> Path:
    import evaluation

    return Path(evaluation.write_scores(scores, path))


def _call_write_report(
    scores_path: Path, out_dir: Path, workflow: Workflow, forecast: Path | None, truth: str | None
) -> Path:
    from evaluation.report import write_report

    r = workflow.report
    return Path(
        write_report(
            scores_path,
            out_dir,
            forecast=forecast,
            truth=truth,
            title=r.title or workflow.name,
            variables=r.variables,
            region=r.region,
            baseline=r.baseline,
        )
    )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _is_checkpoint(path: Path) -> bool:
    """A checkpoint folder holds weights and metadata (docs/architecture.md), or at least its skill."""
    return any((path / name).is_file() for name in ("weights.safetensors", "metadata.json", "skill.json"))


def resolve_checkpoints(workflow: Workflow, run_dir: Path) -> list[Path]:
    """Checkpoint folders of the forecast: ``pretrained:<name>``, ``train``, folders, or lists."""
    out: list[Path] = []
    for entry in workflow.forecast.checkpoints:
        if entry.startswith("pretrained:"):
            base = _call_pretrained_dir(entry.split(":", 1)[1])
        elif entry == "train":
            assert workflow.train is not None
            base = Path(run_dir) / workflow.train.output
        else:
            base = Path(entry).expanduser()
        if not base.exists():
            raise UserError(f"checkpoint folder not found: {base}")
        if _is_checkpoint(base):
            out.append(base)
        else:
            subs = sorted(p for p in base.iterdir() if p.is_dir() and _is_checkpoint(p))
            if not subs:
                raise UserError(f"no checkpoints (folders with weights.safetensors) in {base}")
            out.extend(subs)
    if workflow.forecast.max_checkpoints is not None:
        out = out[: workflow.forecast.max_checkpoints]
    return [p.resolve() for p in out]


def forecast_config(
    workflow: Workflow, run_dir: Path, amplitude: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The pipeline's ForecastConfig (as a dict) for this workflow."""
    f = workflow.forecast
    p = f.perturbation
    times = [str(np.datetime_as_string(t, unit="m")) for t in f.init_times.expand()]
    pert: dict[str, Any] = {
        "method": p.method,
        "alpha": p.alpha,
        "cycles": p.cycles,
        "seed_channel": p.seed_channel,
        "length_scale_km": p.length_scale_km,
        "stochastic": p.stochastic,
        "stochastic_length_km": p.stochastic_length_km,
        "stochastic_ramp_hours": p.stochastic_ramp_hours,
    }
    if p.stochastic_schedule is not None:
        sch = p.stochastic_schedule
        pert["stochastic_schedule"] = (
            {c: [list(pt) for pt in pts] for c, pts in sch.items()}
            if isinstance(sch, dict)
            else [list(pt) for pt in sch]
        )
    if p.method != "none":
        pert["n_pairs"] = f.n_pairs()
    amp = dict(p.amplitude) if p.amplitude else (dict(amplitude) if amplitude else None)
    if amp:
        pert["amplitude"] = amp
    output: dict[str, Any] = {
        "path": str(store_path(run_dir, "forecast", f.output.path)),
        "dtype": f.output.dtype,
        "codec": f.output.codec,
    }
    if f.output.variables is not None:
        output["variables"] = list(f.output.variables)
    return {
        "analysis": workflow.data.source,
        "init_times": times,
        "checkpoints": [str(c) for c in resolve_checkpoints(workflow, run_dir)],
        "model_loader": f.model_loader,
        "perturbation": pert,
        "lead_steps": f.steps(workflow.data.time_step),
        "batch_size": f.batch_size,
        "device": f.device,
        "output": output,
        "inline": {
            "enabled": f.inline_scoring.enabled,
            "crps": "crps" in f.inline_scoring.metrics,
            "spectra": "spectra" in f.inline_scoring.metrics,
        },
        "seed": workflow.perturbation_seed(),
    }


STORE_NAME = "forecast.zarr"  # the engine's store name inside its folder


def store_path(run_dir: Path, folder: str, path: str | None) -> Path:
    """Where a stage's store goes: ``path`` (relative to run_dir) or ``<folder>/forecast.zarr``."""
    return _abs(run_dir, path) if path else Path(run_dir) / folder / STORE_NAME


def _abs(run_dir: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else Path(run_dir) / p


def _rel(run_dir: Path, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------
def stage_prepare(ctx: StageContext) -> dict[str, Any]:
    """Open the analyses, check variables and the time coverage of the forecasts' truth."""
    w = ctx.workflow
    logger.info("opening %s (the embedded world is built on first use)", w.data.source)
    ds = _call_open_reanalysis(w.data.source, w.data.variables)
    import pandas as pd

    times = pd.DatetimeIndex(ds["time"].values)
    inits = w.forecast.init_times.expand()
    step = to_timedelta64(w.data.time_step)
    lead = step * w.forecast.steps(w.data.time_step)
    first, last = np.datetime64(times[0], "ns"), np.datetime64(times[-1], "ns")
    missing = [t for t in inits if t < first or t > last]
    if missing:
        raise UserError(
            f"initial time {np.datetime_as_string(missing[0], unit='h')} is outside the data "
            f"({np.datetime_as_string(first, unit='h')} .. {np.datetime_as_string(last, unit='h')})"
        )
    if w.score.enabled and inits[-1] + lead > last:
        logger.warning("the last forecasts end after the data (%s): late leads have no truth", times[-1])
    test0, test1 = to_datetime64(w.data.test.start), to_datetime64(w.data.test.end)
    outside = [t for t in inits if t < test0 or t > test1]
    if outside:
        logger.warning(
            "%d initial time(s) lie outside the test years %s..%s",
            len(outside),
            w.data.test.start,
            w.data.test.end,
        )
    info: dict[str, Any] = {
        "source": w.data.source,
        "variables": [str(v) for v in ds.data_vars],
        "time_range": [str(times[0]), str(times[-1])],
        "n_times": int(times.size),
        "grid": {
            "latitude": int(ds.sizes.get("latitude", 0)),
            "longitude": int(ds.sizes.get("longitude", 0)),
        },
        "init_times": len(inits),
        "lead_steps": w.forecast.steps(w.data.time_step),
    }
    write_json(ctx.path("data.json"), info)
    logger.info(
        "data: %d variables, %s .. %s, %d init times", len(info["variables"]), times[0], times[-1], len(inits)
    )
    return {"outputs": {"data": "data.json"}, "variables": info["variables"]}


def stage_train(ctx: StageContext) -> dict[str, Any]:
    """Train the checkpoints of this shard's seeds (seeds ``i::N``)."""
    w = ctx.workflow
    assert w.train is not None
    i, n = ctx.shard
    out = ctx.mkdir(w.train.output)
    mine = list(w.train.seeds[i::n])
    todo = [
        s
        for s in mine
        if not (_is_checkpoint(out / f"seed-{s}") and (out / f"seed-{s}" / "skill.json").is_file())
    ]
    for seed in sorted(set(mine) - set(todo)):
        logger.info("checkpoint %s exists, kept", out / f"seed-{seed}")
    if todo:
        _call_train(w, todo, out)
    written = {f"seed-{s}": _rel(ctx.run_dir, out / f"seed-{s}") for s in mine}
    return {"outputs": written}


def stage_skill(ctx: StageContext) -> dict[str, Any]:
    """Collect (or recompute) each checkpoint's RMSE; set perturbation amplitudes = alpha x RMSE(ref lead)."""
    w = ctx.workflow
    s = w.skill
    table: dict[str, Any] = {}
    for ckpt in resolve_checkpoints(w, ctx.run_dir):
        if s.calibrate:
            logger.info("calibrating %s on %s..%s", ckpt.name, w.data.validation.start, w.data.validation.end)
            skill = _call_checkpoint_skill(ckpt, w, s.lead_hours, s.samples)
        else:
            path = ckpt / "skill.json"
            if not path.is_file():
                raise UserError(f"checkpoint {ckpt} has no skill.json; set skill.calibrate: true")
            skill = json.loads(path.read_text())
        table[str(ckpt)] = skill
    amplitude: dict[str, float] = {}
    ref = s.reference_lead_hours
    for skill in table.values():
        leads = list(skill.get("lead_hours", []))
        if ref not in leads:
            raise UserError(f"skill has no {ref} h lead (has {leads}); set skill.reference_lead_hours")
        k = leads.index(ref)
        for ch, values in skill.get("rmse", {}).items():
            amplitude.setdefault(ch, 0.0)
            amplitude[ch] += float(values[k]) / len(table)
    amplitude = {ch: w.forecast.perturbation.alpha * v for ch, v in amplitude.items()}
    payload = {
        "reference_lead_hours": ref,
        "alpha": w.forecast.perturbation.alpha,
        "amplitude": amplitude,
        "calibrated": s.calibrate,
        "checkpoints": table,
    }
    write_json(ctx.path("skill.json"), payload)
    logger.info(
        "skill of %d checkpoints; amplitudes %s",
        len(table),
        {k: float(f"{v:.4g}") for k, v in amplitude.items()},
    )
    return {"outputs": {"skill": "skill.json"}, "checkpoints": len(table)}


def stage_model_climate(ctx: StageContext) -> dict[str, Any]:
    """Unperturbed reforecasts from every checkpoint over ``model_climate.init_times``."""
    w = ctx.workflow
    mc = w.model_climate
    assert mc is not None
    cfg = forecast_config(w, ctx.run_dir)
    cfg["init_times"] = [str(np.datetime_as_string(t, unit="m")) for t in mc.init_times.expand()]
    cfg["perturbation"] = {"method": "none"}
    cfg["inline"] = {"enabled": False}
    if mc.lead_time is not None:
        cfg["lead_steps"] = int(to_timedelta64(mc.lead_time) // to_timedelta64(w.data.time_step))
    store = store_path(ctx.run_dir, "model_climate", mc.output)
    cfg["output"] = {"path": str(store), "dtype": "float32"}
    folder = _fresh_folder(ctx, "model_climate", [store])
    _call_run_forecast(cfg, folder, ctx.shard)
    return {"outputs": {"model_climate": _rel(ctx.run_dir, store)}}


def _fresh_folder(ctx: StageContext, folder: str, stores: Sequence[Path]) -> Path:
    """The engine's folder for this stage hash: a folder left by another configuration is removed
    (with its stores) before the first shard starts; one of the same hash is kept (resume)."""
    import shutil

    path = ctx.path(folder)
    with locked(ctx.run_dir / "stages" / f".{folder}-folder.lock"):
        marker = path / "stage-hash"
        old = marker.read_text().strip() if marker.is_file() else None
        if path.exists() and old != ctx.config_hash:
            logger.info("%s holds another configuration (%s); starting afresh", path, old)
            shutil.rmtree(path)
            for store in stores:
                if store.exists() and not store.is_relative_to(path):
                    shutil.rmtree(store)
        make_dir(path)
        if old != ctx.config_hash:
            write_text_atomic(marker, ctx.config_hash + "\n")
    return path


def _amplitude(ctx: StageContext) -> dict[str, float] | None:
    """Explicit amplitudes from the skill stage when recalibrated or referenced to another lead than 48 h
    (otherwise the engine scales each checkpoint by its own 48 h RMSE)."""
    w = ctx.workflow
    skill_path = ctx.output_of("skill", "skill")
    if skill_path is None or not (w.skill.calibrate or w.skill.reference_lead_hours != 48):
        return None
    return json.loads(skill_path.read_text()).get("amplitude") or None


def stage_forecast(ctx: StageContext) -> dict[str, Any]:
    """Run this shard of the ensemble through the pipeline (which resumes from its manifest)."""
    w = ctx.workflow
    cfg = forecast_config(w, ctx.run_dir, _amplitude(ctx))
    folder = _fresh_folder(ctx, "forecast", [Path(cfg["output"]["path"])])
    n_ckpt = len(cfg["checkpoints"])
    members = n_ckpt * w.forecast.members
    logger.info(
        "forecast: %d checkpoints x %d members = %d members, %d init times, %d steps (shard %d/%d)",
        n_ckpt,
        w.forecast.members,
        members,
        len(cfg["init_times"]),
        cfg["lead_steps"],
        *ctx.shard,
    )
    summary = _call_run_forecast(cfg, folder, ctx.shard)
    info: dict[str, Any] = {
        "members": members,
        "init_times": len(cfg["init_times"]),
        "lead_steps": cfg["lead_steps"],
    }
    if isinstance(summary, Mapping):
        info["engine"] = {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)}
    return {"outputs": {"forecast": _rel(ctx.run_dir, Path(cfg["output"]["path"]))}, **info}


def stage_score(ctx: StageContext) -> dict[str, Any]:
    """Score the ensemble and the baselines against the truth on the configured dask cluster."""
    from workflows.cluster import dask_cluster

    w = ctx.workflow
    forecast_path = ctx.output_of("forecast", "forecast")
    if forecast_path is None or not forecast_path.exists():
        raise UserError("no forecast store to score; run the forecast stage first")
    truth = w.score.truth or w.data.source
    out = ctx.path(w.score.output)
    # SLURM worker jobs of mode 'slurm' write their output beside the stage logs
    with dask_cluster(w.score.dask, log_directory=ctx.run_dir / "logs" / "dask") as where:
        logger.info("scoring %s against %s on %s", forecast_path.name, truth, where)
        scores = _call_score(w, _call_open_forecast(forecast_path), truth)
        scores = scores.compute() if hasattr(scores, "compute") else scores
        _call_write_scores(scores, out)
    outputs = {"scores": w.score.output}
    csv = out.with_suffix(".csv")
    if csv.exists():
        outputs["scores_csv"] = _rel(ctx.run_dir, csv)
    return {"outputs": outputs}


def stage_report(ctx: StageContext) -> dict[str, Any]:
    """Write the HTML report from the scores."""
    w = ctx.workflow
    scores = ctx.output_of("score", "scores")
    if scores is None or not scores.exists():
        raise UserError("no scores to report; run the score stage first")
    out_dir = ctx.mkdir(w.report.output)
    fc = ctx.output_of("forecast", "forecast")
    html = _call_write_report(scores, out_dir, w, fc, w.score.truth or w.data.source)
    logger.info("report: %s", html)
    return {"outputs": {"report": _rel(ctx.run_dir, html)}}


# --------------------------------------------------------------------------------------------------
# the registry: which configuration keys each stage's result depends on
# --------------------------------------------------------------------------------------------------
REGISTRY: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            "prepare",
            stage_prepare,
            ("data", "forecast.init_times", "forecast.lead_time", "forecast.lead_steps"),
            description="open and check the analyses",
        ),
        StageSpec(
            "train",
            stage_train,
            ("data", "train", "seed"),
            ignore=("train.processes",),
            shardable=True,
            description="train one checkpoint per seed",
        ),
        StageSpec(
            "skill",
            stage_skill,
            (
                "data",
                "skill",
                "forecast.checkpoints",
                "forecast.max_checkpoints",
                "forecast.perturbation.alpha",
            ),
            description="per-checkpoint RMSE, amplitudes",
        ),
        StageSpec(
            "model_climate",
            stage_model_climate,
            ("data", "model_climate", "forecast.checkpoints", "forecast.max_checkpoints"),
            shardable=True,
            description="unperturbed reforecasts",
        ),
        StageSpec(
            "forecast",
            stage_forecast,
            ("data", "forecast", "seed"),
            ignore=("forecast.device", "forecast.batch_size", "forecast.output.codec"),
            shardable=True,
            description="the ensemble (pipeline)",
        ),
        StageSpec(
            "score",
            stage_score,
            ("data", "score", "seed", "name"),
            ignore=("score.dask",),
            description="scores vs truth and baselines",
        ),
        StageSpec("report", stage_report, ("report", "name"), description="the HTML report"),
    )
}
