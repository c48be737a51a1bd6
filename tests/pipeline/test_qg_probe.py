"""The bred-vector probe on the QG world (pipeline.qg_probe), at its smallest size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from data_catalog.errors import UserError
from pipeline.qg_probe import bred_vs_noise, main


def test_probe_scores_both_perturbations_at_their_amplitude(capsys) -> None:
    """Random and bred perturbations start at the same amplitude (the RMS of every perturbation within
    1e-9 of it, alpha x the control's 48 h RMSE); CRPS grows with lead; the CLI prints the table."""
    res = bred_vs_noise(inits=2, pairs=2, cycles=(0, 2), lead_days=(1, 2), spacing_days=3, spinup_days=20)
    assert np.isclose(res["amplitude"], 0.35 * res["control_rmse_48h"])
    assert set(res["crps"]) == {0, 2}
    for k in (0, 2):
        assert res["initial_rms"][k] < 1e-9
        assert 0 < res["crps"][k][1] < res["crps"][k][2]
    assert res["crps"][0] != res["crps"][2]
    assert (
        main(
            [
                "--inits",
                "1",
                "--pairs",
                "1",
                "--cycles",
                "0,1",
                "--climate-days",
                "4",
                "--growth-days",
                "3",
                "--spinup-days",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| random noise |" in out and "| bred, 1 cycles |" in out and "e-folding" in out


def test_bad_input_is_one_line() -> None:
    """Bad ``--cycles`` / sizes are refused before any integration; the module entry prints one
    ``error:`` line and exits 2."""
    with pytest.raises(UserError, match="comma-separated integers"):
        main(["--cycles", "0,x"])
    with pytest.raises(UserError, match=">= 0"):
        main(["--cycles", "0,-3"])
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.qg_probe", "--pairs", "0"], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cycles must be >= 0, --inits and --pairs >= 1"
    ]
