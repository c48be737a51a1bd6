"""Training SFNO checkpoints: deterministic given the seed, resumable, one checkpoint per seed.

Loss: latitude-weighted MSE in normalised units,

``L = mean_{b,c,i,j} w_i ((x_hat - x) / sigma_d,c)^2``

with area weights ``w_i`` (mean 1, :func:`data_catalog.grid.area_weights`) and ``sigma_d`` the per-channel
standard deviation of the 6-h tendency; with ``rollout_steps = K > 1`` the last ``rollout_iters``
iterations unroll ``K`` steps and average the loss over them (multi-step fine-tuning, as in
Keisler 2022 / Lam et al. 2023); several lengths are cycled through, one per iteration. AdamW with linear warm-up and cosine decay; gradient-norm clipping.

``loss="crps"`` trains a member generator instead: the model gets ``noise_channels`` noise inputs
(``noise:K:L`` feature, fresh at every step), each training window is rolled out as
``ensemble_members`` members with independent noise, and the loss is the area-weighted fair CRPS
(Ferro 2014) of those members in the same normalised units, ``mean|x_i - y| - sum_{i<j}|x_i - x_j| /
(M (M - 1))``, per point (:func:`fair_crps_loss`; the scoring rule the ensemble is judged by, as in
AIFS-CRPS, Lang et al. 2024). Fine-tuned from a deterministic checkpoint (``init_from``), the noise
columns of the encoder start at zero, so training starts from that model.

Resumability: every ``save_every`` iterations the full training state (weights, optimiser, the batch
generator's RNG state, elapsed time) goes atomically to ``<out>/train_state.pt`` (tensors and plain
types only, read back with ``torch.load(weights_only=True)``); a restart with the same configuration
continues from there and produces the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import xarray as xr

from data_catalog.errors import UserError
from data_catalog.grid import area_weights
from models.checkpoint import METADATA, code_version, save_checkpoint
from models.data import (
    DEFAULT_TRAIN_YEARS,
    DEFAULT_VALID_YEARS,
    Block,
    channels_of,
    dataset_id,
    load_years,
    monthly_climatology,
    open_dataset,
    static_fields,
    statistics,
    time_step_of,
)
from models.sfno import internal_shape
from models.skill import skill_table
from models.wrapper import build_model, feature_channels

log = logging.getLogger(__name__)

STATE = "train_state.pt"


@dataclass
class TrainConfig:
    """Everything that determines a trained checkpoint (recorded in its metadata)."""

    dataset: str = "builtin:sphere-swe"
    seed: int = 0
    embed_dim: int = 32
    num_layers: int = 4
    scale_factor: float = 1.0
    lmax: int | None = None  # default: min(internal nlat, ceil(3 nlat / 4))
    mmax: int | None = None  # default: lmax
    mlp_ratio: float = 2.0
    features: tuple[str, ...] = ("doy", "sinlat", "static:orography")
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    grad_clip: float = 1.0
    rollout_steps: int | tuple[int, ...] = 1  # several: cycled through, one length per iteration
    rollout_iters: int = 0
    train_years: tuple[int, int] = DEFAULT_TRAIN_YEARS
    valid_years: tuple[int, int] = DEFAULT_VALID_YEARS
    channels: tuple[str, ...] | None = None
    save_every: int = 100
    skill_inits: int = 8
    skill_lead_steps: int = 40
    threads: int | None = None
    device: str = "cpu"  # "cuda" trains on the GPU (same seed: same start, not bitwise the CPU's weights)
    spectral_loss: float = 0.0  # weight of the degree-normalised spectral error term (0: off)
    spectral_loss_kind: str = "error"  # "error": power of the error; "amse": amplitude + coherence;
    # "amplitude": amplitude only (no phase: rewards keeping each degree's power, not the mean)
    mse_steps: int | None = None  # rollouts: grid MSE over the first N steps only (None: every step)
    loss: str = "mse"  # "mse" (deterministic) or "crps" (fair CRPS of ensemble_members noise-driven members)
    ensemble_members: int = 2  # members per training window with loss="crps"
    noise_channels: int = 0  # stochastic noise inputs (the noise:K:L feature); required by loss="crps"
    noise_lmax: int | None = None  # band limit of the noise (degrees < L); default: the network's lmax
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (same architecture)
    init_from_sha256: str | None = None  # filled in by train(): the weights the run started from

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a training state to be resumed."""
        d = self.to_dict()
        for k in ("save_every", "threads", "skill_inits", "skill_lead_steps", "init_from", "device"):
            d.pop(k)
        return d


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    path: Path
    seconds: float
    final_loss: float
    resumed_from: int = 0
    skipped: bool = False
    losses: list[float] = field(default_factory=list)


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"0,3,5"``, ``"0-3,8"`` -> sorted unique seeds."""
    seeds: set[int] = set()
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            else:
                seeds.add(int(part))
    except ValueError:
        raise UserError(f"bad seed list '{text}': use e.g. 0-7 or 0,3,5") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"bad seed list '{text}': seeds are non-negative integers")
    return sorted(seeds)


def _start_from(cfg: TrainConfig, model: Any, channels: Sequence[str]) -> TrainConfig:
    """Load ``cfg.init_from``'s weights into ``model`` (fine-tuning); returns ``cfg`` with their sha256.

    The source must have the same architecture, channels and inputs; its own normalisation is replaced
    by this run's (same dataset, so the same numbers unless the training years differ). A deterministic
    source may start a stochastic run (``noise_channels``): its encoder gets zero columns for the noise
    inputs, so the new model starts as the source.
    """
    from models.checkpoint import load_checkpoint

    assert cfg.init_from is not None  # the caller only fine-tunes when init_from is set
    src = load_checkpoint(cfg.init_from, spectral_filter=False)  # the weights only
    if tuple(src.channels) != tuple(channels):
        raise UserError(f"--init-from {cfg.init_from}: channels {list(src.channels)} != {list(channels)}")
    extra = model.noise_channels - src.noise_channels
    src_cfg = {**src.net.config.to_dict(), "in_chans": src.net.config.in_chans + extra}
    plain = [f for f in model.features if not f.startswith("noise:")]
    if (
        src_cfg != model.net.config.to_dict()
        or [f for f in src.features if not f.startswith("noise:")] != plain
        or extra < 0
        or (src.noise_channels and extra)
    ):
        raise UserError(f"--init-from {cfg.init_from}: architecture differs from this run's")
    sd = src.net.state_dict()
    if extra:
        enc = "encoder.weight"
        w = sd[enc]
        sd[enc] = torch.cat([w, torch.zeros((w.shape[0], extra, *w.shape[2:]), dtype=w.dtype)], dim=1)
    try:
        model.net.load_state_dict(sd)
    except (RuntimeError, KeyError) as e:
        raise UserError(f"--init-from {cfg.init_from}: weights do not fit this architecture ({e})") from None
    return dataclasses.replace(cfg, init_from_sha256=src.metadata["weights_sha256"])


def rollout_lengths(cfg: TrainConfig) -> tuple[int, ...]:
    """The rollout lengths of ``cfg`` (one, or several cycled through: ``--rollout-steps 20,120``
    alternates 5-day and 30-day windows, e.g. so that a member generator trained on short windows
    also sees the long rollouts it must stay stable over)."""
    v = cfg.rollout_steps
    out = tuple(int(x) for x in v) if isinstance(v, list | tuple) else (int(v),)
    if not out or min(out) < 1:
        raise UserError(f"--rollout-steps must be positive integers, not {v}")
    return out


def fair_crps_loss(members: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted mean of the fair CRPS of ``members (M, B, C, lat, lon)`` against ``truth (B, C, lat,
    lon)``: per point ``mean_i |x_i - y| - sum_{i<j} |x_i - x_j| / (M (M - 1))`` (Ferro 2014; unbiased
    for the CRPS of the distribution the members are drawn from), then ``mean(crps * weights)``."""
    m = members.shape[0]
    if m < 2:
        raise ValueError("the fair CRPS needs at least 2 members")
    skill = (members - truth[None]).abs().mean(dim=0)
    pairs = sum((members[i] - members[j]).abs() for i in range(m) for j in range(i + 1, m))
    return ((skill - pairs / (m * (m - 1))) * weights).mean()


def features_of(cfg: TrainConfig, lmax: int) -> tuple[str, ...]:
    """The model's input features: ``cfg.features`` plus ``noise:K:L`` for a stochastic model."""
    if not cfg.noise_channels:
        return tuple(cfg.features)
    return (*cfg.features, f"noise:{cfg.noise_channels}:{cfg.noise_lmax or lmax}")


class SpectralLoss:
    """Degree-normalised spectral error: mean over channels and degrees of ``E_l(err) / E_l(truth)``.

    ``E_l`` is the angular power at degree ``l`` (``|c_l0|^2 + 2 sum_m |c_lm|^2``) of the forward SHT at
    the data latitudes; the reference ``E_l(truth)`` is the mean power of ``n_ref`` training fields.
    Degree 0 and degrees where the truth has no power (below 1e-6 of its peak) are not counted.
    Unlike the grid MSE, which hardly sees errors at degrees where the truth has little power (small
    scales of a smooth field such as z500), every degree counts equally here, so errors cannot pile up
    at small scales unnoticed over long rollouts. A forecast of zeros scores about 1.
    """

    def __init__(self, data: torch.Tensor, latitude: np.ndarray, lmax: int, n_ref: int = 256) -> None:
        from models.sht import GridRealSHT

        self.sht = GridRealSHT(latitude, data.shape[-1], lmax, lmax).float().to(data.device)
        idx = torch.linspace(0, data.shape[0] - 1, min(n_ref, data.shape[0])).long()
        with torch.no_grad():
            ref = self.power(data[idx].float()).mean(dim=0)  # (C, L)
        # degrees counted: l >= 1 (the global mean is a constant of the data, exactly 0 for vorticity)
        # where the truth has power (above the data's own truncation it has ~none: nothing to compare)
        peak = ref[:, 1:].max(dim=1, keepdim=True).values
        self.mask = (torch.arange(ref.shape[1], device=ref.device) >= 1)[None, :] & (ref > 1e-6 * peak)
        self.ref = torch.where(self.mask, ref, torch.ones_like(ref))

    def power(self, x: torch.Tensor) -> torch.Tensor:
        c = self.sht(x).abs() ** 2
        return c[..., 0] + 2 * c[..., 1:].sum(dim=-1)

    def __call__(self, err: torch.Tensor) -> torch.Tensor:
        r = self.power(err) / self.ref
        return r[..., self.mask].mean()

    def term(self, kind: str, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """The loss term named by ``--spectral-loss-kind`` (one of :data:`SPECTRAL_KINDS`)."""
        if kind == "amse":
            return self.amse(pred, truth)
        if kind == "amplitude":
            return self.amplitude(pred, truth)
        return self(pred - truth)

    def amplitude(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Amplitude part of :meth:`amse` alone, ``(sqrt(P_f) - sqrt(P_t))^2`` per degree, degree-normalised.

        Blind to phase: with the grid MSE limited to the first steps of a rollout (``mse_steps``) it asks
        later steps for weather with the truth's power at every degree, not for the smooth mean.
        """
        pf, pt = self.power(pred), self.power(truth)
        eps = 1e-12 * self.ref
        r = ((pf + eps).sqrt() - (pt + eps).sqrt()) ** 2 / self.ref
        return r[..., self.mask].mean()

    def amse(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Amplitude-and-coherence form per degree (Subich et al. 2025), degree-normalised like ``__call__``.

        ``(sqrt(P_f) - sqrt(P_t))^2 + 2 max(P_f, P_t) (1 - coh)`` with ``P`` the degree power of forecast
        and truth and ``coh`` their spectral coherence at that degree: a blurred forecast is charged for
        its missing amplitude, not rewarded for it as by the plain error, so long rollouts keep their
        energy. Equals the error form when the amplitudes agree.
        """
        cf, ct = self.sht(pred), self.sht(truth)

        def deg(z: torch.Tensor) -> torch.Tensor:
            return z[..., 0] + 2 * z[..., 1:].sum(dim=-1)

        pf, pt = deg(cf.abs() ** 2), deg(ct.abs() ** 2)
        cross = deg((cf * ct.conj()).real)
        eps = 1e-12 * self.ref
        sf, st = (pf + eps).sqrt(), (pt + eps).sqrt()
        coh = cross / (sf * st)
        r = ((sf - st) ** 2 + 2 * torch.maximum(pf, pt) * (1 - coh)) / self.ref
        return r[..., self.mask].mean()


SPECTRAL_KINDS = ("error", "amse", "amplitude")


def _lr_at(cfg: TrainConfig, it: int) -> float:
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    frac = (it - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def _weighted_mse(err: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (err.square() * w).mean()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot resume: {path} is unreadable ({type(exc).__name__}); delete it to start over"
        ) from None


def prepare(cfg: TrainConfig, dataset: str | xr.Dataset | None = None) -> dict[str, Any]:
    """Load the training and validation years into memory and compute statistics."""
    ds = open_dataset(dataset if dataset is not None else cfg.dataset)
    channels = list(cfg.channels) if cfg.channels else channels_of(ds)
    missing = [c for c in channels if c not in ds.data_vars]
    if missing:
        raise UserError(f"dataset lacks channels {missing}")
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    # tuple() (kept: it accepts a list-valued field) erases the (first, last) length for the type checker
    train = load_years(ds, channels, cast(tuple[int, int], tuple(cfg.train_years)))
    valid = load_years(ds, channels, cast(tuple[int, int], tuple(cfg.valid_years)))
    step = time_step_of(train.times)
    if step != np.timedelta64(6, "h"):
        raise UserError(f"dataset time step is {step.astype('timedelta64[h]')}, the SFNO wrapper needs 6 h")
    stats = statistics(train, area_weights(lat))
    static = static_fields(
        ds, [f.removeprefix("static:") for f in cfg.features if f.startswith("static:")], lat
    )
    return {
        "dataset_attrs": {
            k: str(ds.attrs[k]) for k in ("world_version", "world_hash", "source") if k in ds.attrs
        },
        "static": static,
        "dataset_id": dataset_id(dataset if dataset is not None else cfg.dataset),
        "channels": channels,
        "latitude": lat,
        "longitude": lon,
        "train": train,
        "valid": valid,
        "stats": stats,
        "climatology": monthly_climatology(train),
    }


def architecture(cfg: TrainConfig, n_channels: int, nlat: int) -> dict[str, Any]:
    """The SFNO hyperparameters for ``cfg`` on a grid with ``nlat`` rows (lmax/mmax made explicit)."""
    h, _ = internal_shape(nlat, cfg.scale_factor)
    lmax = cfg.lmax or min(h, -(-3 * nlat // 4))
    mmax = cfg.mmax or lmax
    n_feat = feature_channels(features_of(cfg, lmax))
    return {
        "in_chans": n_channels + n_feat,
        "out_chans": n_channels,
        "embed_dim": cfg.embed_dim,
        "num_layers": cfg.num_layers,
        "scale_factor": cfg.scale_factor,
        "lmax": lmax,
        "mmax": mmax,
        "mlp_ratio": cfg.mlp_ratio,
        "internal_grid": "legendre-gauss",
    }


def train(
    cfg: TrainConfig,
    out: str | Path,
    dataset: str | xr.Dataset | None = None,
    prepared: dict[str, Any] | None = None,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one checkpoint into ``out`` (resuming a training state found there).

    Parameters
    ----------
    cfg
        Training configuration (the seed draws the initial weights and the batch order).
    out
        Checkpoint directory; holds ``train_state.pt`` while training.
    dataset
        Overrides ``cfg.dataset`` with an in-memory canonical Dataset (tests, notebooks).
    prepared
        Output of :func:`prepare` to share loaded data between seeds.
    callback
        Called as ``callback(iteration, loss)`` after each iteration (tests interrupt through it).
    """
    out = Path(out)
    if (out / METADATA).is_file() and not (out / STATE).is_file():
        log.info("%s already holds a finished checkpoint; skipping", out)
        return TrainResult(out, 0.0, float("nan"), skipped=True)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.spectral_loss_kind not in SPECTRAL_KINDS:
        raise UserError(
            f"--spectral-loss-kind must be one of {', '.join(SPECTRAL_KINDS)}, not '{cfg.spectral_loss_kind}'"
        )
    if cfg.mse_steps is not None and cfg.mse_steps < 1:
        raise UserError(f"--mse-steps must be >= 1, not {cfg.mse_steps}")
    lengths = rollout_lengths(cfg)
    if cfg.rollout_iters and min(lengths) < 2:
        raise UserError("--rollout-iters needs --rollout-steps >= 2")
    if cfg.rollout_iters > cfg.steps:
        raise UserError("--rollout-iters cannot exceed --steps")
    if cfg.loss not in ("mse", "crps"):
        raise UserError(f"--loss must be mse or crps, not '{cfg.loss}'")
    if cfg.noise_channels < 0 or (cfg.noise_lmax is not None and cfg.noise_lmax < 1):
        raise UserError("--noise-channels must be >= 0 and --noise-lmax >= 1")
    if cfg.loss == "crps" and (cfg.noise_channels < 1 or cfg.ensemble_members < 2):
        raise UserError("--loss crps needs --noise-channels >= 1 and --ensemble-members >= 2")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    p = prepared if prepared is not None else prepare(cfg, dataset)
    if p["valid"].window_starts(cfg.skill_lead_steps).size == 0:  # checked before, not after, training
        raise UserError(
            f"the validation years {cfg.valid_years[0]}-{cfg.valid_years[1]} hold no {cfg.skill_lead_steps}-step "
            "window inside one trajectory for the skill file; choose --valid-years with more data"
        )
    train_b: Block = p["train"]
    channels, lat, lon = p["channels"], p["latitude"], p["longitude"]
    arch = architecture(cfg, len(channels), lat.size)

    init_gen = torch.Generator().manual_seed(int(cfg.seed))
    batch_gen = torch.Generator().manual_seed(int(cfg.seed) + 1_000_003)
    noise_gen = torch.Generator().manual_seed(int(cfg.seed) + 2_000_003)
    model = build_model(
        arch,
        channels,
        lat,
        lon,
        p["stats"],
        features_of(cfg, arch["lmax"]),
        static_fields=p["static"],
        generator=init_gen,
    )
    if cfg.init_from:
        cfg = _start_from(cfg, model, channels)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    model.to(device)  # weights drawn on the CPU first: the same start on any device
    net = model.net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, elapsed, losses = 0, 0.0, []
    state_path = out / STATE
    if state_path.is_file():
        st = _load_state(state_path)  # tensors on the CPU; load_state_dict moves them to the device
        if json.loads(st["config"]) != cfg.identity():
            raise UserError(f"{out} holds a training state for a different configuration; use another --out")
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        batch_gen.set_state(st["rng"])
        if "noise_rng" in st:
            noise_gen.set_state(st["noise_rng"])
        start, elapsed = int(st["iteration"]), float(st["elapsed"])
        losses = [float(v) for v in st["losses"].tolist()]
        log.info("resuming %s at iteration %d/%d", out, start, cfg.steps)

    w = torch.as_tensor(area_weights(lat), dtype=torch.float32, device=device).view(1, 1, -1, 1)
    tstd = model._tstd
    data, times = train_b.data.to(device), train_b.times
    windows = {k: train_b.window_starts(k) for k in {1, *lengths}}
    spec_loss = SpectralLoss(data, lat, arch["lmax"]) if cfg.spectral_loss > 0 else None
    t0 = time.perf_counter()
    net.train()

    def save(it: int) -> None:
        _save_state(
            state_path,
            {
                "config": json.dumps(cfg.identity()),
                "iteration": it,
                "net": net.state_dict(),
                "opt": opt.state_dict(),
                "rng": batch_gen.get_state(),
                "noise_rng": noise_gen.get_state(),
                "elapsed": elapsed + time.perf_counter() - t0,
                "losses": torch.tensor(losses, dtype=torch.float64),
            },
        )

    bar = _progress(progress)
    with bar:
        task = bar.add_task(f"train seed {cfg.seed}", total=cfg.steps, completed=start, loss=float("nan"))
        for it in range(start, cfg.steps):
            first = cfg.steps - cfg.rollout_iters
            k = lengths[(it - first) % len(lengths)] if it >= first else 1
            starts = windows[k]
            idx = torch.from_numpy(starts)[
                torch.randint(0, starts.size, (cfg.batch_size,), generator=batch_gen)
            ]
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, it)
            crps = cfg.loss == "crps"
            n_ens = cfg.ensemble_members if crps else 1
            x = data[idx].repeat(n_ens, 1, 1, 1)  # member-major: member i is rows i*B ... (i+1)*B - 1
            n_mse = min(k, cfg.mse_steps or k)
            loss = torch.zeros(())
            for j in range(k):
                tj = list(times[(idx + j).numpy()]) * n_ens
                noise = model.draw_noise([noise_gen] * x.shape[0]) if model.noise_channels else None
                x = model.forward(x, tj, noise)
                y = data[idx + j + 1]
                if crps:
                    ens = (x / tstd).view(n_ens, len(idx), *x.shape[1:])
                    loss = loss + fair_crps_loss(ens, y / tstd, w) / k
                elif j < n_mse:
                    loss = loss + _weighted_mse((x - y) / tstd, w) / n_mse
                if spec_loss is not None:
                    sl = spec_loss.term(cfg.spectral_loss_kind, x, y.repeat(n_ens, 1, 1, 1))
                    loss = loss + cfg.spectral_loss * sl / k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise UserError(f"training diverged at iteration {it} (loss {lv}); lower --lr")
            losses.append(lv)
            bar.update(task, advance=1, loss=lv)
            if (it + 1) % cfg.save_every == 0 and it + 1 < cfg.steps:
                save(it + 1)
            if callback is not None:
                callback(it, lv)
    seconds = elapsed + time.perf_counter() - t0
    net.eval()
    model.to("cpu")  # skill file and checkpoint from the CPU

    model.metadata = {
        "seed": int(cfg.seed),
        "dataset": {
            "id": p["dataset_id"],
            **p.get("dataset_attrs", {}),
            "train_years": list(cfg.train_years),
            "valid_years": list(cfg.valid_years),
            "train_time_range": [
                str(np.datetime64(train_b.times[0], "s")),
                str(np.datetime64(train_b.times[-1], "s")),
            ],
        },
        "training": {
            **cfg.to_dict(),
            "seconds": round(seconds, 3),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "threads": torch.get_num_threads(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "loss_definition": (
                f"area-weighted fair CRPS of {cfg.ensemble_members} noise-driven members, in units of tendency_std"
                if cfg.loss == "crps"
                else "area-weighted MSE of (prediction - truth) / tendency_std"
            ),
        },
        "code_version": code_version(),
        "torch_version": torch.__version__,
    }
    skill = skill_table(
        model, p["valid"], p["climatology"], n_inits=cfg.skill_inits, lead_steps=cfg.skill_lead_steps
    )
    skill["years"] = list(cfg.valid_years)
    save_checkpoint(model, out, skill=skill)
    state_path.unlink(missing_ok=True)
    final = model.metadata["training"]["final_loss"]
    log.info("trained %s in %.0f s (final loss %s)", out, seconds, "-" if final is None else f"{final:.4g}")
    return TrainResult(
        out, seconds, losses[-1] if losses else float("nan"), resumed_from=start, losses=losses
    )


def train_many(
    cfg: TrainConfig,
    seeds: list[int],
    out: str | Path,
    dataset: str | xr.Dataset | None = None,
    progress: bool = True,
    processes: int = 1,
) -> list[TrainResult]:
    """Train one independent checkpoint per seed into ``<out>/seed-<S>``.

    ``cfg.init_from`` may hold ``{seed}`` (``s1/seed-{seed}``): each seed then fine-tunes its own
    checkpoint. With ``processes = 1`` the seeds train one after the other in this process (data loaded
    once). With ``processes = N > 1`` up to N seeds train side by side, each in its own process with its
    own copy of the data (fresh interpreters: CUDA cannot be forked), with ``cfg.threads`` or else
    (cores / N) torch threads each; a small model leaves a GPU mostly idle, so N of them run about as
    fast as one (docs/models.md, "GPU-trained qg3 emulators"). The weights do not depend on N: a seed's
    run is the same computation either way (tested bitwise on the CPU with equal thread counts).
    """
    if processes < 1:
        raise UserError(f"--processes must be >= 1, not {processes}")
    cfgs = [dataclasses.replace(cfg, seed=s, init_from=_init_for(cfg.init_from, s)) for s in seeds]
    outs = [Path(out) / f"seed-{s}" for s in seeds]
    if processes == 1 or len(seeds) == 1:
        prepared = prepare(cfg, dataset)
        return [train(c, o, prepared=prepared, progress=progress) for c, o in zip(cfgs, outs, strict=True)]
    if dataset is not None and not isinstance(dataset, str):
        raise UserError("training in several processes needs a dataset id or path, not an in-memory Dataset")
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = min(processes, len(seeds))
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
    cfgs = [dataclasses.replace(c, threads=threads) for c in cfgs]
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, c, o, dataset) for c, o in zip(cfgs, outs, strict=True)]
        results = []
        for f in futures:
            r = f.result()  # a worker's UserError comes back as itself (one line at the CLI)
            if progress:
                log.info(
                    "%s: %s", r.path, "already trained" if r.skipped else f"trained in {r.seconds:.0f} s"
                )
            results.append(r)
    return results


def _train_one(cfg: TrainConfig, out: Path, dataset: str | None) -> TrainResult:
    """One seed in a worker process of :func:`train_many`."""
    return train(cfg, out, dataset=dataset, progress=False)


def _init_for(init_from: str | None, seed: int) -> str | None:
    """``--init-from`` for one seed: ``{seed}`` replaced by it (other text unchanged)."""
    return None if init_from is None else init_from.replace("{seed}", str(seed))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
