"""Training: determinism given the seed, resumption after interruption, learning, seed lists, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_catalog.errors import UserError
from models.train import STATE, parse_seeds, prepare, train, train_many


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "weights.safetensors"))


@pytest.fixture(scope="module")
def prepared(tiny_world):
    from models.train import TrainConfig

    return prepare(TrainConfig(train_years=(2000, 2000), valid_years=(2001, 2001)), tiny_world)


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path, tiny_config, prepared) -> None:
    train(tiny_config, tmp_path / "a", prepared=prepared, progress=False)
    train(tiny_config, tmp_path / "b", prepared=prepared, progress=False)
    train(dataclasses.replace(tiny_config, seed=1), tmp_path / "c", prepared=prepared, progress=False)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not (tmp_path / "a" / STATE).exists()


def test_interrupted_training_resumes_to_identical_weights(tmp_path: Path, tiny_config, prepared) -> None:
    cfg = dataclasses.replace(tiny_config, rollout_steps=2, rollout_iters=3)
    ref = train(cfg, tmp_path / "ref", prepared=prepared, progress=False)

    def interrupt(it: int, loss: float) -> None:
        if it == 5:  # the state saved after iteration 4 (save_every=4) survives
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", prepared=prepared, progress=False, callback=interrupt)
    assert (tmp_path / "run" / STATE).is_file()
    assert not (tmp_path / "run" / "metadata.json").exists()  # nothing marked complete
    res = train(cfg, tmp_path / "run", prepared=prepared, progress=False)
    assert res.resumed_from == 4
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res.losses == pytest.approx(ref.losses, rel=0, abs=0)
    # a finished checkpoint is not retrained; a different config in a resumable dir is refused
    assert train(cfg, tmp_path / "run", prepared=prepared, progress=False).skipped
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "other", prepared=prepared, progress=False, callback=interrupt)
    with pytest.raises(UserError, match="different configuration"):
        train(dataclasses.replace(cfg, lr=1e-4), tmp_path / "other", prepared=prepared, progress=False)


def test_training_learns_and_beats_persistence(tmp_path: Path, tiny_config, prepared) -> None:
    """On the travelling-wave world a short training beats persistence on the validation year."""
    cfg = dataclasses.replace(
        tiny_config, steps=80, embed_dim=12, batch_size=8, skill_lead_steps=8, skill_inits=4
    )
    res = train(cfg, tmp_path / "learn", prepared=prepared, progress=False)
    assert np.mean(res.losses[-10:]) < 0.5 * np.mean(res.losses[:5])
    skill = json.loads((tmp_path / "learn" / "skill.json").read_text())
    for c in ("z500", "v500"):
        assert skill["rmse"][c][3] < skill["persistence"][c][3]  # 24 h
    # skill.json references are right: persistence RMSE at 6 h recomputed by hand
    v = prepared["valid"]
    i0 = [int(np.nonzero(v.times == np.datetime64(t))[0][0]) for t in skill["init_times"]]
    from data_catalog.grid import area_weights

    w = area_weights(prepared["latitude"])[:, None]
    z = v.data[:, 0].double().numpy()
    mse = np.mean([((z[i + 1] - z[i]) ** 2 * w).mean() / w.mean() for i in i0])
    assert skill["persistence"]["z500"][0] == pytest.approx(np.sqrt(mse), rel=1e-6)


def test_train_many_trains_independent_seeds(tmp_path: Path, tiny_config, tiny_world) -> None:
    cfg = dataclasses.replace(tiny_config, steps=3, skill_lead_steps=2)
    res = train_many(cfg, [0, 2], tmp_path, dataset=tiny_world, progress=False)
    assert [r.path.name for r in res] == ["seed-0", "seed-2"]
    assert json.loads((tmp_path / "seed-2" / "metadata.json").read_text())["seed"] == 2


def test_seeds_side_by_side_equal_one_after_the_other(tmp_path: Path, tiny_world, capsys) -> None:
    """``wxens train --seeds 0-1 --processes 2`` (two spawned processes) writes bitwise the weights of the
    same seeds trained one after the other; ``--init-from s1/seed-{seed}`` fine-tunes each seed's own."""
    from safetensors.torch import load_file

    from workflows.cli import main

    data = tmp_path / "w.zarr"
    tiny_world.to_zarr(data, mode="w", zarr_format=3)
    common = ["--dataset", str(data), "--train-years", "2000", "--valid-years", "2001-2001", "--embed-dim", "8",
              "--num-layers", "1", "--lmax", "8", "--batch-size", "2", "--features", "", "--threads", "1",
              "--steps", "3", "--no-progress"]  # fmt: skip
    assert main(["train", "--seeds", "0-1", "--out", str(tmp_path / "seq"), *common]) == 0
    assert main(["train", "--seeds", "0-1", "--processes", "2", "--out", str(tmp_path / "par"), *common]) == 0
    for s in (0, 1):
        a = load_file(tmp_path / "seq" / f"seed-{s}" / "weights.safetensors")
        b = load_file(tmp_path / "par" / f"seed-{s}" / "weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = load_file(tmp_path / "par" / "seed-0" / "weights.safetensors")
    y = load_file(tmp_path / "par" / "seed-1" / "weights.safetensors")
    assert any(not torch.equal(x[k], y[k]) for k in x)  # independent seeds
    fine = ["train", "--seeds", "0-1", "--processes", "2", "--out", str(tmp_path / "ft"),
            "--init-from", str(tmp_path / "par" / "seed-{seed}"), *common]  # fmt: skip
    assert main(fine) == 0
    from models import load_checkpoint

    for s in (0, 1):
        meta = load_checkpoint(tmp_path / "ft" / f"seed-{s}").metadata["training"]
        src = load_checkpoint(tmp_path / "par" / f"seed-{s}").metadata["weights_sha256"]
        assert meta["init_from"] == str(tmp_path / "par" / f"seed-{s}") and meta["init_from_sha256"] == src
    capsys.readouterr()
    missing = ["train", "--seeds", "0-1", "--processes", "2", "--out", str(tmp_path / "bad"),
               "--init-from", str(tmp_path / "nowhere" / "seed-{seed}"), *common]  # fmt: skip
    assert main(missing) == 2  # a worker's error: one line, as in one process
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]
    assert main(["train", "--seeds", "0-1", "--processes", "0", "--out", str(tmp_path / "z"), *common]) == 2


def test_parse_seeds() -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,1,2-3") == [1, 2, 3, 5]
    assert parse_seeds("7") == [7]
    for bad in ("a-b", "3-1", "", "-2"):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_cli_usage_errors(tmp_path: Path) -> None:
    from workflows.cli import main

    assert main(["train", "--out", str(tmp_path), "--seed", "0", "--seeds", "0-1"]) == 2
    assert main(["train", "--out", str(tmp_path), "--seeds", "x"]) == 2


def test_windows_never_cross_a_trajectory_restart(tiny_world) -> None:
    """The world's years are independent runs: no training pair or rollout spans a restart."""
    from models.data import load_years

    ds = tiny_world.copy()
    ds.attrs["trajectory_starts"] = json.dumps(["2000-01-01T00:00:00", "2001-01-01T00:00:00"])
    block = load_years(ds, ["z500"], (2000, 2001))
    start_2001 = int(np.nonzero(block.times == np.datetime64("2001-01-01"))[0][0])
    assert block.segment_starts.tolist() == [start_2001]
    for k in (1, 3):
        w = block.window_starts(k)
        assert not np.any((w < start_2001) & (w + k >= start_2001))
        assert w.size == len(block) - k - k  # exactly k windows removed
        assert start_2001 in w and start_2001 - k - 1 in w


def test_init_from_fine_tunes_from_a_checkpoint(tmp_path: Path, tiny_config, prepared) -> None:
    from models import load_checkpoint

    base = tmp_path / "base"
    train(tiny_config, base, prepared=prepared, progress=False)
    # zero iterations from a checkpoint reproduce it exactly (weights copied, nothing else drawn)
    cfg0 = dataclasses.replace(tiny_config, seed=7, steps=0, init_from=str(base))
    train(cfg0, tmp_path / "copy", prepared=prepared, progress=False)
    a, b = _weights(base), _weights(tmp_path / "copy")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = load_checkpoint(tmp_path / "copy").metadata["training"]
    assert meta["init_from_sha256"] == load_checkpoint(base).metadata["weights_sha256"]
    # fine-tuning moves the weights, and starts from a lower loss than training from scratch
    cfg = dataclasses.replace(tiny_config, seed=7, steps=3, init_from=str(base))
    tuned = train(cfg, tmp_path / "tuned", prepared=prepared, progress=False)
    scratch = train(
        dataclasses.replace(cfg, init_from=None), tmp_path / "scratch", prepared=prepared, progress=False
    )
    assert not all(torch.equal(a[k], _weights(tmp_path / "tuned")[k]) for k in a)
    assert tuned.losses[0] < scratch.losses[0]
    # another architecture is refused in one line
    wider = dataclasses.replace(cfg, embed_dim=tiny_config.embed_dim * 2)
    with pytest.raises(UserError, match="init-from"):
        train(wider, tmp_path / "wider", prepared=prepared, progress=False)


def test_spectral_loss_degree_power_of_known_harmonics(prepared) -> None:
    from scipy.special import sph_harm_y

    from models.train import SpectralLoss

    data = prepared["train"].data
    lat, lon = prepared["latitude"], prepared["longitude"]
    sl = SpectralLoss(data, lat, 12, n_ref=64)
    assert not sl.mask[:, 0].any() and bool(sl.mask[0, 1])  # degree 0 never counts
    l_hi = int(torch.nonzero(sl.mask[0]).max())  # highest degree where the tiny world's z500 has power
    assert l_hi >= 3
    theta = np.deg2rad(90.0 - lat)[:, None]
    phi = np.deg2rad(lon)[None, :]

    def real_y(n: int, m: int) -> np.ndarray:  # real orthonormal harmonic on the unit sphere
        y = sph_harm_y(n, m, theta, phi)
        return (np.sqrt(2) * y.real if m > 0 else y.real) * np.sqrt(4 * np.pi)

    # unit-mean-square harmonics: degree power (orthonormal on the unit sphere) is 4 pi at their degree
    # (x 0.25 at half amplitude) and 0 elsewhere: sum_l E_l = integral of f^2 over the sphere (Parseval)
    f = real_y(5, 3) + 0.5 * real_y(9, 0)
    x = torch.from_numpy(np.broadcast_to(f, data.shape[1:]).copy()).float()[None]
    e = sl.power(x)[0, 0].double()
    want = np.zeros(12)
    want[5], want[9] = 4 * np.pi, np.pi
    np.testing.assert_allclose(e.numpy(), want, rtol=1e-4, atol=1e-4)
    # the loss: 0 for a perfect forecast, ~1 for a forecast of zeros (error = truth)
    truth = data[:64].float()
    assert float(sl(torch.zeros_like(truth))) == 0.0
    assert float(sl(truth)) == pytest.approx(1.0, rel=0.2)

    # errors of equal grid energy in z500 at degree l_hi and degree 1 are weighted by the truth's power
    # at those degrees: the loss ratio is E_1(truth) / E_l_hi(truth), large for a smooth field
    def in_z(f: np.ndarray) -> torch.Tensor:
        err = torch.zeros_like(truth[:1])
        err[0, 0] = torch.from_numpy(f).float()
        return err

    ratio = float(sl(in_z(real_y(l_hi, 2)))) / float(sl(in_z(real_y(1, 0))))
    assert ratio == pytest.approx(float(sl.ref[0, 1] / sl.ref[0, l_hi]), rel=1e-3)
    assert ratio > 10


def test_amse_reduces_to_the_error_form_where_it_should(prepared) -> None:
    from models.train import SpectralLoss

    data = prepared["train"].data
    sl = SpectralLoss(data, prepared["latitude"], 12, n_ref=64)
    x = data[:4].float()
    assert float(sl.amse(x, x)) == pytest.approx(0.0, abs=1e-6)
    # a scaled forecast is fully coherent: only the amplitude term remains, = power of the error
    for a in (0.5, 1.7):
        assert float(sl.amse(a * x, x)) == pytest.approx(float(sl((a - 1) * x)), rel=1e-4)
    # a forecast shifted by half a wavelength in longitude (same amplitude, opposite phase) pays
    # 2 P (1 - (-1)) = 4 P: the same as the error form (error = 2 x, power 4 P)
    lon = torch.as_tensor(np.deg2rad(prepared["longitude"]), dtype=torch.float32)
    wave = (
        torch.cos(2 * lon)[None, None, None, :]
        * torch.cos(torch.as_tensor(np.deg2rad(prepared["latitude"]))).float()[None, None, :, None]
    )
    t = wave.expand(1, data.shape[1], -1, -1).contiguous()
    assert data.shape[-1] % 4 == 0
    f = torch.roll(t, shifts=data.shape[-1] // 4, dims=-1)  # cos(2 lon) -> -cos(2 lon)
    assert torch.allclose(f, -t, atol=1e-5)
    assert float(sl.amse(f, t)) == pytest.approx(float(sl(f - t)), rel=1e-4)
    # a blurred (zero) forecast costs 3 P per degree instead of P: blurring is not rewarded
    assert float(sl.amse(torch.zeros_like(x), x)) == pytest.approx(3 * float(sl(x)), rel=1e-4)


def test_amplitude_loss_is_blind_to_phase(prepared) -> None:
    """The amplitude-only term: 0 for any forecast with the truth's degree power (a rotation in longitude,
    whatever its phase error), = AMSE for a coherent (scaled) forecast, = P per degree for zeros."""
    from models.train import SpectralLoss

    data = prepared["train"].data
    sl = SpectralLoss(data, prepared["latitude"], 12, n_ref=64)
    x = data[:4].float()
    assert float(sl.amplitude(x, x)) == pytest.approx(0.0, abs=1e-6)
    for shift in (1, 5, data.shape[-1] // 2):  # rotations by whole grid steps keep every degree's power
        rot = torch.roll(x, shifts=shift, dims=-1)
        assert float(sl.amplitude(rot, x)) == pytest.approx(0.0, abs=1e-5)
        assert float(sl.amse(rot, x)) > 0.01  # the phase error AMSE charges for
    for a in (0.5, 1.7):
        assert float(sl.amplitude(a * x, x)) == pytest.approx(float(sl.amse(a * x, x)), rel=1e-4)
    assert float(sl.amplitude(torch.zeros_like(x), x)) == pytest.approx(float(sl(x)), rel=1e-4)
    assert float(sl.term("amplitude", 0.5 * x, x)) == float(sl.amplitude(0.5 * x, x))
    assert float(sl.term("error", 0.5 * x, x)) == float(sl(-0.5 * x))


def test_mse_steps_limits_the_grid_error_to_the_first_steps(tmp_path: Path, tiny_config, prepared) -> None:
    cfg = dataclasses.replace(tiny_config, steps=3, rollout_steps=3, rollout_iters=3)
    full = train(cfg, tmp_path / "full", prepared=prepared, progress=False)
    same = train(dataclasses.replace(cfg, mse_steps=3), tmp_path / "same", prepared=prepared, progress=False)
    first = train(
        dataclasses.replace(cfg, mse_steps=1), tmp_path / "first", prepared=prepared, progress=False
    )
    assert same.losses == full.losses  # N >= the rollout: every step counts, as without the option
    # the first iteration starts from the same weights and batch: the 1-step error grows over the rollout
    assert first.losses[0] < full.losses[0]
    meta = json.loads((tmp_path / "first" / "metadata.json").read_text())["training"]
    assert meta["mse_steps"] == 1
    with pytest.raises(UserError, match="mse-steps"):
        train(dataclasses.replace(cfg, mse_steps=0), tmp_path / "bad", prepared=prepared, progress=False)


def test_cli_fine_tune_with_spectral_loss(tmp_path: Path, tiny_world, capsys) -> None:
    """``wxens train --init-from ... --spectral-loss ... --spectral-loss-kind amse`` end to end."""
    from models import load_checkpoint
    from workflows.cli import main

    data = tmp_path / "w.zarr"
    tiny_world.to_zarr(data, mode="w", zarr_format=3)
    common = ["--dataset", str(data), "--train-years", "2000", "--valid-years", "2001-2001", "--seed", "0", "--embed-dim", "8", "--num-layers", "1", "--lmax", "8",
              "--batch-size", "2", "--features", "", "--threads", "1", "--no-progress"]  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "base"), "--steps", "2", *common]) == 0
    args = ["train", "--out", str(tmp_path / "ft"), "--steps", "2", "--rollout-steps", "2", "--rollout-iters", "2",
            "--init-from", str(tmp_path / "base"), "--spectral-loss", "0.5", "--spectral-loss-kind", "amse", *common]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "ft").metadata["training"]
    assert meta["spectral_loss"] == 0.5 and meta["spectral_loss_kind"] == "amse"
    assert meta["init_from_sha256"] == load_checkpoint(tmp_path / "base").metadata["weights_sha256"]
    amp = ["train", "--out", str(tmp_path / "amp"), "--steps", "2", "--rollout-steps", "2", "--rollout-iters", "2",
           "--init-from", str(tmp_path / "base"), "--spectral-loss", "30", "--spectral-loss-kind", "amplitude",
           "--mse-steps", "1", *common]  # fmt: skip
    assert main(amp) == 0, capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "amp").metadata["training"]
    assert (meta["spectral_loss_kind"], meta["mse_steps"]) == ("amplitude", 1)
    crps = ["train", "--out", str(tmp_path / "crps"), "--steps", "2", "--rollout-steps", "2", "--rollout-iters", "2",
            "--init-from", str(tmp_path / "base"), "--loss", "crps", "--ensemble-members", "3", "--noise-channels", "2",
            "--noise-lmax", "6", *common]  # fmt: skip
    assert main(crps) == 0, capsys.readouterr().err
    m = load_checkpoint(tmp_path / "crps")
    assert m.features[-1] == "noise:2:6" and m.metadata["training"]["ensemble_members"] == 3
    assert main(["checkpoints", "list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "2 x l<6" in listed  # the stochastic checkpoint's noise column
    bad = ["train", "--out", str(tmp_path / "bad"), "--steps", "2", "--spectral-loss", "1", "--spectral-loss-kind", "l1",
           *common]  # fmt: skip
    assert main(bad) == 2
    assert "spectral-loss-kind" in capsys.readouterr().err
    assert (
        main(
            ["train", "--out", str(tmp_path / "bad"), "--train-years", "2006-2000", *common[:2], *common[4:]]
        )
        == 2
    )
    assert "--train-years" in capsys.readouterr().err


def test_cli_checkpoints_skill_matches_skill_table(
    tmp_path: Path, tiny_world, tiny_config, prepared, capsys
) -> None:
    """``wxens checkpoints skill`` scores checkpoints on chosen years; its JSON equals ``skill_table``."""
    from models import load_checkpoint
    from models.data import load_years, monthly_climatology
    from models.skill import skill_table
    from workflows.cli import main

    data = tmp_path / "w.zarr"
    tiny_world.to_zarr(data, mode="w", zarr_format=3)
    train(tiny_config, tmp_path / "ck" / "seed-0", prepared=prepared, progress=False)
    out = tmp_path / "skill.json"
    args = ["checkpoints", "skill", str(tmp_path / "ck"), "--dataset", str(data), "--years", "2001", "--clim-years",
            "2000", "--inits", "3", "--leads", "6,24", "--json", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "persistence" in capsys.readouterr().out
    got = json.loads(out.read_text())[str(tmp_path / "ck" / "seed-0")]
    m = load_checkpoint(tmp_path / "ck" / "seed-0")
    ch = list(m.channels)
    ref = skill_table(m, load_years(tiny_world, ch, (2001, 2001)),
                      monthly_climatology(load_years(tiny_world, ch, (2000, 2000))), n_inits=3, lead_steps=4)  # fmt: skip
    for c in ch:
        np.testing.assert_allclose(got["rmse"][c], ref["rmse"][c], rtol=1e-6)
        np.testing.assert_allclose(got["climatology"][c], ref["climatology"][c], rtol=1e-6)
    assert main(["checkpoints", "skill", str(tmp_path / "ck"), "--dataset", str(data), "--channel", "nope",
                 "--years", "2001", "--clim-years", "2000", "--inits", "2", "--leads", "6"]) == 2  # fmt: skip


def test_fair_crps_loss_matches_scoringrules() -> None:
    """The training loss is the area-weighted fair CRPS of scoringrules' ``fair`` estimator."""
    import scoringrules as sr

    from models.train import fair_crps_loss

    g = torch.Generator().manual_seed(0)
    ens = torch.randn((5, 2, 3, 4, 6), generator=g, dtype=torch.float64)
    y = torch.randn((2, 3, 4, 6), generator=g, dtype=torch.float64)
    w = torch.rand((1, 1, 4, 1), generator=g, dtype=torch.float64)
    ref = sr.crps_ensemble(
        y.numpy(), np.moveaxis(ens.numpy(), 0, -1), m_axis=-1, estimator="fair", backend="numpy"
    )
    np.testing.assert_allclose(float(fair_crps_loss(ens, y, w)), float((ref * w.numpy()).mean()), rtol=1e-12)
    with pytest.raises(ValueError, match="2 members"):
        fair_crps_loss(ens[:1], y, w)


def test_crps_member_generator_from_a_deterministic_checkpoint(tmp_path: Path, tiny_config, prepared) -> None:
    """``loss="crps"`` with noise inputs, fine-tuned from a deterministic checkpoint: the noise columns
    start at zero (zero iterations reproduce the source's forecasts for any noise), training moves
    them, members then differ with the noise and equal the noise-free path without it."""
    from models import load_checkpoint

    base = tmp_path / "base"
    train(tiny_config, base, prepared=prepared, progress=False)
    src = load_checkpoint(base)
    stoch = dict(loss="crps", noise_channels=3, noise_lmax=6, ensemble_members=3, init_from=str(base))
    train(
        dataclasses.replace(tiny_config, steps=0, **stoch),
        tmp_path / "zero",
        prepared=prepared,
        progress=False,
    )
    m0 = load_checkpoint(tmp_path / "zero")
    assert m0.features[-1] == "noise:3:6" and m0.noise_channels == 3
    x = prepared["valid"].data[:4]
    t = np.datetime64("2001-01-02T00")
    noise = m0.draw_noise([torch.Generator().manual_seed(i) for i in range(4)])
    torch.testing.assert_close(m0.step(x, t, noise), src.step(x, t), rtol=0, atol=0)
    res = train(
        dataclasses.replace(tiny_config, steps=4, **stoch),
        tmp_path / "crps",
        prepared=prepared,
        progress=False,
    )
    assert all(np.isfinite(res.losses))
    m1 = load_checkpoint(tmp_path / "crps")
    meta = m1.metadata["training"]
    assert meta["loss"] == "crps" and "fair CRPS of 3" in meta["loss_definition"]
    enc = m1.net.encoder.weight
    assert float(enc.detach()[:, -3:].abs().max()) > 0  # the noise columns were trained
    a, b = m1.step(x, t, noise), m1.step(x, t, m1.draw_noise([torch.Generator().manual_seed(9)] * 4))
    assert not torch.equal(a, b)
    torch.testing.assert_close(m1.step(x, t), m1.step(x, t, torch.zeros_like(noise)), rtol=0, atol=0)
    # resumed and deterministic: the same command twice gives the same weights
    again = train(
        dataclasses.replace(tiny_config, steps=4, **stoch),
        tmp_path / "crps2",
        prepared=prepared,
        progress=False,
    )
    assert again.losses == res.losses
    # bad combinations are one-line errors
    with pytest.raises(UserError, match="noise-channels"):
        train(
            dataclasses.replace(tiny_config, loss="crps"), tmp_path / "bad", prepared=prepared, progress=False
        )
    with pytest.raises(UserError, match="--loss"):
        train(
            dataclasses.replace(tiny_config, loss="l1"), tmp_path / "bad2", prepared=prepared, progress=False
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_train_on_cuda_without_cuda_is_one_error_line(tmp_path: Path, tiny_world, capsys) -> None:
    from workflows.cli import main

    data = tmp_path / "w.zarr"
    tiny_world.to_zarr(data, mode="w", zarr_format=3)
    args = ["train", "--dataset", str(data), "--train-years", "2000", "--valid-years", "2001", "--seed", "0",
            "--embed-dim", "8", "--num-layers", "1", "--lmax", "8", "--steps", "1", "--features", "",
            "--out", str(tmp_path / "c"), "--device", "cuda", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_rollout_lengths_cycle_per_iteration(
    tmp_path: Path, tiny_config, prepared, tiny_world, monkeypatch, capsys
) -> None:
    """``rollout_steps=(2, 3)``: the rollout iterations alternate 2- and 3-step windows (model calls
    counted per iteration); the CLI takes ``--rollout-steps 2,3``; bad lists are one-line errors."""
    from models.wrapper import SFNOForecastModel
    from workflows.cli import main

    calls: list[int] = []
    real = SFNOForecastModel.forward

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(SFNOForecastModel, "forward", counting)
    per_it: list[int] = []

    def cb(it: int, loss: float) -> None:
        per_it.append(len(calls))
        calls.clear()

    cfg = dataclasses.replace(tiny_config, steps=5, rollout_steps=(2, 3), rollout_iters=4, skill_inits=1)
    train(cfg, tmp_path / "cyc", prepared=prepared, progress=False, callback=cb)
    assert per_it == [1, 2, 3, 2, 3]
    monkeypatch.setattr(SFNOForecastModel, "forward", real)
    with pytest.raises(UserError, match="positive"):
        train(
            dataclasses.replace(cfg, rollout_steps=(2, 0)),
            tmp_path / "bad",
            prepared=prepared,
            progress=False,
        )
    data = tmp_path / "w.zarr"
    tiny_world.to_zarr(data, mode="w", zarr_format=3)
    common = ["train", "--dataset", str(data), "--train-years", "2000", "--valid-years", "2001", "--seed", "0",
              "--embed-dim", "8", "--num-layers", "1", "--lmax", "8", "--features", "", "--no-progress"]  # fmt: skip
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "cli"),
                "--steps",
                "2",
                "--rollout-steps",
                "2,3",
                "--rollout-iters",
                "2",
            ]
        )
        == 0
    )
    from models import load_checkpoint

    assert load_checkpoint(tmp_path / "cli").metadata["training"]["rollout_steps"] == [2, 3]
    assert main([*common, "--out", str(tmp_path / "bad2"), "--rollout-steps", "2,x"]) == 2
    assert "--rollout-steps" in capsys.readouterr().err


def test_normalisation_statistics_match_numpy_over_chunks() -> None:
    """``statistics`` (chunked float64 passes) equals the area-weighted mean, std and one-step
    tendency std computed by NumPy on the whole block at once, whatever the chunk (boundaries of the
    tendency pairs included), to 1e-12 relative."""
    from models.data import Block, statistics

    rng = np.random.default_rng(4)
    scale = np.array([1.0, 50.0, 1e-5]).reshape(1, 3, 1, 1)
    offset = np.array([0.0, 5e4, 0.0]).reshape(1, 3, 1, 1)
    x = (rng.standard_normal((30, 3, 8, 16)) * scale + offset).astype(np.float32)
    lat = np.linspace(-80, 80, 8)
    w = np.cos(np.deg2rad(lat))
    block = Block(torch.from_numpy(x), np.arange(30).astype("datetime64[h]"), np.zeros(0, dtype=int))
    xd = x.astype(np.float64)
    ww = w[None, None, :, None] * np.ones_like(xd)
    mean = (xd * ww).sum(axis=(0, 2, 3)) / ww.sum(axis=(0, 2, 3))
    std = np.sqrt(((xd - mean[None, :, None, None]) ** 2 * ww).sum(axis=(0, 2, 3)) / ww.sum(axis=(0, 2, 3)))
    d = np.diff(xd, axis=0)
    tstd = np.sqrt((d**2 * ww[1:]).sum(axis=(0, 2, 3)) / ww[1:].sum(axis=(0, 2, 3)))
    for chunk in (256, 7, 29, 1):
        s = statistics(block, w, chunk=chunk)
        np.testing.assert_allclose(s["mean"], mean, rtol=1e-12, atol=1e-18)
        np.testing.assert_allclose(s["std"], std, rtol=1e-12)
        np.testing.assert_allclose(s["tendency_std"], tstd, rtol=1e-12)
