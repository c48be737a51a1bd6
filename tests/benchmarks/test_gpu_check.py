"""The prepared GPU check (``python -m benchmarks.gpu_check``) run on the CPU: it must work end to end
before a session spends its few GPU minutes on it. On the CPU bf16 autocast is a no-op, so the bf16
rollout must equal the float32 one exactly; the RMSE it reports must be the shipped checkpoints' skill."""

from __future__ import annotations

import json

import pytest
import torch

from data_catalog.errors import UserError

pytestmark = pytest.mark.xdist_group("pretrained")  # shares the embedded world and shipped checkpoints


def test_gpu_check_runs_on_cpu_from_a_subset(tmp_path):
    from benchmarks import gpu_check

    sub = tmp_path / "subset.zarr"
    assert gpu_check.main(["--write-subset", str(sub)]) == 0
    threads = torch.get_num_threads()
    try:
        argv = ["--device", "cpu", "--analysis", str(sub), "--quick", "--members", "8", "--batches", "1,2",
                "--inline-members", "8", "--inits", "2", "--out", str(tmp_path / "out")]  # fmt: skip
        assert gpu_check.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    b = res["bf16"]
    assert len(b["checkpoints"]) == 4 and b["max_rel_diff_to_5_days"] == 0.0 and b["bf16_ok"]
    for r in b["checkpoints"]:
        z = [r["float32_rmse"][str(h)]["z500"] for h in gpu_check.LEADS_H]
        # the shipped checkpoints' z500 RMSE (docs/models.md: ~100 at 1 day, ~455 at 5 days) grows with lead
        assert 40 < z[0] < 200 and z[0] < z[1] < z[2] and z[2] < 900
        assert r["float32_finite"] and r["bf16_finite"]
    eng = res["throughput"]["engine"]
    assert [(r["members"], r["bf16"]) for r in eng] == [(8, False), (8, True)]
    assert all(r["complete"] and r["member_steps_per_s"] > 0 for r in eng)
    inl = res["throughput"]["inline"]
    assert [(r["inline_members"], r["on_device"]) for r in inl] == [(8, False), (8, True)]
    # on the CPU the engine reduces with NumPy either way (the device path is tested in tests/pipeline)
    assert all(r["complete"] and r["crps_max_rel_diff"] == 0.0 for r in inl)
    model = res["throughput"]["model"]
    assert {(r["grid"], r["batch"], r["bf16"]) for r in model} == {
        (g, bt, f) for g in ("64x32", "128x64") for bt in (1, 2) for f in (False, True)
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_check_without_cuda_is_one_error_line():
    from benchmarks import gpu_check

    with pytest.raises(UserError, match="no CUDA device"):
        gpu_check.main(["--device", "cuda"])
