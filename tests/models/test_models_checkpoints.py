"""Checkpoint files: round trip, integrity, safety, compatibility, registry and CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_catalog.errors import UserError
from models.checkpoint import check_compatible, list_checkpoints, load_checkpoint, sha256_file
from models.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_world) -> Path:
    from models.train import TrainConfig

    cfg = TrainConfig(
        dataset="synthetic",
        seed=3,
        embed_dim=8,
        num_layers=2,
        lmax=8,
        mmax=8,
        steps=6,
        batch_size=4,
        warmup_steps=2,
        train_years=(2000, 2000),
        valid_years=(2001, 2001),
        skill_inits=2,
        skill_lead_steps=12,
    )
    out = tmp_path_factory.mktemp("ckpt") / "seed-3"
    train(cfg, out, dataset=tiny_world, progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_layout_and_metadata(trained: Path, tiny_world) -> None:
    assert sorted(p.name for p in trained.iterdir()) == ["metadata.json", "skill.json", "weights.safetensors"]
    meta = json.loads((trained / "metadata.json").read_text())
    assert meta["weights_sha256"] == sha256_file(trained / "weights.safetensors")
    assert meta["architecture"]["lmax"] == 8 and meta["architecture"]["mmax"] == 8
    assert meta["channels"] == ["z500", "u500", "v500", "vo500"]
    assert (
        meta["time_step_hours"] == 6.0
        and meta["seed"] == 3
        and meta["features"] == ["doy", "sinlat", "static:orography"]
    )
    np.testing.assert_allclose(meta["grid"]["latitude"], tiny_world.latitude.values)
    assert meta["dataset"]["train_years"] == [2000, 2000]
    assert meta["code_version"] and meta["training"]["seconds"] > 0
    # normalisation statistics are the area-weighted ones of the training year
    z = tiny_world["z500"].sel(time="2000").values.astype(np.float64)
    from data_catalog.grid import area_weights

    w = area_weights(tiny_world.latitude.values)[None, :, None]
    mean = (z * w).mean() / w.mean()
    assert meta["normalisation"]["mean"][0] == pytest.approx(mean, rel=1e-6)
    skill = json.loads((trained / "skill.json").read_text())
    assert skill["lead_hours"][:2] == [6, 12] and len(skill["rmse"]["z500"]) == 12


def test_round_trip_gives_identical_forecasts(trained: Path, tiny_world) -> None:
    m = load_checkpoint(trained)
    m2 = load_checkpoint(trained / "weights.safetensors")
    x = torch.from_numpy(np.stack([tiny_world[c].values[100] for c in m.channels])[None])
    t = tiny_world.time.values[100]
    torch.testing.assert_close(m.step(x, t), m2.step(x, t), rtol=0, atol=0)
    assert m.metadata["seed"] == 3
    # the normalised orography travels in the safetensors file
    from data_catalog.grid import area_weights

    zs = tiny_world["orography"].values.astype(np.float64)
    w = area_weights(tiny_world.latitude.values)[:, None] * np.ones_like(zs)
    mu = np.average(zs, weights=w)
    sd = np.sqrt(np.average((zs - mu) ** 2, weights=w))
    np.testing.assert_allclose(m._static[0].numpy(), (zs - mu) / sd, rtol=1e-4, atol=1e-5)
    r48 = m.rmse_at(hours=48)
    assert set(r48) == set(m.channels) and r48["z500"] == m.skill["rmse"]["z500"][7]
    with pytest.raises(UserError):
        m.rmse_at(hours=500)


def test_tampered_truncated_and_missing_files_are_user_errors(trained: Path, tmp_path: Path) -> None:
    bad = _copy(trained, tmp_path / "tampered")
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_checkpoint(bad)
    short = _copy(trained, tmp_path / "truncated")
    (short / "weights.safetensors").write_bytes((trained / "weights.safetensors").read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(short)
    nometa = _copy(trained, tmp_path / "nometa")
    (nometa / "metadata.json").unlink()
    with pytest.raises(UserError, match="metadata"):
        load_checkpoint(nometa)
    noweights = _copy(trained, tmp_path / "noweights")
    (noweights / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="weights missing"):
        load_checkpoint(noweights)
    badjson = _copy(trained, tmp_path / "badjson")
    (badjson / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="JSON"):
        load_checkpoint(badjson)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


class _Evil:
    """Unpickling this writes a file (what a malicious checkpoint would do)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_malicious_pickle_is_refused_and_nothing_runs(trained: Path, tmp_path: Path) -> None:
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    marker = tmp_path / "marker.txt"
    payload = {"encoder.weight": _Evil(str(marker))}
    with open(evil_dir / "weights.pt", "wb") as f:
        pickle.dump(payload, f)
    # sanity: a plain unpickle of this file *would* write the marker
    with open(evil_dir / "weights.pt", "rb") as f:
        pickle.load(f)  # noqa: S301 - deliberate, proves the payload is live
    assert marker.exists()
    marker.unlink()
    meta = json.loads((trained / "metadata.json").read_text())
    meta["weights_sha256"] = sha256_file(
        evil_dir / "weights.pt"
    )  # hash matches: only the unpickler stands guard
    (evil_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="unsafe"):
        load_checkpoint(evil_dir)
    assert not marker.exists()


def test_foreign_torch_state_dict_loads_with_weights_only(trained: Path, tmp_path: Path) -> None:
    d = tmp_path / "foreign"
    d.mkdir()
    sd = load_file(str(trained / "weights.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, d / "weights.pt")
    meta = json.loads((trained / "metadata.json").read_text())
    meta["weights_sha256"] = sha256_file(d / "weights.pt")
    (d / "metadata.json").write_text(json.dumps(meta))
    a, b = load_checkpoint(trained), load_checkpoint(d)
    for va, vb in zip(a.net.state_dict().values(), b.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    # a state dict that does not fit the architecture is a one-line user error
    torch.save({"encoder.weight": torch.zeros(3, 3)}, d / "weights.pt")
    meta["weights_sha256"] = sha256_file(d / "weights.pt")
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not fit"):
        load_checkpoint(d)


def test_check_compatible(trained: Path, tiny_world) -> None:
    m = load_checkpoint(trained)
    check_compatible(m, tiny_world)
    with pytest.raises(UserError, match="lacks the model's channels"):
        check_compatible(m, tiny_world.drop_vars("u500"))
    with pytest.raises(UserError, match="grid mismatch.*16x32.*"):
        check_compatible(m, tiny_world.isel(latitude=slice(0, 8)))
    with pytest.raises(UserError, match="north to south"):
        check_compatible(m, tiny_world.isel(latitude=slice(None, None, -1)))
    with pytest.raises(UserError) as exc:
        check_compatible(m, tiny_world.isel(longitude=slice(0, 16)))
    assert "\n" not in str(exc.value)


def test_registry_and_cli(trained: Path, capsys) -> None:
    from workflows.cli import main

    infos = list_checkpoints(trained.parent)
    assert [i.seed for i in infos] == [3]
    assert infos[0].rmse("z500", 48) == pytest.approx(
        json.loads((trained / "skill.json").read_text())["rmse"]["z500"][7]
    )
    assert main(["checkpoints", "list", str(trained.parent)]) == 0
    out = capsys.readouterr().out
    assert "seed-3" in out and "z500" in out and f"{infos[0].rmse('z500', 48):.4g}" in out
    assert not infos[0].spectral_filter and "yes" not in out
    assert main(["checkpoints", "list", str(trained.parent / "nope")]) == 2
