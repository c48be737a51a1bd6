"""Self-describing, safe checkpoints.

A checkpoint is a directory (see docs/architecture.md)::

    weights.safetensors   network parameters (+ ``__static__`` input fields when used)
    metadata.json         architecture, channels, grid, time step, normalisation statistics,
                          dataset and time ranges, seed, code version, training time,
                          sha256 of the weights file
    skill.json            {"lead_hours": [...], "rmse": {channel: [...]}, ...} on the validation years

Loading never unpickles: weights come from safetensors, or, for foreign ``.pt``/``.tar`` state dicts,
from ``torch.load(weights_only=True)``, which refuses arbitrary objects. The weights' sha256 is checked
against the metadata before anything is read from them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_catalog.errors import UserError
from data_catalog.hashing import sha256_file
from models.wrapper import SFNOForecastModel, build_model

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
METADATA = "metadata.json"
SKILL = "skill.json"
FORMAT_VERSION = 1
_FOREIGN = ("weights.pt", "weights.tar", "weights.pth")
_STATIC_KEY = "__static__"


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree when available, else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        desc = out.stdout.strip()
        if desc:
            return f"git:{desc}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"wxens=={version('wxens')}"
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(model: SFNOForecastModel, path: str | Path, skill: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (with ``model.metadata``) as a checkpoint directory; returns the path.

    Files are written to temporaries and renamed; ``metadata.json`` (which holds the weights' hash)
    comes last, so a directory without it is never mistaken for a complete checkpoint.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    if model._static is not None:
        tensors[_STATIC_KEY] = model._static.detach().cpu().contiguous()
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "wxens-sfno"})
    os.replace(tmp, out / WEIGHTS)
    if skill is not None:
        _atomic_write_text(out / SKILL, json.dumps(skill, indent=1))
        model.skill = skill
    meta = dict(model.metadata)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "model": "sfno",
            "architecture": model.net.config.to_dict(),
            "channels": list(model.channels),
            "features": list(model.features),
            "grid": {"latitude": model.latitude.tolist(), "longitude": model.longitude.tolist()},
            "time_step_hours": model.time_step.total_seconds() / 3600.0,
            "normalisation": {
                "mean": model._mean.flatten().cpu().tolist(),
                "std": model._std.flatten().cpu().tolist(),
                "tendency_std": model._tstd.flatten().cpu().tolist(),
            },
            "weights_sha256": sha256_file(out / WEIGHTS),
        }
    )
    meta.setdefault("code_version", code_version())
    meta.setdefault("saved_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    _atomic_write_text(out / METADATA, json.dumps(meta, indent=1))
    model.metadata = meta
    return out


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"checkpoint {path.parent}: {what} missing ({path.name})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"checkpoint {path.parent}: {path.name} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path.parent}: {path.name} is not a JSON object")
    return data


def _load_foreign(path: Path) -> dict[str, torch.Tensor]:
    """A foreign ``.pt``/``.tar`` state dict via ``torch.load(weights_only=True)`` (never full unpickling)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"unsafe or unreadable checkpoint {path}: refused by torch.load(weights_only=True): {first[:200]}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model_state" in obj and isinstance(obj["model_state"], dict):
        obj = obj["model_state"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path}: not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", spectral_filter: bool = True
) -> SFNOForecastModel:
    """Load a checkpoint directory as an :class:`SFNOForecastModel` on ``device``.

    A calibrated ``spectral_filter.json`` next to the weights (:mod:`models.spectral_filter`) is applied
    after every step unless ``spectral_filter=False`` (``model.spectral_filter`` is then None).

    Raises :class:`UserError` (one line) for a missing directory or file, a truncated or altered
    weights file (sha256 mismatch), an unsafe pickle, or weights that do not fit the architecture.
    """
    p = Path(path)
    if p.is_file():  # a weights file given directly: its directory is the checkpoint
        weights_file, p = p, p.parent
    else:
        weights_file = None
    if not p.is_dir():
        raise UserError(f"checkpoint directory not found: {p}")
    meta = _read_json(p / METADATA, "metadata")
    if weights_file is None:
        candidates = [p / WEIGHTS, *(p / f for f in _FOREIGN)]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise UserError(f"checkpoint {p}: weights missing ({WEIGHTS})")
        weights_file = found[0]
    for key in ("architecture", "channels", "grid", "normalisation", "weights_sha256"):
        if key not in meta:
            raise UserError(f"checkpoint {p}: metadata.json lacks '{key}'")
    digest = sha256_file(weights_file)
    if digest != meta["weights_sha256"]:
        raise UserError(
            f"checkpoint {p}: sha256 of {weights_file.name} does not match metadata "
            f"(file truncated or altered): {digest[:12]} != {str(meta['weights_sha256'])[:12]}"
        )
    if weights_file.suffix == ".safetensors":
        try:
            tensors = load_file(str(weights_file), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"checkpoint {p}: unreadable {weights_file.name}: {exc}") from None
    else:
        tensors = _load_foreign(weights_file)
    static = tensors.pop(_STATIC_KEY, None)
    try:
        model = build_model(
            meta["architecture"],
            list(meta["channels"]),
            np.asarray(meta["grid"]["latitude"]),
            np.asarray(meta["grid"]["longitude"]),
            meta["normalisation"],
            tuple(meta.get("features", ())),
            static_fields=None if static is None else static.numpy(),
            metadata=meta,
        )
        model.net.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"checkpoint {p}: weights do not fit its architecture: {first[:200]}") from None
    model.time_step = dt.timedelta(hours=float(meta.get("time_step_hours", 6.0)))
    if (p / SKILL).is_file():
        model.skill = _read_json(p / SKILL, "skill")
    from models.spectral_filter import FILTER_FILE, SpectralFilter, read_filter

    if spectral_filter and (p / FILTER_FILE).is_file():
        gains = read_filter(p, model.channels, int(model.net.config.lmax))
        model.set_spectral_filter(SpectralFilter(model.latitude, model.longitude.size, gains))
    model.net.eval()
    return model.to(device)


def check_compatible(model: Any, ds: Any) -> None:
    """Raise a one-line :class:`UserError` unless dataset ``ds`` has the model's channels and grid."""
    missing = [c for c in model.channels if c not in ds.data_vars]
    if missing:
        raise UserError(f"dataset lacks the model's channels {missing} (model needs {list(model.channels)})")
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    mlat, mlon = np.asarray(model.latitude), np.asarray(model.longitude)
    if lat.shape != mlat.shape or lon.shape != mlon.shape:
        raise UserError(
            f"grid mismatch: dataset is {lat.size}x{lon.size} (lat x lon), model expects {mlat.size}x{mlon.size}"
        )
    if not np.allclose(lat, mlat, atol=1e-4) or not np.allclose(lon, mlon, atol=1e-4):
        how = (
            "latitude order differs (expected north to south)"
            if np.allclose(lat[::-1], mlat, atol=1e-4)
            else "coordinates differ"
        )
        raise UserError(f"grid mismatch: dataset and model {how}")


@dataclass(frozen=True)
class CheckpointInfo:
    """One row of :func:`list_checkpoints`."""

    path: Path
    seed: int | None
    dataset: str | None
    channels: tuple[str, ...]
    architecture: dict[str, Any]
    training_seconds: float | None
    skill: dict[str, Any] | None
    features: tuple[str, ...] = ()

    @property
    def noise(self) -> str:
        """``"K x l<L"`` for a stochastic model (``noise:K:L`` input), else ``"-"``."""
        for f in self.features:
            if f.startswith("noise:"):
                _, k, lmax = f.split(":")
                return f"{k} x l<{lmax}"
        return "-"

    @property
    def spectral_filter(self) -> bool:
        """Whether the checkpoint carries a calibrated ``spectral_filter.json``."""
        from models.spectral_filter import FILTER_FILE

        return (self.path / FILTER_FILE).is_file()

    def rmse(self, channel: str, hours: int) -> float | None:
        """Validation RMSE of ``channel`` at ``hours`` lead, if recorded."""
        if not self.skill or channel not in self.skill.get("rmse", {}):
            return None
        leads = list(self.skill.get("lead_hours", []))
        return float(self.skill["rmse"][channel][leads.index(hours)]) if hours in leads else None


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Checkpoints (directories with ``metadata.json``) at or below ``directory``, sorted by path.

    Reads only the JSON files (no weights); a folder of checkpoints is a model ensemble.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    out = []
    for meta_path in sorted(root.rglob(METADATA)):
        d = meta_path.parent
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("skipping %s: unreadable metadata.json", d)
            continue
        skill = None
        if (d / SKILL).is_file():
            try:
                skill = json.loads((d / SKILL).read_text())
            except (OSError, json.JSONDecodeError):
                skill = None
        out.append(
            CheckpointInfo(
                path=d,
                seed=meta.get("seed"),
                dataset=(meta.get("dataset") or {}).get("id")
                if isinstance(meta.get("dataset"), dict)
                else meta.get("dataset"),
                channels=tuple(meta.get("channels", ())),
                architecture=dict(meta.get("architecture", {})),
                training_seconds=meta.get("training", {}).get("seconds"),
                skill=skill,
                features=tuple(meta.get("features", ())),
            )
        )
    return out
