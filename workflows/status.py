"""``wxens status RUN_DIR`` and ``wxens info STORE``: what a run has done, what a store holds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from data_catalog.errors import UserError
from workflows.runner import Registry, default_registry, read_stage_record, shard_records, stage_hashes
from workflows.schema import STAGE_ORDER, Workflow, load_workflow


def run_status(
    run_dir: str | Path, registry: Registry | None = None, workflow: Workflow | None = None
) -> dict[str, Any]:
    """Status of every stage of the run in ``run_dir``.

    Returns ``{"run_dir", "workflow", "stages": [{stage, status, seconds, shards: {...}, ...}]}`` where
    status is ``done``, ``running`` (or interrupted), ``failed``, ``stale`` (done for another
    configuration), ``pending`` or ``disabled``. ``workflow`` (default: the run's ``config.yaml``)
    is the configuration the records are compared with.
    """
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"not a run directory (no config.yaml): {run_dir}")
    if workflow is None:
        workflow = load_workflow(config)
    registry = registry if registry is not None else default_registry()
    hashes = stage_hashes(workflow, registry)
    enabled = workflow.enabled_stages()
    rows = []
    for stage in STAGE_ORDER:
        row: dict[str, Any] = {"stage": stage}
        if stage not in enabled:
            row["status"] = "disabled"
            rows.append(row)
            continue
        rec = read_stage_record(run_dir, stage)
        shards = {
            f"{i}/{n}": r.get("status", "?")
            for (i, n), r in sorted(shard_records(run_dir, stage).items())
            if r.get("config_hash") == hashes[stage]
        }
        if rec is None:
            row["status"] = "pending"
        elif rec.get("config_hash") != hashes[stage]:
            row["status"] = "stale"
        else:
            row["status"] = rec.get("status", "?")
            row["seconds"] = rec.get("seconds")
            if rec.get("error"):
                row["error"] = rec["error"]
        if row["status"] == "running" and shards and all(v == "done" for v in shards.values()):
            row["status"] = "partial"
        row["shards"] = shards
        if stage == "forecast":
            row.update(_forecast_progress(run_dir, workflow, rec if row["status"] == "done" else None))
        rows.append(row)
    return {"run_dir": str(run_dir), "workflow": workflow.name, "stages": rows}


def _forecast_progress(run_dir: Path, workflow: Any, record: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    folder = run_dir / "forecast"
    n_inits = len(workflow.forecast.init_times.expand())
    steps = workflow.forecast.steps(workflow.data.time_step)
    try:
        from workflows.stages import _call_forecast_progress

        prog = _call_forecast_progress(folder) if folder.is_dir() else {}
    except Exception:  # the pipeline may be absent or its manifest unreadable: status still answers
        prog = {}
    members = None
    if record is not None:
        members = record.get("info", {}).get("members")
    if prog.get("units_total"):
        out["units"] = f"{prog['units_done']}/{prog['units_total']}"
        frac = prog["units_done"] / prog["units_total"]
    else:
        frac = 1.0 if record is not None else 0.0
    if members is None:
        cfg = folder / "forecast-config.json"
        if cfg.is_file():
            members = len(json.loads(cfg.read_text()).get("checkpoints", [])) * workflow.forecast.members
    if members:
        out["members"] = int(members)
        out["member_forecasts_written"] = int(round(frac * members * n_inits))
        out["member_forecasts_total"] = int(members * n_inits)
        if record is not None and record.get("seconds"):
            # end to end: everything the stage did (loading checkpoints, breeding, writing) per member-step
            out["member_steps_per_s"] = round(members * n_inits * steps / float(record["seconds"]), 1)
            engine = (record.get("info") or {}).get("engine") or {}
            if record.get("shards") == 1 and engine.get("member_steps_per_s"):
                out["engine_member_steps_per_s"] = round(float(engine["member_steps_per_s"]), 1)
    return out


def format_status(status: dict[str, Any]) -> str:
    """Plain-text table of :func:`run_status`."""
    lines = [f"run {status['workflow']!r} in {status['run_dir']}"]
    for row in status["stages"]:
        parts = [f"{row['stage']:<14}", f"{row['status']:<9}"]
        if row.get("seconds") is not None:
            parts.append(f"{row['seconds']:8.1f} s")
        shards = row.get("shards") or {}
        if len(shards) > 1:
            done = sum(v == "done" for v in shards.values())
            failed = [k for k, v in shards.items() if v == "failed"]
            parts.append(
                f"shards {done}/{len(shards)} done" + (f", failed {', '.join(failed)}" if failed else "")
            )
        if "units" in row:
            parts.append(f"units {row['units']}")
        if "members" in row:
            parts.append(
                f"members {row['members']}, member forecasts {row['member_forecasts_written']}/"
                f"{row['member_forecasts_total']}"
            )
        if "member_steps_per_s" in row:
            rate = f"{row['member_steps_per_s']} member-steps/s"
            if "engine_member_steps_per_s" in row:
                rate += f" ({row['engine_member_steps_per_s']} in the rollout loop)"
            parts.append(rate)
        if row.get("error"):
            parts.append(f"error: {row['error']}")
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _open_store(path: str) -> Any:
    import xarray as xr

    p = Path(path)
    if "://" not in path and not p.exists():
        raise UserError(f"store not found: {path}")
    last: Exception | None = None
    for kwargs in ({"consolidated": None}, {"consolidated": False}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return xr.open_zarr(path, **kwargs)
        except Exception as exc:  # zarr raises a zoo of errors for non-stores
            last = exc
    if p.is_file() and p.suffix in (".nc", ".nc4"):
        try:
            return xr.open_dataset(p)
        except Exception as exc:
            last = exc
    raise UserError(f"cannot open {path} as a zarr store: {type(last).__name__}: {last}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def store_info(path: str | Path) -> dict[str, Any]:
    """Dims, variables, time range, members and provenance attributes of any zarr store."""
    ds = _open_store(str(path))
    info: dict[str, Any] = {"store": str(path), "dims": {str(k): int(v) for k, v in ds.sizes.items()}}
    info["variables"] = {
        str(name): {
            "dims": [str(d) for d in var.dims],
            "dtype": str(var.dtype),
            "units": var.attrs.get("units"),
            "long_name": var.attrs.get("long_name"),
        }
        for name, var in ds.data_vars.items()
    }
    if "time" in ds.coords and ds["time"].size:
        t = ds["time"].values
        if np.issubdtype(t.dtype, np.datetime64):
            first, last = (str(np.datetime_as_string(v, unit="s")) for v in (t.min(), t.max()))
        else:
            first, last = str(t.min()), str(t.max())
        info["time"] = {"first": first, "last": last, "count": int(t.size)}
    if "prediction_timedelta" in ds.coords and ds["prediction_timedelta"].size:
        lead = ds["prediction_timedelta"].values
        if np.issubdtype(lead.dtype, np.timedelta64):
            hours = lead.astype("timedelta64[h]").astype(int)
            info["lead_hours"] = {
                "first": int(hours.min()),
                "last": int(hours.max()),
                "count": int(lead.size),
            }
    if "number" in ds.dims:
        members: dict[str, Any] = {"count": int(ds.sizes["number"])}
        if "checkpoint" in ds.coords:
            members["checkpoints"] = int(np.unique(ds["checkpoint"].values).size)
        if "pair" in ds.coords:
            members["pairs"] = int(np.unique(ds["pair"].values).size)
        info["members"] = members
    if "level" in ds.coords and ds["level"].size:
        info["levels"] = [float(v) for v in np.atleast_1d(ds["level"].values)]
    if "latitude" in ds.coords and ds["latitude"].size:
        lat = ds["latitude"].values
        info["latitude"] = {"first": float(lat[0]), "last": float(lat[-1]), "count": int(lat.size)}
    info["attrs"] = _jsonable(dict(ds.attrs))
    return info


def format_info(info: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`store_info`."""
    lines = [f"store: {info['store']}", "dims: " + ", ".join(f"{k}={v}" for k, v in info["dims"].items())]
    if "time" in info:
        lines.append(f"time: {info['time']['first']} .. {info['time']['last']} ({info['time']['count']})")
    if "lead_hours" in info:
        lh = info["lead_hours"]
        lines.append(f"leads: {lh['first']} h .. {lh['last']} h ({lh['count']})")
    if "members" in info:
        lines.append("members: " + ", ".join(f"{k}={v}" for k, v in info["members"].items()))
    if "levels" in info:
        lines.append("levels: " + ", ".join(f"{v:g}" for v in info["levels"]))
    if "latitude" in info:
        la = info["latitude"]
        lines.append(f"latitude: {la['first']} .. {la['last']} ({la['count']})")
    lines.append("variables:")
    for name, v in info["variables"].items():
        units = f" [{v['units']}]" if v.get("units") else ""
        lines.append(f"  {name}{units} ({', '.join(v['dims'])}) {v['dtype']}")
    if info["attrs"]:
        lines.append("attributes:")
        for k, v in info["attrs"].items():
            text = v if isinstance(v, str) else json.dumps(v)
            if len(text) > 200:
                text = text[:197] + "..."
            lines.append(f"  {k}: {text}")
    return "\n".join(lines)
