"""Smoke test of the benchmark harness at its smallest sizes (figures 2, 3, 5 end to end; the report
renderer on every figure). No timing is asserted: only that the harness runs and that the numbers it
cross-checks against independent references (xskillscore, earthkit-meteo, the float32 original) agree."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import huge, report, suite


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    old = torch.get_num_threads()
    try:
        rc = suite.main(
            [
                "--quick",
                "--threads",
                "1",
                "--only",
                "spectra",
                "--only",
                "storage",
                "--out",
                str(out),
                "--workdir",
                str(out / "work"),
            ]
        )
    finally:
        torch.set_num_threads(old)
    return rc, json.loads((out / "results.json").read_text()), (out / "RESULTS.md").read_text()


def test_quick_suite_runs_and_writes_results(quick):
    rc, res, md = quick
    assert rc == 0, {k: v.get("error") for k, v in res["figures"].items()}
    assert set(res["figures"]) == {"spectra", "storage"}
    assert res["matmul_peak"]["gflops"] > 0
    for head in ("## 3. Spectra", "## 5. Storage", "CPU:", "command:"):
        assert head in md


def test_scoring_crps_equals_xskillscore(tmp_path):
    """Figure 2's two CRPS paths on a tiny synthetic store give the same standard CRPS."""
    import numpy as np

    from benchmarks import scoring

    fc, tr = scoring.write_stores(tmp_path, members=4, inits=1, leads=2, nlat=8, nlon=16)
    ours = scoring.wxens_score(fc, tr, fair=False)["crps"].sel(forecast="forecast", region="global")
    ref = scoring.xskillscore_crps(fc, tr)
    a = ours.transpose("variable", "prediction_timedelta").sel(variable=list(scoring.VARS)).values
    b = ref.transpose("variable", "prediction_timedelta").sel(variable=list(scoring.VARS)).values
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert scoring.forecast_bytes(fc) == 2 * 4 * 1 * 2 * 8 * 16 * 4


def test_efi_sot_equal_earthkit(quick):
    rows = [r for r in quick[1]["figures"]["spectra"]["rows"] if r["what"] in ("efi", "sot90")]
    assert len(rows) == 2
    for r in rows:
        assert r["max_abs_diff_vs_baseline"] < 1e-9 and r["nan_pattern_equal"]


def test_storage_errors_match_the_dtype(quick):
    rows = {(r["dtype"], r["keepbits"]): r for r in quick[1]["figures"]["storage"]["rows"]}
    assert all(v == 0.0 for v in rows[("float32", None)]["max_rel_error"].values())
    # round to nearest: relative error <= 2^-(k+1) (bfloat16: 7 stored mantissa bits -> 2^-8)
    assert all(v <= 2.0**-11 for v in rows[("float32", 10)]["max_rel_error"].values())
    assert all(v <= 2.0**-8 for v in rows[("bfloat16", None)]["max_rel_error"].values())
    assert (
        rows[("bfloat16", None)]["bytes_per_member_step"] < rows[("float32", None)]["bytes_per_member_step"]
    )


def test_report_renders_every_figure():
    res = {
        "command": "python -m benchmarks",
        "quick": False,
        "seconds": 1.0,
        "matmul_peak": {"gflops": 50.0, "gflops_median": 45.0, "n": 2048},
        "machine": {
            k: "x"
            for k in (
                "cpu",
                "cpu_flags",
                "logical_cores",
                "affinity_cores",
                "ram_gib",
                "torch_threads",
                "load_avg_1m",
                "python",
                "torch",
                "torch_harmonics",
                "numpy",
                "xarray",
                "zarr",
                "dask",
                "xskillscore",
                "earth2studio",
                "device",
                "date_utc",
            )
        }
        | {"gpu": "none"},
        "figures": {
            "ensemble": {"rows": [{"grid": "64x32", "speedup_vs_naive": 1.5}], "targets": {"a": False}},
            "huge": {
                "rows": [{"members": 64, "wall_s": 10.0, "repeat_wall_s": [10.0, 11.25]}],
                "repeats": 2,
                "hens_extrapolation": {
                    "members": 7424,
                    "from_members": 64,
                    "wall_s": 7200.0,
                    "spill_bytes": 1e10,
                    "note": "extrapolated",
                },
                "targets": {"b": True},
            },
        },
    }
    md = report.write_report(res)
    assert "## 1. Ensemble generation" in md and "**missed**" in md
    assert "Extrapolated" in md and "2.00 h" in md
    assert "ran 2 times" in md and "64: 10.0 / 11.2" in md
    assert "GPU: none on this machine" in md and "benchmarks/gpu/" in md


def test_hens_layout_and_cuda_guard():
    assert huge.layout_for(7424) == (29, 256)
    assert huge.layout_for(64) == (1, 64)
    with pytest.raises(ValueError):
        huge.layout_for(300)
    if not torch.cuda.is_available():
        assert suite.main(["--device", "cuda", "--only", "storage"]) == 2
