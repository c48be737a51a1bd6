"""The section-7 experiment at toy scale: (a)-(d) run by the engine, (e) probabilistic climatology,
results/table/figures/publish, and the target check on analytical cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from pipeline import experiment as ex
from pipeline.testing import synthetic_analysis, write_toy_checkpoint

YEARS = (2005, 2006, 2007)  # reference years of the climatology; 2008 is verified


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    parts = [synthetic_analysis(f"{y}-01-01T00", periods=24, seed=y) for y in (*YEARS, 2008)]
    ana = root / "analysis.zarr"
    xr.concat(parts, "time").to_zarr(ana, mode="w", zarr_format=3)
    for i in range(2):
        write_toy_checkpoint(root / "ckpts" / f"seed-{i}", seed=i)
    return root


def independent_weights(lat: np.ndarray) -> np.ndarray:
    """Cell areas of an equiangular grid (cell edges half a spacing either side), mean 1."""
    d = np.deg2rad(abs(lat[1] - lat[0]) / 2)
    w = np.sin(np.deg2rad(lat) + d) - np.sin(np.deg2rad(lat) - d)
    return w / w.mean()


@pytest.fixture(scope="module")
def run(toy_world):
    out = toy_world / "out"
    docs = toy_world / "docs"
    docs.mkdir()
    (docs / "engine.md").write_text(f"# Engine\n\nbefore\n\n{ex.BEGIN}\nold table\n{ex.END}\n\nafter\n")
    argv = [str(out), "--inits", "2", "--leads", "8", "--pairs", "1", "--checkpoints", str(toy_world / "ckpts"),
            "--analysis", str(toy_world / "analysis.zarr"), "--loader", "pipeline.testing:load_toy_checkpoint",
            "--first", "2008-01-02T00", "--last", "2008-01-03T00", "--alpha", "0.35", "--cycles", "2",
            "--seed-channels", "z500,u500", "--publish", str(docs)]  # fmt: skip
    assert ex.main(argv) == 0
    return {"out": out, "docs": docs, "res": json.loads((out / "results.json").read_text())}


def test_members_leads_and_files(run, capsys):
    res = run["res"]
    fc = res["forecasts"]
    assert {k: v["members"] for k, v in fc.items()} == {
        "a_bred_x_ckpts": 4, "b_bred_x_1ckpt": 4, "c_ckpts_only": 2, "d_noise_x_ckpts": 4, "e_probclim": 3,
    }  # fmt: skip
    assert res["lead_hours"] == [6.0 * k for k in range(9)]
    for name in ("a_bred_x_ckpts", "b_bred_x_1ckpt"):  # the bred runs got the cycles and seed channels
        pert = json.loads((run["out"] / name / "config.json").read_text())["perturbation"]
        assert pert["cycles"] == 2 and pert["seed_channel"] == ["z500", "u500"]
    assert res["inits"] == ["2008-01-02T00:00", "2008-01-03T00:00"]
    assert fc["e_probclim"]["reference_years"] == "2005,2006,2007"
    figs = sorted(p.name for p in (run["out"] / "figures").glob("*.png"))
    assert figs == sorted(f"{m}_{c}.png" for m in ("crps", "ssr") for c in res["channels"])
    assert all((run["out"] / "figures" / f).stat().st_size > 5000 for f in figs)
    text = (run["out"] / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    legacy = json.loads(text)
    crps_a = legacy["a_bred_x_ckpts"]["crps"]
    for c in res["channels"]:  # significant digits kept even for ~1e-6 vorticity scores
        assert crps_a[c][1] == pytest.approx(fc["a_bred_x_ckpts"]["crps"][c][1], rel=1e-5)
    assert set(legacy) == {*ex.RUNS, "inits"} and legacy["c_ckpts_only"]["members"] == 2
    # the engine runs kept no member-sized inline file
    for name in ex.RUNS:
        assert not list((run["out"] / name / "inline").rglob("*.npy"))


def test_probclim_equals_brute_force(run, toy_world):
    res = run["res"]
    truth = xr.open_zarr(toy_world / "analysis.zarr")
    lat = truth["latitude"].values
    w = independent_weights(lat)
    inits = np.array(["2008-01-02T00", "2008-01-03T00"], dtype="datetime64[ns]")
    e = res["forecasts"]["e_probclim"]
    for c in res["channels"]:
        crps = np.zeros((2, 9))
        sq = np.zeros((2, 9))
        var = np.zeros((2, 9))
        for i, t0 in enumerate(inits):
            for j in range(9):
                v = t0 + np.timedelta64(6 * j, "h")
                y = truth[c].sel(time=v).values.astype(np.float64)
                x = np.stack(
                    [truth[c].sel(time=v - np.timedelta64((2008 - yr) * 365 + (yr <= 2004), "D")).values
                     for yr in YEARS]
                ).astype(np.float64)  # fmt: skip
                m = len(x)
                pt = np.abs(x - y).mean(0) - np.abs(x[:, None] - x[None]).sum((0, 1)) / (2 * m * (m - 1))
                crps[i, j] = (pt.mean(-1) * w).mean()
                sq[i, j] = (((x.mean(0) - y) ** 2).mean(-1) * w).mean()
                var[i, j] = (x.var(0, ddof=1).mean(-1) * w).mean()
        np.testing.assert_allclose(e["crps"][c], crps.mean(0), rtol=1e-6)
        np.testing.assert_allclose(e["rmse_mean"][c], np.sqrt(sq.mean(0)), rtol=1e-6)
        ssr = np.sqrt(4 / 3) * np.sqrt(var.mean(0)) / np.sqrt(sq.mean(0))
        np.testing.assert_allclose(e["spread_skill"][c], ssr, rtol=1e-6)


def test_engine_runs_match_their_inline_scores(run):
    res = run["res"]
    for name in ex.RUNS:
        sc = xr.open_zarr(run["out"] / name / "scores.zarr").load()
        f = res["forecasts"][name]
        m = f["members"]
        for k, c in enumerate(res["channels"]):
            np.testing.assert_allclose(f["crps"][c], sc["crps_global"].values[:, :, k].mean(0), rtol=1e-12)
            rmse = np.sqrt((sc["ensemble_mean_rmse"].values[:, :, k] ** 2).mean(0))
            spread = np.sqrt((sc["spread"].values[:, :, k] ** 2).mean(0))
            ssr = np.sqrt((m + 1) / m) * spread[1:] / rmse[1:]
            np.testing.assert_allclose(f["spread_skill"][c][1:], ssr, rtol=1e-12)
            assert f["spread_skill"][c][0] is None  # lead 0: centred on the analysis, undefined
            if name != "c_ckpts_only":  # +/- pairs centred on the analysis: no spread-free lead 0
                assert f["crps"][c][0] > 0
            # the checkpoint-stratified CRPS: the inline area means; undefined for one checkpoint;
            # with one member per checkpoint ((c)) it is the fair CRPS
            between = sc["crps_between_checkpoints_global"].values[:, :, k].mean(0)
            got = np.array([np.nan if v is None else v for v in f["crps_between"][c]])
            if name == "b_bred_x_1ckpt":
                assert np.all(np.isnan(got)) and np.all(np.isnan(between))
            else:
                np.testing.assert_allclose(got, between, rtol=1e-12)
            if name == "c_ckpts_only":
                np.testing.assert_allclose(got[1:], np.asarray(f["crps"][c][1:]), rtol=1e-5)
    # unperturbed checkpoints all start on the analysis
    assert all(v[0] == 0.0 for v in res["forecasts"]["c_ckpts_only"]["crps"].values())
    # the probabilistic climatology's years are independent: its stratified CRPS is its fair CRPS
    e = res["forecasts"]["e_probclim"]
    assert e["crps_between"] == e["crps"]


def test_table_target_and_publish(run):
    res, docs = run["res"], run["docs"]
    md = (run["out"] / "results.md").read_text()
    for c in res["channels"]:
        assert f"**{c}**" in md and f"![CRPS vs lead, {c}](figures/crps_{c}.png)" in md
    assert md.count("| 24 | ") == 2 * len(res["channels"])  # daily rows only (CRPS and CRPS* tables)
    assert md.count("| lead (h) | CRPS* (a) | CRPS* (c) | CRPS* (d) | CRPS* (e) |") == len(res["channels"])
    assert "| 6 | " not in md
    for c, t in res["target"].items():
        assert t["pass"] == (t["crps_lowest"] and t["ssr_in_range"])
        a = res["forecasts"]["a_bred_x_ckpts"]["spread_skill"][c]
        assert t["ssr_min"] == pytest.approx(min(a[8:]))  # the 48 h lead is the only one of days 2-10
    page = (docs / "engine.md").read_text()
    assert page.startswith("# Engine\n\nbefore\n\n") and page.endswith("\n\nafter\n")
    assert "old table" not in page and f"({ex.FIG_DIR}/ssr_vo500.png)" in page
    assert len(list((docs / ex.FIG_DIR).glob("*.png"))) == 2 * len(res["channels"])
    ex.publish(res, run["out"] / "figures", docs)  # idempotent: one block
    again = (docs / "engine.md").read_text()
    assert again == page and again.count(ex.BEGIN) == 1


def _res(crps: dict[str, list[float]], ssr_a: list[float]) -> dict:
    fc = {
        name: {"label": ex.labels(4)[name], "members": 8, "crps": {"x": v}, "spread_skill": {"x": ssr_a}}
        for name, v in crps.items()
    }
    return {"lead_hours": [0.0, 24.0, 48.0, 72.0, 264.0], "channels": ["x"], "forecasts": fc}


def test_target_check_analytical():
    others = [1.0, 2.0, 3.0, 4.0, 5.0]
    good = {"a_bred_x_ckpts": [9.0, 1.9, 2.9, 3.9, 4.9]} | {n: others for n in (*ex.RUNS[1:], ex.CLIM)}
    # lead 0 and leads beyond day 10 do not count for the SSR, lead 0 not for the CRPS
    t = ex.target_check(_res(good, [np.nan, 0.5, 0.8, 1.2, 3.0]))["x"]
    assert t["pass"] and t["reasons"] == [] and (t["ssr_min"], t["ssr_max"]) == (0.8, 1.2)
    bad = dict(good, b_bred_x_1ckpt=[1.0, 2.0, 2.9, 4.0, 5.0])  # (b) ties (a) at 48 h
    t = ex.target_check(_res(bad, [np.nan, 0.5, 0.79, 1.1, 1.0]))["x"]
    assert not t["pass"] and not t["crps_lowest"] and not t["ssr_in_range"]
    assert t["reasons"] == ["(b) CRPS <= (a) at 48 h", "(a) SSR 0.79-1.10 over days 2-10 (outside at 48 h)"]
    short = _res(good, [np.nan, 1.0, 1.0, 1.0, 1.0])
    short["lead_hours"] = [0.0, 6.0, 12.0, 18.0, 30.0]  # no lead of days 2-10
    t = ex.target_check(short)["x"]
    assert t["crps_lowest"] and not t["ssr_in_range"] and t["reasons"] == ["no lead in days 2-10"]


def test_configs_carry_alpha_cycles_and_stochastic_forcing():
    from pipeline.config import ForecastConfig

    cfgs = ex.experiment_configs(
        ["c0", "c1"], ["2008-01-02T00"], 4, 2, "a.zarr", "m:f", alpha=0.6, cycles=2, stochastic=0.7,
        stochastic_ramp_hours=24.0,
    )  # fmt: skip
    p = {k: v["perturbation"] for k, v in cfgs.items()}
    assert p["a_bred_x_ckpts"] == {
        "method": "bred",
        "n_pairs": 2,
        "alpha": 0.6,
        "cycles": 2,
        "stochastic": 0.7,
        "stochastic_ramp_hours": 24.0,
    }
    assert p["b_bred_x_1ckpt"]["n_pairs"] == 4 and p["b_bred_x_1ckpt"]["stochastic"] == 0.7
    assert p["d_noise_x_ckpts"]["stochastic"] == 0.7 and p["c_ckpts_only"] == {"method": "none"}
    for c in cfgs.values():  # every config is valid for the engine
        ForecastConfig.model_validate(c)


def test_module_entry_point_bad_input_is_one_line(tmp_path):
    """``python -m pipeline.experiment`` with a missing checkpoint folder: one error line, exit 2."""
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.experiment",
            str(tmp_path / "out"),
            "--checkpoints",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: checkpoint folder not found: {tmp_path / 'nope'}"]


def test_stochastic_argument_per_channel():
    import argparse

    from pipeline.experiment import parse_stochastic

    assert parse_stochastic("2") == 2.0
    assert parse_stochastic("z500=2, u500=2.5") == {"z500": 2.0, "u500": 2.5}
    for bad in ("x", "z500=", "=2", "z500=2,u500", "-1", "z500=-0.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_stochastic(bad)


def test_stochastic_schedule_parsing_validation_and_identity(world):
    """``--stochastic-schedule`` parses hours:strength points; the config refuses decreasing hours,
    negative strengths (one line each); the forcing follows the piecewise-linear schedule in lead steps,
    constant outside it, times any ramp; a config without a schedule keeps the identity it had before
    the field existed."""
    import argparse

    import torch

    from data_catalog.errors import UserError
    from pipeline.config import load_config
    from pipeline.experiment import parse_schedule
    from pipeline.rollout import StochasticForcing
    from tests.pipeline.conftest import base_config

    assert parse_schedule("0:1, 120:1,240:0.5") == [(0.0, 1.0), (120.0, 1.0), (240.0, 0.5)]
    assert parse_schedule("z500=0:1,144:0.2; u500=0:1") == {
        "z500": [(0.0, 1.0), (144.0, 0.2)],
        "u500": [(0.0, 1.0)],
    }
    for bad in ("0:1,120", "a:b", "1;2", "z500=", "=0:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_schedule(bad)
    cfg = base_config(world)
    for sched, msg in (([[24, 1], [12, 0.5]], "increasing"), ([[0, -1]], ">= 0")):
        pert = dict(cfg["perturbation"], stochastic=1.0, stochastic_schedule=sched)
        with pytest.raises(UserError, match=msg):
            load_config(dict(cfg, perturbation=pert))
    plain = load_config(cfg)
    assert "stochastic_schedule" not in plain.identity()["perturbation"]
    sched = load_config(
        dict(cfg, perturbation=dict(cfg["perturbation"], stochastic_schedule=[[0, 1], [240, 0.5]]))
    )
    assert sched.identity_hash() != plain.identity_hash()
    lat, lon = np.linspace(87.2, -87.2, 32), np.arange(64) * 5.625
    f = StochasticForcing(
        torch.ones(4), lat, lon, 1000.0, schedule=(np.array([4.0, 20.0, 40.0]), np.array([1.0, 1.0, 0.5]))
    )
    assert [f.ramp(k) for k in (1, 4, 20, 30, 40, 60)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.5]
    # with per-channel ramps the two multiply
    g = StochasticForcing(torch.ones(4), lat, lon, 1000.0, [4.0, 0.0, 0.0, 2.0], schedule=f.schedule)
    np.testing.assert_allclose(g.ramp(1).flatten().numpy(), [0.25, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(g.ramp(30).flatten().numpy(), [0.75] * 4)


def test_init_times_stay_inside_one_trajectory():
    """An init whose 10-day verification would run into the next calendar year's independent run is
    moved back to end before it; one whose breeding would start in the previous run is moved forward;
    without trajectory starts the even spread is unchanged."""
    starts = ["2008-01-01T00", "2009-01-01T00"]
    plain = ex.init_times("2008-01-10T00", "2009-12-01T00", 40)
    moved = ex.init_times("2008-01-10T00", "2009-12-01T00", 40, starts, lead_hours=240, breed_hours=18)
    assert "2008-12-29T06" in plain and "2008-12-21T18" in moved
    assert [a == b for a, b in zip(plain, moved, strict=True)].count(False) == 1
    assert ex.init_times("2008-12-31T00", "2009-01-01T06", 2, starts, lead_hours=24, breed_hours=18) == [
        "2008-12-30T18",
        "2009-01-01T18",
    ]
    for t in moved:
        t0 = np.datetime64(t)
        assert t0.astype("datetime64[Y]") == (t0 + np.timedelta64(240, "h")).astype("datetime64[Y]")


def test_paired_differences_and_significance():
    """The paired mean difference and its standard error equal scipy's ``sem`` of the per-init
    differences; a lead where (a) loses by more than 2 SE is significant, a smaller loss is a tie."""
    from scipy import stats

    rng = np.random.default_rng(3)
    inits = np.array(["2008-01-01", "2008-02-01", "2008-03-01", "2008-04-01", "2008-05-01"], "datetime64[ns]")
    h = [0.0, 24.0, 48.0, 72.0, 264.0]
    base = rng.uniform(1.0, 2.0, size=(5, 5, 1)) + np.arange(5)[None, :, None]
    noise = rng.normal(0.0, 0.05, size=base.shape)
    crps_a = base + noise
    crps_a[:, 1] = base[:, 1] + 0.5  # (a) worse at 24 h by 0.5 in every init: significant
    crps_a[:, 2] = base[:, 2] + np.array([0.3, -0.3, 0.2, -0.1, 0.0])[:, None]  # mean +0.02: a tie
    crps_a[:, 3:] = base[:, 3:] - 0.1  # (a) better
    scores = {
        name: {"crps": crps_a if name == ex.RUNS[0] else base, "inits": inits, "channels": ["x"]}
        for name in (*ex.RUNS, ex.CLIM)
    }
    paired = ex.paired_differences(scores)
    assert set(paired) == {*ex.RUNS[1:], ex.CLIM} and paired[ex.CLIM]["n"] == 5
    d = crps_a[:, :, 0] - base[:, :, 0]
    np.testing.assert_allclose(paired[ex.CLIM]["diff"]["x"], d.mean(0), rtol=1e-12)
    np.testing.assert_allclose(paired[ex.CLIM]["se"]["x"], stats.sem(d, axis=0), rtol=1e-12)
    res = _res(
        {k: [float(v) for v in s["crps"].mean(0)[:, 0]] for k, s in scores.items()}, [np.nan, 1, 1, 1, 1]
    )
    res["lead_hours"], res["paired"] = h, paired
    t = ex.target_check(res)["x"]
    assert not t["crps_lowest"] and not t["crps_not_beaten"] and t["ssr_in_range"]
    assert t["reasons"][0] == "(b) CRPS <= (a) at 24 h, 48 h (significant at 24 h; within 2 SE at 48 h)"
    res["paired"] = ex.paired_differences(
        {k: dict(s, crps=s["crps"][:, [0, 2, 2, 3, 4]]) for k, s in scores.items()}
    )
    res["forecasts"] = _res(
        {k: [float(v) for v in s["crps"][:, [0, 2, 2, 3, 4]].mean(0)[:, 0]] for k, s in scores.items()},
        [np.nan, 1, 1, 1, 1],
    )["forecasts"]
    t = ex.target_check(res)["x"]
    assert not t["crps_lowest"] and t["crps_not_beaten"] and not t["pass"]
    assert "within 2 SE at 24 h, 48 h" in t["reasons"][0]
    # other inits (or a single init): no paired differences, and the check says nothing about them
    other = dict(scores, e_probclim=dict(scores[ex.CLIM], inits=inits + np.timedelta64(1, "h")))
    assert ex.paired_differences(other) == {}
    assert (
        ex.paired_differences({k: dict(s, inits=inits[:1], crps=s["crps"][:1]) for k, s in scores.items()})
        == {}
    )
    res.pop("paired")
    assert ex.target_check(res)["x"]["crps_not_beaten"] is None


def test_noise_fraction_goes_to_the_bred_runs_only(tmp_path, capsys):
    from pipeline.config import ForecastConfig

    cfgs = ex.experiment_configs(["c0", "c1"], ["2008-01-02T00"], 4, 2, "a.zarr", "m:f", noise_fraction=0.3)
    p = {k: v["perturbation"] for k, v in cfgs.items()}
    assert p["a_bred_x_ckpts"]["noise_fraction"] == 0.3 == p["b_bred_x_1ckpt"]["noise_fraction"]
    assert "noise_fraction" not in p["d_noise_x_ckpts"] and p["c_ckpts_only"] == {"method": "none"}
    assert ForecastConfig.model_validate(cfgs["a_bred_x_ckpts"]).perturbation.noise_fraction == 0.3
    assert (
        "noise_fraction"
        not in ex.experiment_configs(["c0"], ["2008-01-02T00"], 4, 2, "a", "m:f")["a_bred_x_ckpts"][
            "perturbation"
        ]
    )  # the default keeps earlier configs (and their resumable runs) unchanged
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(SystemExit) as e:
            ex.main([str(tmp_path / "x"), "--noise-fraction", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(f"a fraction in [0, 1] is needed, not '{bad}'")
    assert not (tmp_path / "x").exists()


def test_seed_channels_go_to_the_bred_runs_only():
    from pipeline.config import ForecastConfig

    cfgs = ex.experiment_configs(["c0"], ["2008-01-02T00"], 4, 2, "a", "m:f", seed_channels=["z500", "u500"])
    p = {k: v["perturbation"] for k, v in cfgs.items()}
    assert p["a_bred_x_ckpts"]["seed_channel"] == ["z500", "u500"] == p["b_bred_x_1ckpt"]["seed_channel"]
    assert "seed_channel" not in p["d_noise_x_ckpts"]
    assert ForecastConfig.model_validate(cfgs["b_bred_x_1ckpt"]).perturbation.seed_channel == ["z500", "u500"]
    one = ex.experiment_configs(["c0"], ["2008-01-02T00"], 4, 2, "a", "m:f", seed_channels=["u500"])
    assert one["a_bred_x_ckpts"]["perturbation"]["seed_channel"] == "u500"


def test_noise_fraction_zero_keeps_the_identity_of_earlier_runs():
    """Runs made before ``noise_fraction`` existed still resume: at 0 it is not part of the identity.
    The hash below is what the code before the field (commit ad46420) gives for this config."""
    from pipeline.config import ForecastConfig

    cfg = {"analysis": "a.zarr", "init_times": ["2008-01-02T00"], "checkpoints": ["c0", "c1"], "lead_steps": 4,
           "model_loader": "m:f", "perturbation": {"method": "bred", "n_pairs": 2}}  # fmt: skip
    plain = ForecastConfig.model_validate(cfg)
    assert plain.identity_hash() == "f2de412563770fb1"
    assert "noise_fraction" not in plain.identity()["perturbation"]
    mixed = ForecastConfig.model_validate(
        {**cfg, "perturbation": {**cfg["perturbation"], "noise_fraction": 0.25}}
    )
    assert mixed.identity()["perturbation"]["noise_fraction"] == 0.25
    assert mixed.identity_hash() != plain.identity_hash()


def test_more_checkpoints_extrapolation_matches_a_larger_ensemble():
    """Checkpoints x +/- pairs drawn at 200,000 points (checkpoint offsets N(0, 1), pair
    perturbations N(0, 0.4^2), truth N(0, 1.3^2)): (a)'s fair CRPS with 8 checkpoints, extrapolated from
    the estimators of the first 2 (``more_checkpoints``), equals the fair CRPS measured on all 8 to 1 % (0.2 %
    here), while the 2-checkpoint fair CRPS itself is 15 % off; the limit is the between-checkpoint CRPS*."""
    from evaluation.metrics import crps_between_groups, crps_ensemble

    rng = np.random.default_rng(7)
    n, m_all, pairs = 200_000, 8, 2
    offsets = rng.normal(size=(m_all, 1, n))
    e = 0.4 * rng.normal(size=(m_all, pairs, n))
    members = offsets + np.concatenate([e, -e], axis=1)  # (checkpoint, member, point)
    y = 1.3 * rng.normal(size=n)

    def scores(m: int) -> tuple[float, float, float]:
        ens = members[:m].reshape(m * 2 * pairs, n)
        groups = np.repeat(np.arange(m), 2 * pairs)
        fair = float(crps_ensemble(ens, y).mean())
        star = float(crps_between_groups(ens, y, groups).mean())
        unperturbed = float(crps_ensemble(offsets[:m, 0], y).mean())
        return fair, star, unperturbed

    fair2, star2, c2 = scores(2)
    fair8, star8, _ = scores(8)
    res = {
        "lead_hours": [0.0, 24.0],
        "channels": ["z500"],
        "checkpoints": ["s0", "s1"],
        "forecasts": {
            "a_bred_x_ckpts": {"members": "8", "crps": {"z500": [0.0, fair2]}, "crps_between": {"z500": [0.0, star2]}},
            "c_ckpts_only": {"members": "2", "crps": {"z500": [0.0, c2]}},
        },
    }  # fmt: skip
    more = ex.more_checkpoints(res, counts=(8, None))
    rows = {r["checkpoints"]: r for r in more["rows"]}
    assert more["members_per_checkpoint"] == 4 and rows[2]["within_pair_share"] == pytest.approx(3 / 7)
    assert rows[8]["within_pair_share"] == pytest.approx(3 / 31) and rows["limit"]["within_pair_share"] == 0
    predicted8 = (1 + rows[8]["rel_diff"]["z500"][1]) * c2
    assert predicted8 == pytest.approx(fair8, rel=1e-2)
    assert abs(fair2 / fair8 - 1) > 0.1  # what the extrapolation corrects is much larger than its error
    assert (1 + rows["limit"]["rel_diff"]["z500"][1]) * c2 == pytest.approx(star2, rel=1e-12)
    assert star2 == pytest.approx(star8, rel=1e-2)
    assert rows[2]["share_a_below_c"] == float(fair2 < c2)
    assert rows[2]["rel_diff"]["z500"][0] is None  # lead 0: (c)'s CRPS is 0
    res["forecasts"]["a_bred_x_ckpts"]["members"] = "2"  # one member per checkpoint: nothing to extrapolate
    assert ex.more_checkpoints(res) is None


def test_win_shares_count_cells_from_one_day():
    """(a) lower in 3 of the 4 cells >= 24 h against (c) by the fair CRPS, in all 4 by CRPS*; lead 0
    and undefined values are not cells; (b) has no CRPS*, so its fair CRPS is the reference."""
    nan = None
    res = {
        "lead_hours": [0.0, 12.0, 24.0, 48.0],
        "channels": ["z500", "u500"],
        "forecasts": {
            "a_bred_x_ckpts": {
                "crps": {"z500": [0.0, 1.0, 2.0, 3.0], "u500": [0.0, 1.0, 5.0, 1.0]},
                "crps_between": {"z500": [nan, 0.5, 1.5, 2.5], "u500": [nan, 0.5, 3.0, 0.5]},
            },
            "c_ckpts_only": {
                "crps": {"z500": [0.0, 0.1, 2.5, 3.5], "u500": [0.0, 0.1, 4.0, 2.0]},
                "crps_between": {"z500": [nan, 0.1, 2.5, 3.5], "u500": [nan, 0.1, 4.0, 2.0]},
            },
            "b_bred_x_1ckpt": {"crps": {"z500": [0.0, 9.0, 1.0, nan], "u500": [0.0, 9.0, 9.0, 9.0]}},
        },
    }
    w = ex.win_shares(res)
    assert w["c_ckpts_only"] == {"fair": 0.75, "between": 1.0, "cells": 4}
    assert w["b_bred_x_1ckpt"] == {"fair": 2 / 3, "between": 2 / 3, "cells": 3}
    res["forecasts"]["a_bred_x_ckpts"].pop("crps_between")
    assert ex.win_shares(res)["c_ckpts_only"]["between"] is None
