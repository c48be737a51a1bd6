"""The workflow file: a YAML document validated by pydantic models.

A workflow names a run directory and configures the stages
``prepare -> train (optional) -> skill -> model_climate (optional) -> forecast -> score -> report``.
Every field below carries its default and a description; ``wxens run --explain`` and the reference
table in ``docs/workflows.md`` are generated from these models (:func:`explain`).

Loading never raises anything but a valid :class:`Workflow` or a one-line
:class:`~data_catalog.errors.UserError` naming the YAML path of the offending key, e.g.
``forecast.memebrs: unknown key; did you mean 'members'?``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from data_catalog.errors import UserError

#: Stage names in execution order.
STAGE_ORDER: tuple[str, ...] = ("prepare", "train", "skill", "model_climate", "forecast", "score", "report")
#: Stages whose work can be split into shards (array tasks).
SHARDABLE_STAGES: frozenset[str] = frozenset({"train", "model_climate", "forecast"})

_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.,:+=@-]+$")


# --------------------------------------------------------------------------------------------------
# scalar types
# --------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*([-+]?\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|D|days?|w|W|weeks?)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_time(value: str) -> np.datetime64:
    text = value.strip().replace(" ", "T")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?", text):
        raise ValueError(f"not a date/time (use e.g. 2008-01-01 or 2008-01-01T06:00): {value!r}")
    try:
        return np.datetime64(text, "ns")
    except ValueError:
        raise ValueError(f"not a date/time: {value!r}") from None


def _parse_duration(value: str) -> np.timedelta64:
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration (use e.g. '6h', '10D'): {value!r}")
    unit = m.group(2)
    key = "m" if unit.lower().startswith("mi") or unit == "m" else unit[0].lower()
    return np.timedelta64(int(m.group(1)) * _UNIT_SECONDS[key], "s").astype("timedelta64[ns]")


def _to_time_string(value: Any) -> Any:
    """YAML may give dates as objects: accept dates/datetimes and check strings parse."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(timespec="minutes")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        _parse_time(value)
    return value


def _to_duration_string(value: Any) -> Any:
    """Accept ``6h``, ``10D``, ``15 days``, ``240h``; reject zero or negative durations."""
    if isinstance(value, str):
        if _parse_duration(value) <= np.timedelta64(0, "ns"):
            raise ValueError(f"duration must be positive, got {value!r}")
    return value


def _to_list(value: Any) -> Any:
    """A single string where a list is expected becomes a one-element list."""
    if isinstance(value, str):
        return [value]
    return value


TimeStr = Annotated[str, BeforeValidator(_to_time_string)]
DurationStr = Annotated[str, BeforeValidator(_to_duration_string)]
PositiveInt = Annotated[int, Field(ge=1)]
StrList = Annotated[list[str], BeforeValidator(_to_list)]


def to_datetime64(value: str) -> np.datetime64:
    """Parse a validated time string to ``datetime64[ns]``."""
    return _parse_time(value)


def to_timedelta64(value: str) -> np.timedelta64:
    """Parse a validated duration string (``6h``, ``10D``) to ``timedelta64[ns]``."""
    return _parse_duration(value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------
class TimeRange(_Model):
    """A closed interval of dates ``[start, end]``."""

    start: TimeStr = Field(description="First time (ISO date or date-time), inclusive.")
    end: TimeStr = Field(description="Last time (ISO date or date-time), inclusive.")

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if to_datetime64(self.start) > to_datetime64(self.end):
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class DataSection(_Model):
    """Where the analyses come from and which years serve which purpose."""

    source: str = Field(
        default="builtin:sphere-swe",
        description="Catalog entry, local zarr path or URL of the reanalysis "
        "(`builtin:sphere-swe` is the embedded world; `gs://weatherbench2/...` an ERA5 store).",
    )
    variables: StrList | None = Field(
        default=None,
        description="Canonical channel names to use (z500, t850, ...); null = the checkpoints' channels.",
    )
    train: TimeRange = Field(
        default_factory=lambda: TimeRange(start="2000-01-01", end="2006-12-31T18:00"),
        description="Training years (train stage).",
    )
    validation: TimeRange = Field(
        default_factory=lambda: TimeRange(start="2007-01-01", end="2007-12-31T18:00"),
        description="Validation years (skill calibration, bred-vector amplitudes).",
    )
    test: TimeRange = Field(
        default_factory=lambda: TimeRange(start="2008-01-01", end="2009-12-31T18:00"),
        description="Test years: forecast initial times and the truth they are scored against.",
    )
    time_step: DurationStr = Field(
        default="6h", description="Time step of the analyses and of one model step."
    )


class TrainSection(_Model):
    """Train one checkpoint per seed (optional stage; omit the section to use existing checkpoints)."""

    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: [0], description="One checkpoint is trained per seed."
    )
    steps: PositiveInt = Field(default=1000, description="Optimisation steps per checkpoint.")
    batch_size: PositiveInt = Field(default=16, description="Samples per optimisation step.")
    learning_rate: float = Field(
        default=2e-3, gt=0, description="Peak learning rate (AdamW, cosine schedule)."
    )
    rollout_steps: PositiveInt = Field(default=1, description="Autoregressive steps in the training loss.")
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="Further options of models.train.TrainConfig (embed_dim, num_layers, lmax, ...).",
    )
    output: str = Field(
        default="checkpoints", description="Folder (relative to run_dir) that receives the checkpoints."
    )
    processes: PositiveInt = Field(
        default=1,
        description="Seeds trained side by side, one process each (same weights; a GPU fits several).",
    )


class SkillSection(_Model):
    """Per-checkpoint skill: the latitude-weighted RMSE that sets the bred-vector amplitudes."""

    calibrate: bool = Field(
        default=False,
        description="Recompute each checkpoint's RMSE on the validation years; false = read its skill.json.",
    )
    lead_hours: Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        default_factory=lambda: [6, 24, 48], description="Lead times (hours) at which RMSE is measured."
    )
    reference_lead_hours: PositiveInt = Field(
        default=48, description="Lead (hours) whose RMSE scales the perturbations (HENS: 48 h)."
    )
    samples: PositiveInt = Field(default=16, description="Validation initial times used when calibrating.")

    @model_validator(mode="after")
    def _reference_in_leads(self) -> SkillSection:
        if self.reference_lead_hours not in self.lead_hours:
            self.lead_hours = sorted({*self.lead_hours, self.reference_lead_hours})
        return self


class InitTimes(_Model):
    """Initial times: an explicit list, or a range ``start..end`` every ``step``."""

    times: list[TimeStr] | None = Field(default=None, description="Explicit list of initial times.")
    start: TimeStr | None = Field(default=None, description="First initial time of a range.")
    end: TimeStr | None = Field(default=None, description="Last initial time of a range (inclusive).")
    step: DurationStr = Field(default="1D", description="Spacing of a range.")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple | str | dt.date):
            return {"times": list(value) if isinstance(value, list | tuple) else [value]}
        return value

    @model_validator(mode="after")
    def _one_form(self) -> InitTimes:
        if self.times is not None:
            if self.start is not None or self.end is not None:
                raise ValueError("give either 'times' or 'start'/'end', not both")
            if not self.times:
                raise ValueError("the list of initial times is empty")
        else:
            if self.start is None or self.end is None:
                raise ValueError("give a list of times, or both 'start' and 'end'")
            if to_datetime64(self.start) > to_datetime64(self.end):
                raise ValueError(f"start {self.start} is after end {self.end}")
            n = (to_datetime64(self.end) - to_datetime64(self.start)) // to_timedelta64(self.step) + 1
            if n > 1_000_000:
                raise ValueError(f"{n} initial times is too many")
        return self

    def expand(self) -> list[np.datetime64]:
        """The initial times as ``datetime64[ns]``, sorted and unique."""
        if self.times is not None:
            values = [to_datetime64(t) for t in self.times]
        else:
            assert self.start is not None and self.end is not None
            start, end, step = to_datetime64(self.start), to_datetime64(self.end), to_timedelta64(self.step)
            values = list(np.arange(start, end + np.timedelta64(1, "ns"), step))
        return sorted(set(values))


class Perturbation(_Model):
    """Initial-condition perturbations in +/- pairs (Toth & Kalnay 1993 breeding; HENS, Mahesh et al. 2024)."""

    method: Literal["bred", "gaussian", "spherical", "none"] = Field(
        default="bred",
        description="bred = bred vectors; spherical = correlated noise on the sphere; gaussian = white "
        "noise (all three in +/- pairs); none = unperturbed (one member per checkpoint).",
    )
    n_pairs: PositiveInt | None = Field(default=None, description="Number of +/- pairs; null = members / 2.")
    alpha: float = Field(
        default=0.35, gt=0, description="Amplitude as a multiple of each channel's 48 h RMSE."
    )
    cycles: PositiveInt = Field(default=3, description="Breeding cycles of one time step each.")
    seed_channel: str | list[str] = Field(
        default="z500",
        description="Channel the initial random seed of breeding perturbs, or a list of channels that "
        "each get an independent seed (e.g. the geopotential at every level).",
    )
    length_scale_km: float = Field(
        default=500.0, gt=0, description="Correlation length of spherical noise (km)."
    )
    amplitude: dict[str, Annotated[float, Field(gt=0)]] | None = Field(
        default=None, description="Explicit per-channel amplitudes in physical units; overrides alpha x RMSE."
    )
    stochastic: Annotated[float, Field(ge=0)] | dict[str, Annotated[float, Field(ge=0)]] = Field(
        default=0.0,
        description="Stochastic forcing during the rollout: per step and member a spherical random field "
        "per channel with RMS stochastic x the checkpoint's 6 h RMSE (0 = off); represents model error. "
        "A mapping {channel: factor} sets it per channel (channels not named are not forced).",
    )
    stochastic_length_km: float = Field(
        default=1000.0, gt=0, description="Correlation length of the stochastic forcing (km)."
    )
    stochastic_ramp_hours: Annotated[float, Field(ge=0)] | dict[str, Annotated[float, Field(ge=0)]] = Field(
        default=0.0,
        description="Lead (hours) over which the stochastic forcing grows linearly from 0 to full "
        "strength (0 = full from the first step); a mapping {channel: hours} ramps channels differently "
        "(channels not named: no ramp).",
    )
    stochastic_schedule: list[tuple[float, float]] | dict[str, list[tuple[float, float]]] | None = Field(
        default=None,
        description="Strength of the stochastic forcing vs lead, multiplying any ramp: [[hours, strength], "
        "...] points, linear between them, constant outside (e.g. [[0, 1], [72, 1], [192, 0.3]] tapers it "
        "off after 3 days); a mapping {channel: points} per channel (channels not named: constant); "
        "null = constant.",
    )


class ForecastOutput(_Model):
    """Where and how the ensemble is written (WeatherBench2 zarr layout)."""

    path: str | None = Field(
        default=None,
        description="Store path (relative to run_dir unless absolute); null = forecast/forecast.zarr, "
        "beside the engine's manifest.",
    )
    variables: StrList | None = Field(
        default=None, description="Channels written; null = all model channels."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description='Stored data type (errors: docs/engine.md, "Store").'
    )
    codec: Literal["lz4", "zstd", "none"] = Field(
        default="lz4",
        description="Lossless chunk compression: Blosc LZ4 with bit shuffle, zstd or none (same values; "
        "a resumed run keeps its store's codec).",
    )


InlineMetric = Literal["crps", "rmse", "spread", "ranks", "spectra"]


class InlineScoring(_Model):
    """Scores computed while the ensemble is produced (no second read of the store)."""

    enabled: bool = Field(
        default=False, description="Score each init time against the truth as it is written."
    )
    metrics: Annotated[list[InlineMetric], BeforeValidator(_to_list)] = Field(
        default_factory=lambda: list(get_args(InlineMetric)),
        description="Inline scores: crps (fair CRPS; members spill to disk until their init is done) and "
        "spectra are computed only when listed; the mean's RMSE, the spread and the rank histogram always.",
    )


class ForecastSection(_Model):
    """The ensemble: checkpoints x perturbed members, rolled out from each initial time."""

    checkpoints: StrList = Field(
        default_factory=lambda: ["pretrained:sphere-swe"],
        description="Checkpoint folders: `pretrained:<name>` (shipped), `train` (this run's train stage), "
        "a folder of checkpoints or a list of checkpoint folders.",
    )
    max_checkpoints: PositiveInt | None = Field(default=None, description="Use only the first N checkpoints.")
    model_loader: str = Field(
        default="models.checkpoint:load_checkpoint",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`module:function` that loads one checkpoint folder into a ForecastModel.",
    )
    members: PositiveInt = Field(
        default=16, description="Members per checkpoint: 2 x pairs, or 1 without perturbation."
    )
    perturbation: Perturbation = Field(
        default_factory=lambda: Perturbation(), description="Initial perturbations."
    )
    init_times: InitTimes = Field(description="Initial times: a list, or {start, end, step}.")
    lead_time: DurationStr | None = Field(
        default=None, description="Forecast length, e.g. '10D' (or give lead_steps)."
    )
    lead_steps: PositiveInt | None = Field(default=None, description="Forecast length in model steps.")
    batch_size: PositiveInt = Field(default=16, description="Members advanced together in one model call.")
    device: str = Field(default="cpu", description="Torch device: cpu, cuda, cuda:N or auto.")
    output: ForecastOutput = Field(default_factory=lambda: ForecastOutput(), description="Output store.")
    inline_scoring: InlineScoring = Field(
        default_factory=lambda: InlineScoring(), description="Inline scores."
    )
    seed: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Seed of the perturbations; null = the workflow seed."
    )

    @model_validator(mode="after")
    def _members(self) -> ForecastSection:
        p = self.perturbation
        if self.lead_time is None and self.lead_steps is None:
            raise ValueError("give lead_time (e.g. '10D') or lead_steps")
        if self.lead_time is not None and self.lead_steps is not None:
            raise ValueError("give lead_time or lead_steps, not both")
        if p.method == "none":
            if self.members != 1:
                raise ValueError(
                    f"perturbation 'none' gives identical members: set members: 1, not {self.members}"
                )
            if p.n_pairs is not None:
                raise ValueError("n_pairs does not apply to perturbation 'none'")
        else:
            if self.members % 2:
                raise ValueError(
                    f"members must be even for {p.method} perturbations (+/- pairs), got {self.members}"
                )
            if p.n_pairs is not None and 2 * p.n_pairs != self.members:
                raise ValueError(f"perturbation.n_pairs={p.n_pairs} does not match members={self.members}")
        return self

    def n_pairs(self) -> int:
        """Number of +/- pairs (0 for the unperturbed control)."""
        return 0 if self.perturbation.method == "none" else self.members // 2

    def steps(self, time_step: str) -> int:
        """Lead steps, from ``lead_steps`` or ``lead_time / time_step``."""
        if self.lead_steps is not None:
            return self.lead_steps
        assert self.lead_time is not None
        lead, step = to_timedelta64(self.lead_time), to_timedelta64(time_step)
        if lead % step:
            raise UserError(
                f"forecast.lead_time {self.lead_time} is not a multiple of the time step {time_step}"
            )
        return int(lead // step)


class ModelClimateSection(_Model):
    """Model climate: unperturbed reforecasts over past years (reference for EFI/SOT)."""

    init_times: InitTimes = Field(description="Initial times of the reforecasts.")
    lead_time: DurationStr | None = Field(
        default=None, description="Length of each reforecast (default: forecast's)."
    )
    output: str | None = Field(
        default=None, description="Store path (relative to run_dir); null = model_climate/forecast.zarr."
    )


class DaskSlurm(_Model):
    """dask-jobqueue ``SLURMCluster`` options (needs the ``wxens[slurm]`` extra)."""

    queue: str | None = Field(default=None, description="Partition of the worker jobs.")
    account: str | None = Field(default=None, description="Account charged for the worker jobs.")
    cores: PositiveInt = Field(default=8, description="Cores per worker job.")
    memory: str = Field(default="32GB", description="Memory per worker job.")
    walltime: str = Field(default="01:00:00", description="Wall time of each worker job.")
    jobs: PositiveInt = Field(default=4, description="Number of worker jobs.")


class DaskOptions(_Model):
    """Where the scoring computation runs."""

    mode: Literal["local", "threads", "address", "slurm"] = Field(
        default="local",
        description="local = a dask.distributed LocalCluster; threads = the plain threaded scheduler; "
        "address = connect to a running scheduler; slurm = a dask-jobqueue SLURMCluster.",
    )
    address: str | None = Field(
        default=None, description="Scheduler address for mode 'address' (tcp://host:8786)."
    )
    n_workers: PositiveInt = Field(default=1, description="LocalCluster workers.")
    threads_per_worker: PositiveInt = Field(default=2, description="LocalCluster threads per worker.")
    processes: bool = Field(default=False, description="LocalCluster workers as processes (else threads).")
    slurm: DaskSlurm = Field(
        default_factory=lambda: DaskSlurm(), description="SLURMCluster options for mode 'slurm'."
    )

    @model_validator(mode="after")
    def _address(self) -> DaskOptions:
        if self.mode == "address" and not self.address:
            raise ValueError("dask mode 'address' needs an address (e.g. tcp://host:8786)")
        return self


Baseline = Literal["climatology", "persistence", "probabilistic_climatology"]
BASELINES: tuple[Baseline, ...] = ("climatology", "persistence", "probabilistic_climatology")


class ScoreSection(_Model):
    """Scores of the ensemble and of the baselines against the truth."""

    enabled: bool = Field(default=True, description="Run the score stage.")
    truth: str | None = Field(default=None, description="Truth store or catalog entry; null = data.source.")
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(BASELINES),
        description="Reference forecasts scored alongside.",
    )
    metrics: StrList | None = Field(
        default=None,
        description="Metrics of the scorecard (names of evaluation.score); null = evaluation's default set "
        "(CRPS, RMSE, spread, spread-skill ratios, rank histogram, Brier, ROC, reliability).",
    )
    regions: StrList | None = Field(
        default=None,
        description="Region names of evaluation.regions; null = global, tropics and both extratropics.",
    )
    fair: bool = Field(
        default=True, description="Fair CRPS and Brier score (Ferro 2014) instead of the standard ones."
    )
    thresholds: dict[str, list[float]] | None = Field(
        default=None, description="Exceedance thresholds per variable, physical units (Brier, ROC)."
    )
    output: str = Field(default="scores.zarr", description="Scores store, relative to run_dir.")
    dask: DaskOptions = Field(default_factory=lambda: DaskOptions(), description="Dask cluster for scoring.")


class ReportSection(_Model):
    """The HTML report."""

    enabled: bool = Field(default=True, description="Run the report stage.")
    title: str | None = Field(default=None, description="Report title; null = the workflow name.")
    variables: StrList | None = Field(
        default=None, description="Variables shown; null = every scored variable."
    )
    region: str = Field(default="global", description="Region of the scorecards and curves.")
    baseline: str | None = Field(
        default=None,
        description="Reference of the scorecards; null = climatology, else the first baseline scored.",
    )
    output: str = Field(default="report", description="Folder (relative to run_dir) receiving report.html.")


class StageResources(_Model):
    """Batch resources of one stage; unset fields fall back to the top-level resources."""

    partition: str | None = Field(default=None, description="SLURM partition.")
    account: str | None = Field(default=None, description="SLURM account.")
    time: str | None = Field(default=None, description="Wall time, e.g. 02:00:00 or 1-00:00:00.")
    gpus: Annotated[int, Field(ge=0)] | None = Field(default=None, description="GPUs per task.")
    cpus: PositiveInt | None = Field(default=None, description="CPU cores per task.")
    mem: str | None = Field(default=None, description="Memory per task, e.g. 16G.")
    shards: PositiveInt | None = Field(default=None, description="Array tasks the stage is split into.")

    @field_validator("partition", "account", "mem")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _SAFE_TOKEN.match(value):
            raise ValueError(f"only letters, digits and _.,:+=@- are allowed, got {value!r}")
        return value

    @field_validator("time")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", value):
            raise ValueError(f"wall time must look like 02:00:00 or 1-00:00:00, got {value!r}")
        return value


class ResourceStages(_Model):
    """Per-stage overrides."""

    prepare: StageResources | None = Field(default=None, description="Resources of the prepare stage.")
    train: StageResources | None = Field(default=None, description="Resources of the train stage.")
    skill: StageResources | None = Field(default=None, description="Resources of the skill stage.")
    model_climate: StageResources | None = Field(
        default=None, description="Resources of the model_climate stage."
    )
    forecast: StageResources | None = Field(default=None, description="Resources of the forecast stage.")
    score: StageResources | None = Field(default=None, description="Resources of the score stage.")
    report: StageResources | None = Field(default=None, description="Resources of the report stage.")


class Resources(StageResources):
    """Batch resources: defaults for every stage, overridden per stage under ``stages``."""

    time: str | None = Field(default="01:00:00", description="Wall time, e.g. 02:00:00 or 1-00:00:00.")
    gpus: Annotated[int, Field(ge=0)] | None = Field(default=0, description="GPUs per task.")
    cpus: PositiveInt | None = Field(default=2, description="CPU cores per task.")
    mem: str | None = Field(default="8G", description="Memory per task, e.g. 16G.")
    shards: PositiveInt | None = Field(default=1, description="Array tasks per shardable stage.")
    stages: ResourceStages = Field(
        default_factory=lambda: ResourceStages(), description="Per-stage overrides."
    )

    def for_stage(self, stage: str) -> StageResources:
        """Resources of ``stage``: its overrides on top of the defaults (shards are 1 if not shardable)."""
        own = getattr(self.stages, stage, None)
        merged = {k: getattr(self, k) for k in StageResources.model_fields}
        if own is not None:
            merged.update({k: v for k, v in own.model_dump().items() if v is not None})
        if stage not in SHARDABLE_STAGES:
            merged["shards"] = 1
        return StageResources(**merged)


class Workflow(_Model):
    """A wxens workflow: data, optional training, skill, forecast, scores, report and resources."""

    name: str = Field(
        default="wxens", min_length=1, max_length=200, description="Run name; prefix of batch job names."
    )
    run_dir: str | None = Field(
        default=None, description="Run directory (relative to the working directory); null = runs/<name>."
    )
    seed: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Root seed; every random draw derives from it."
    )
    data: DataSection = Field(default_factory=lambda: DataSection(), description="Analyses and year split.")
    train: TrainSection | None = Field(
        default=None, description="Optional training stage; omit to use checkpoints."
    )
    skill: SkillSection = Field(
        default_factory=lambda: SkillSection(), description="Skill / perturbation calibration."
    )
    model_climate: ModelClimateSection | None = Field(
        default=None, description="Optional model-climate stage."
    )
    forecast: ForecastSection = Field(description="The ensemble forecast.")
    score: ScoreSection = Field(default_factory=lambda: ScoreSection(), description="Scoring.")
    report: ReportSection = Field(default_factory=lambda: ReportSection(), description="The HTML report.")
    resources: Resources = Field(default_factory=lambda: Resources(), description="Batch resources (SLURM).")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters or newlines")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Workflow:
        if "train" in self.forecast.checkpoints and self.train is None:
            raise ValueError("forecast.checkpoints uses 'train' but there is no train section")
        for stage in STAGE_ORDER:
            own = getattr(self.resources.stages, stage)
            if own is not None and own.shards not in (None, 1) and stage not in SHARDABLE_STAGES:
                raise ValueError(
                    f"resources.stages.{stage}.shards: stage {stage!r} cannot be split into shards "
                    f"(shardable: {', '.join(sorted(SHARDABLE_STAGES))})"
                )
        return self

    # ------------------------------------------------------------------------------------------
    def resolved_run_dir(self, base: Path | None = None) -> Path:
        """Absolute run directory (``run_dir`` or ``runs/<name>``, relative to ``base`` or the cwd)."""
        path = Path(self.run_dir) if self.run_dir else Path("runs") / self.name
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return path.resolve()

    def enabled_stages(self) -> list[str]:
        """Stages this workflow runs, in order."""
        out = []
        for stage in STAGE_ORDER:
            if stage == "train" and self.train is None:
                continue
            if stage == "model_climate" and self.model_climate is None:
                continue
            if stage == "score" and not self.score.enabled:
                continue
            if stage == "report" and (not self.report.enabled or not self.score.enabled):
                continue
            out.append(stage)
        return out

    def perturbation_seed(self) -> int:
        """Seed of the forecast perturbations."""
        return self.forecast.seed if self.forecast.seed is not None else self.seed


# --------------------------------------------------------------------------------------------------
# loading and error messages
# --------------------------------------------------------------------------------------------------
def _unwrap(annotation: Any) -> list[type[BaseModel]]:
    """Model classes reachable from an annotation (through Optional, list, dict, Annotated)."""
    out: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is None:
        return out
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _unwrap(args[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        for arg in args:
            out.extend(_unwrap(arg))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields live at YAML path ``loc`` (None if it is not a model)."""
    cls: type[BaseModel] = Workflow
    for part in loc:
        if isinstance(part, int) or part not in cls.model_fields:
            continue
        candidates = _unwrap(cls.model_fields[part].annotation)
        if not candidates:
            return None
        cls = candidates[0]
    return cls


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue  # pydantic's internal tags of unions/validators
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _error_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # unknown keys first: the likeliest cause of everything else
    errors.sort(key=lambda e: e["type"] not in ("invalid_key", "extra_forbidden"))
    err = errors[0]
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key":
        parent = _format_loc(loc[:-1])
        where = "" if parent == "(top level)" else f"{parent}: "
        return f"{where}key {_short(loc[-1])} is not a string"
    path = _format_loc(loc)
    if not loc:  # a whole-workflow check states its own path
        path = ""
    if err["type"] == "extra_forbidden":
        cls = _model_at(loc[:-1])
        names = list(cls.model_fields) if cls is not None else []
        key = str(loc[-1])
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else (f"; expected one of: {', '.join(names)}" if names else "")
        )
        return f"{path}: unknown key{hint}"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    msg = msg[:1].lower() + msg[1:]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if err["type"] in ("missing",):
        return f"{path}: required key is missing{more}"
    head = f"{path}: " if path else ""
    if (
        "input" in err
        and err["type"] not in ("value_error", "assertion_error")
        and not isinstance(err["input"], dict)
    ):
        return f"{head}{msg}, got {_short(err['input'])}{more}"
    return f"{head}{msg}{more}"


def parse_workflow(data: Any, *, source: str = "workflow") -> Workflow:
    """Validate a mapping into a :class:`Workflow`; any problem becomes one :class:`UserError` line."""
    if data is None:
        raise UserError(f"{source}: the workflow is empty")
    if not isinstance(data, dict):
        raise UserError(f"{source}: a workflow must be a mapping of sections, got {type(data).__name__}")
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_error_line(exc)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # pragma: no cover - defensive
        raise UserError(f"{source}: invalid workflow ({exc})") from None


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that keeps dates as strings (the schema parses and checks them)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_workflow_text(text: str, *, source: str = "workflow") -> Workflow:
    """Safe-load YAML text (dates kept as strings) and validate it."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{source}: not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise UserError(f"{source}: not valid YAML: {exc}") from None
    return parse_workflow(data, source=source)


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"workflow file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read workflow {p}: {exc}") from None
    return load_workflow_text(text, source=str(p))


def dump_workflow(workflow: Workflow) -> str:
    """The workflow with every default filled in, as YAML (the run directory's config snapshot)."""
    return yaml.safe_dump(workflow.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------------
# --explain / docs
# --------------------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        suffix = " | null" if type(None) in args else ""
        return " | ".join(names) + suffix
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"map[{_type_name(args[0])}, {_type_name(args[1])}]" if args else "map"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


_NO_DEFAULT = object()


def _default_value(field: Any) -> Any:
    if field.is_required():
        return _NO_DEFAULT
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _default_text(field: Any, value: Any = _NO_DEFAULT) -> str:
    if value is _NO_DEFAULT:
        value = _default_value(field)
    if value is _NO_DEFAULT:
        return "required"
    if isinstance(value, BaseModel):
        return "-"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def explain_rows(
    cls: type[BaseModel] = Workflow, prefix: str = "", parent: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """Rows ``(path, type, default, description)`` for every field, depth first.

    Defaults inside a section come from the section's own default when it has one.
    """
    rows: list[tuple[str, str, str, str]] = []
    for name, field in cls.model_fields.items():
        path = f"{prefix}{name}"
        models = _unwrap(field.annotation)
        value = getattr(parent, name) if parent is not None else _default_value(field)
        rows.append(
            (path, _type_name(field.annotation), _default_text(field, value), field.description or "")
        )
        if models and models[0] is not cls:
            inner = value if isinstance(value, BaseModel) else None
            rows.extend(explain_rows(models[0], prefix=path + ".", parent=inner))
    return rows


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def explain(markdown: bool = False) -> str:
    """Reference of every workflow key with its type, default and meaning."""
    rows = explain_rows()
    if markdown:
        lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for path, typ, default, desc in rows:
            cells = [f"`{path}`", _md(typ), f"`{default}`" if default != "-" else "", _md(desc)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    width = max(len(r[0]) for r in rows)
    lines = []
    for path, typ, default, desc in rows:
        lines.append(f"{path:<{width}}  {typ} = {default}\n{'':<{width}}  {desc}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(explain(markdown="--markdown" in sys.argv))
