"""The forecast configuration (pydantic, ``extra='forbid'``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_catalog.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InitRange(_Strict):
    """Init times ``start, start + every, ... <= stop``."""

    start: str
    stop: str
    every_hours: int = Field(24, ge=1)


#: perturbation fields added after runs existed, with the value that leaves the output as before; at
#: that value they are left out of :meth:`ForecastConfig.identity`, so those runs still resume
ADDED_LATER: dict[str, Any] = {"stochastic_schedule": None, "noise_fraction": 0.0}


class PerturbationConfig(_Strict):
    """Initial-condition perturbation.

    ``amplitude`` per channel (physical units) overrides ``alpha x`` the checkpoint's 48 h RMSE.
    ``stochastic`` > 0 adds stochastic forcing during the rollout (model error, e.g. processes the
    model cannot see): after every step each member gets an independent spherical random field of
    correlation length ``stochastic_length_km`` per channel with RMS ``stochastic x`` the checkpoint's
    6 h RMSE, drawn from the member's own generator (members stay reproducible alone). A mapping
    ``{channel: factor}`` sets the factor per channel (channels not named are not forced), since
    channels lose spread at different rates in a model. ``stochastic_ramp_hours`` > 0 lets the forcing
    grow linearly from nothing at the init to full strength at that lead (error grows faster than a
    random walk at first; constant forcing over-spreads the first day); a mapping ``{channel: hours}``
    ramps channels differently (channels not named: no ramp). ``stochastic_schedule`` multiplies the
    strength by a piecewise-linear function of lead, ``[[hours, strength], ...]`` (constant before the
    first and after the last point), e.g. ``[[0, 1], [120, 1], [240, 0.5]]`` to taper it off; a mapping
    ``{channel: points}`` gives channels their own schedules (channels not named: constant).
    ``seed_channel``: the channel the breeding seed perturbs, or a list of channels that each get an
    independent seed field (e.g. the geopotential at every level).
    ``noise_fraction`` (bred vectors only) mixes a spherical random field on every channel into the
    bred vector: ``R(sqrt(1 - f) d + sqrt(f) n)`` with both parts at the target norms, ``R`` the final
    rescaling to the target (0: pure bred vectors, as HENS; 1: hemispherically scaled noise).
    """

    method: Literal["bred", "spherical", "gaussian", "none"] = "bred"
    n_pairs: int = Field(4, ge=1)
    alpha: float = Field(0.35, gt=0)
    cycles: int = Field(3, ge=1)
    noise_fraction: float = Field(0.0, ge=0, le=1)
    seed_channel: str | list[str] = "z500"
    boundary: float = Field(20.0, ge=0, lt=90)
    length_scale_km: float = Field(500.0, gt=0)
    amplitude: dict[str, float] | None = None
    nonnegative: list[str] = Field(default_factory=list)
    stochastic: Annotated[float, Field(ge=0)] | dict[str, Annotated[float, Field(ge=0)]] = 0.0
    stochastic_length_km: float = Field(1000.0, gt=0)
    stochastic_ramp_hours: Annotated[float, Field(ge=0)] | dict[str, Annotated[float, Field(ge=0)]] = 0.0
    stochastic_schedule: list[tuple[float, float]] | dict[str, list[tuple[float, float]]] | None = None

    @model_validator(mode="after")
    def _schedule(self) -> PerturbationConfig:
        if isinstance(self.seed_channel, list) and (
            not self.seed_channel or len(set(self.seed_channel)) != len(self.seed_channel)
        ):
            raise ValueError("seed_channel needs one or more distinct channels")
        if self.noise_fraction > 0 and self.method != "bred":
            raise ValueError("noise_fraction mixes noise into bred vectors: it needs method 'bred'")
        sch = self.stochastic_schedule
        if sch is None:
            return self
        for pts in sch.values() if isinstance(sch, dict) else [sch]:
            hours = [h for h, _ in pts]
            if not pts or hours[0] < 0 or any(b <= a for a, b in zip(hours, hours[1:], strict=False)):
                raise ValueError(
                    "stochastic_schedule needs [hours, strength] points with increasing hours >= 0"
                )
            if any(not v >= 0 for _, v in pts):
                raise ValueError("stochastic_schedule strengths must be >= 0")
        return self


class OutputConfig(_Strict):
    """What the member store keeps.

    ``keep``: ``members`` (the member store), ``mean`` (only the ensemble mean, from inline scoring),
    ``none`` (only inline scores). ``variables``/``members``: subsets to keep (default all).
    ``layout``: ``wb2`` (WeatherBench2 names, a ``level`` dim for channels with pressure levels) or
    ``channels`` (one array per model channel), see :mod:`pipeline.store`. ``codec``: the chunks'
    lossless compression, ``lz4`` (Blosc LZ4 with bit shuffle), ``zstd`` or ``none``; a store keeps
    the codec it was created with (a resumed run writes with the store's).
    """

    path: str | None = None
    variables: list[str] | None = None
    members: list[int] | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    keepbits: int | None = Field(None, ge=1, le=23)
    keep: Literal["members", "mean", "none"] = "members"
    layout: Literal["wb2", "channels"] = "wb2"
    codec: Literal["lz4", "zstd", "none"] = "lz4"


class InlineConfig(_Strict):
    """Inline scoring against the verifying analysis (see docs/engine.md)."""

    enabled: bool = False
    crps: bool = True
    spectra: bool = True
    thresholds: dict[str, list[float]] = Field(default_factory=dict)
    memory_mb: float = Field(512.0, gt=0)
    #: run the reductions and the CRPS sort on the rollout's device when it is a GPU (False: NumPy on
    #: the CPU, as on a CPU run); the scores are the same to float64 rounding
    on_device: bool = True


class ForecastConfig(_Strict):
    """A forecast run. See docs/engine.md for every field."""

    analysis: str = "builtin:sphere-swe"
    init_times: list[str] | InitRange
    checkpoints: list[str] | str
    model_loader: str = "models.checkpoint:load_checkpoint"
    perturbation: PerturbationConfig = PerturbationConfig.model_validate({})  # copied per instance
    lead_steps: int = Field(..., ge=0)
    batch_size: int | Literal["auto"] = "auto"
    device: str = "cpu"
    bf16: bool = False
    output: OutputConfig = OutputConfig.model_validate({})
    inline: InlineConfig = InlineConfig.model_validate({})
    seed: int = Field(0, ge=0)
    progress: bool = True
    io_threads: int | Literal["auto"] = "auto"

    @field_validator("batch_size")
    @classmethod
    def _bs(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError("batch_size must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _keep(self) -> ForecastConfig:
        if self.output.keep != "members" and not self.inline.enabled:
            raise ValueError(f"output.keep={self.output.keep!r} needs inline.enabled (else nothing is kept)")
        return self

    def init_array(self) -> np.ndarray:
        """Init times as ``datetime64[ns]``."""
        try:
            if isinstance(self.init_times, InitRange):
                r = self.init_times
                start, stop = np.datetime64(r.start, "ns"), np.datetime64(r.stop, "ns")
                out = np.arange(start, stop + np.timedelta64(1, "ns"), np.timedelta64(r.every_hours, "h"))
            else:
                out = np.array([np.datetime64(t, "ns") for t in self.init_times])
        except (ValueError, TypeError, OverflowError) as exc:
            raise UserError(f"invalid init_times: {exc}") from None
        if out.size == 0:
            raise UserError("no init times in the config")
        if len(np.unique(out)) != out.size:
            raise UserError("duplicate init times in the config")
        return out

    def checkpoint_paths(self) -> list[str]:
        """Checkpoint paths; a single directory of checkpoint directories is expanded (sorted)."""
        if isinstance(self.checkpoints, str):
            p = Path(self.checkpoints)
            if not p.is_dir():
                raise UserError(f"checkpoint folder not found: {p}")
            subs = sorted(str(s) for s in p.iterdir() if s.is_dir())
            if not subs:
                raise UserError(f"no checkpoint directories in {p}")
            return subs
        if not self.checkpoints:
            raise UserError("no checkpoints in the config")
        return [str(c) for c in self.checkpoints]

    def identity(self) -> dict[str, Any]:
        """The fields that determine the output (everything but device, bf16 aside, progress,
        io_threads and output.codec)."""
        d = self.model_dump(mode="json")
        d.pop("progress", None)
        d.pop("device", None)
        d.pop("io_threads", None)
        d["output"].pop("codec", None)  # lossless: the same values whatever the codec
        for key, neutral in ADDED_LATER.items():  # at their neutral value: old runs keep their identity
            if d["perturbation"].get(key) == neutral:
                d["perturbation"].pop(key, None)
        return d

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def load_config(config: ForecastConfig | dict[str, Any] | str | Path) -> ForecastConfig:
    """A :class:`ForecastConfig` from a model, a dict or a YAML file; invalid input -> UserError."""
    import yaml
    from pydantic import ValidationError

    if isinstance(config, ForecastConfig):
        return config
    if isinstance(config, str | Path):
        p = Path(config)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            config = yaml.safe_load(p.read_text()) or {}
        except (
            yaml.YAMLError,
            UnicodeDecodeError,
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
        ) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
            raise UserError(f"{p}: not valid YAML{where}: {problem}") from None
        if isinstance(config, dict) and "forecast" in config and len(config) == 1:
            config = config["forecast"]
    try:
        return ForecastConfig.model_validate(config)
    except ValidationError as exc:
        errors = exc.errors()
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")  # a typo explains a missing key
        err = errors[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(err["loc"])
        raise UserError(f"invalid forecast config: {loc}: {msg}") from None


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """``; did you mean 'x'?`` for an unknown key at ``loc``, from the fields of the model there."""
    import difflib

    cls: Any = ForecastConfig
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        cls = sub
    close = difflib.get_close_matches(str(loc[-1]), list(cls.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
