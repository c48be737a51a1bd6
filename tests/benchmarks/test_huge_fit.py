"""Figure 4's scaling summary (benchmarks.huge.summarize) on analytic timings."""

from __future__ import annotations

import pytest

from benchmarks import huge

STEPS = 40


def rows(sizes, wall, cpu=None, rss=None):
    cpu = cpu or wall
    out = []
    for m in sizes:
        w, c = wall(m), cpu(m)
        out.append(
            {
                "members": m,
                "steps": STEPS,
                "wall_s": w,
                "cpu_s": c,
                "s_per_member_step": w / (m * STEPS),
                "cpu_s_per_member_step": c / (m * STEPS),
                "peak_rss_mib": 1000.0,
                "peak_rss_run_mib": (rss or (lambda m: 900.0))(m),
                "peak_rss_anon_mib": 600.0,
                "spill_bytes": m * 1_343_488,
            }
        )
    return out


def test_affine_timings_fit_exactly_and_extrapolate():
    s = huge.summarize(rows([64, 256, 1024], lambda m: 12.0 + 0.2 * m, lambda m: 10.0 + 0.15 * m), STEPS)
    f = s["fit"]
    assert f["sizes"] == 3
    assert f["wall_fixed_s"] == pytest.approx(12.0) and f["wall_s_per_member"] == pytest.approx(0.2)
    assert f["cpu_fixed_s"] == pytest.approx(10.0) and f["cpu_s_per_member"] == pytest.approx(0.15)
    assert f["wall_max_rel_residual"] < 1e-12
    # equal marginal cost per member-step: 0.2 s per member / 40 steps
    lin = s["linearity"]["wall"]
    assert lin["marginal_s_per_member_step"] == pytest.approx([0.005, 0.005])
    assert lin["marginal_max_rel_deviation"] == pytest.approx(0.0, abs=1e-12)
    assert lin["s_per_member_step"][0] == pytest.approx((12.0 + 0.2 * 64) / (64 * STEPS))
    ex = s["hens_extrapolation"]
    assert ex["wall_s"] == pytest.approx(12.0 + 0.2 * 7424) and ex["cpu_s"] == pytest.approx(
        10.0 + 0.15 * 7424
    )
    assert ex["spill_bytes"] == pytest.approx(7424 * 1_343_488)
    t = s["targets"]
    assert t["wall time affine-linear in members (>= 3 sizes, max residual of the fit <= 15%)"] is True
    assert t["peak RSS during the run bounded (largest / smallest <= 1.5)"] is True


def test_two_sizes_are_not_a_fit():
    s = huge.summarize(rows([256, 1024], lambda m: 150.0 + 0.18 * m), STEPS)
    assert s["fit"] is None and s["hens_extrapolation"] is None
    assert s["linearity"]["cpu"]["marginal_max_rel_deviation"] is None  # one marginal cost: no check
    assert (
        s["targets"]["CPU time affine-linear in members (>= 3 sizes, max residual of the fit <= 15%)"] is None
    )


def test_quadratic_time_and_growing_memory_miss_the_targets():
    # t = m^2 / 100 at 64, 256, 1024: the line's residual at 64 members is far above 15%
    s = huge.summarize(rows([64, 256, 1024], lambda m: m * m / 100.0, rss=lambda m: 800.0 + 1.6 * m), STEPS)
    t = s["targets"]
    assert s["fit"]["cpu_max_rel_residual"] > 0.15
    assert t["CPU time affine-linear in members (>= 3 sizes, max residual of the fit <= 15%)"] is False
    # marginal cost between m0 and m1: (m1 + m0) / 100 / STEPS per member-step
    marg = s["linearity"]["cpu"]["marginal_s_per_member_step"]
    assert marg == pytest.approx([(256 + 64) / 100 / STEPS, (1024 + 256) / 100 / STEPS])
    assert s["linearity"]["cpu"]["marginal_max_rel_deviation"] == pytest.approx(1 - 320 / 1280)
    assert t["peak RSS during the run bounded (largest / smallest <= 1.5)"] is False  # 2438 / 902


def test_negative_slope_is_not_linear():
    s = huge.summarize(rows([64, 128, 256], lambda m: 100.0 - 0.01 * m), STEPS)
    assert s["fit"]["wall_s_per_member"] < 0 and s["hens_extrapolation"] is None
    assert (
        s["targets"]["wall time affine-linear in members (>= 3 sizes, max residual of the fit <= 15%)"]
        is False
    )


def test_best_of_repeats_keeps_fastest_times_and_worst_memory() -> None:
    a = {"members": 64, "wall_s": 12.0, "cpu_s": 12.5, "peak_rss_mib": 900.0, "peak_rss_anon_mib": None}
    b = {"members": 64, "wall_s": 10.5, "cpu_s": 10.9, "peak_rss_mib": 950.0, "peak_rss_anon_mib": 540.0}
    c = {"members": 64, "wall_s": 11.0, "cpu_s": 10.0, "peak_rss_mib": 910.0, "peak_rss_anon_mib": 560.0}
    row = huge.best_of([a, b, c])
    assert (row["wall_s"], row["cpu_s"]) == (10.5, 10.9)  # times of one run, the fastest by wall
    assert (row["peak_rss_mib"], row["peak_rss_anon_mib"]) == (950.0, 560.0)
    assert row["repeat_wall_s"] == [12.0, 10.5, 11.0]
    assert huge.best_of([a])["wall_s"] == 12.0 and a.get("repeat_wall_s") is None  # inputs untouched
