"""Write docs/reliability.md from the rows the reliability tests recorded.

    WXENS_RELIABILITY_DOC=1 .venv/bin/python -m pytest -p no:xdist -q tests/reliability -m "slow or not slow"
    .venv/bin/python tests/reliability/make_doc.py

Rows come from ``tests/reliability/.results/*.json`` (written only by tests that passed, after their
assertions); a planned trial without a row is reported as not recovered.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / ".results"
DOC = HERE.parents[1] / "docs" / "reliability.md"

INTRO = """\
# Reliability and security

What `tests/reliability/` proves, with real processes, real zarr stores and the real `wxens` command
line (toy `ForecastModel` checkpoints of `pipeline.testing` on a synthetic 32x64 analysis; a tiny SFNO
for checkpoint cases; an 8x16 eight-year dataset for training). The tables below are generated from
the test parameters and results:

```bash
WXENS_RELIABILITY_DOC=1 .venv/bin/python -m pytest -p no:xdist -q tests/reliability -m "slow or not slow"
.venv/bin/python tests/reliability/make_doc.py      # rewrites this page
.venv/bin/python -m pytest -p no:xdist -q tests/reliability   # the CI part (no soak)
```

Faults are injected by `tests/reliability/faultrun.py`, which runs `wxens ARGS` in a fresh process
after patching one library function *in that child process only* (`WXENS_FAULT=kill:step=N`,
`torn:chunk=N`, `kill:manifest=N`, `enospc:chunk=N`, ...): the libraries carry no fault hooks.
A kill is `SIGKILL` of the process itself at the N-th call, N drawn from a seeded generator
(`random.Random(20261126)` in CI, `random.Random(7)` for the soak). "Recovered" means: the restart
exits 0, every work unit has exactly one manifest entry whose checksums verify, `COMPLETE` is
written, and **every chunk file of the forecast store and of the merged inline scores is bitwise
equal** to an uninterrupted run. "Data lost" counts trials where any of that failed.

Cost: the CI part (93 tests) took 140 s of CPU (user + sys, child processes included; 286 s wall on
the 2-core development machine shared at load ~9); the soak (`-m slow`: 20 hook-placed and 5 timed
kills, a second training kill pair, a second scoring kill) about 12 more minutes of wall time there.
"""


def _load(name: str) -> list[dict]:
    """Rows of one result file, duplicates dropped, temporary paths shown as ``<tmp>``."""
    p = RESULTS / f"{name}.json"
    rows = json.loads(p.read_text()) if p.is_file() else []
    out: list[dict] = []
    for r in rows:
        r = {
            k: re.sub(r"/tmp/pytest-of-[^/]+/pytest-[^/]+/[^/ ]+", "<tmp>", v) if isinstance(v, str) else v
            for k, v in r.items()
        }
        if r not in out:
            out.append(r)
    return out


def _kind(fault: str) -> str:
    return fault.split("=")[0] if "=" in fault else fault


DESCRIBE = {
    "kill:step": "SIGKILL during a model step",
    "torn:chunk": "SIGKILL while a chunk is half written in place (torn chunk file on disk)",
    "kill:chunk": "SIGKILL right after a chunk write (store or merged scores)",
    "kill:manifest": "SIGKILL during a manifest update (temp written, not renamed)",
    "kill:record": "SIGKILL after a unit's chunks, before its checksums",
}


def faults_table() -> list[str]:
    from test_faults import _kill_trials

    lines = [
        "## Faults injected",
        "",
        "| fault | trials | recovered | data lost | notes |",
        "|---|---|---|---|---|",
    ]
    for label, plan, rows in (
        ("CI", _kill_trials(5, seed=20261126), _load("kill_forecast_ci")),
        (
            "soak (slow)",
            _kill_trials(20, seed=7),
            [r for r in _load("kill_forecast_soak") if "=" in r["fault"]],
        ),
    ):
        got = {r["fault"]: r for r in rows}
        per: dict[str, list] = defaultdict(list)
        for a, p, k in plan:
            f = f"{a}:{p}={k}"
            per[f"{a}:{p}"].append(got.get(f))
        for kind, rs in per.items():
            ok = [r for r in rs if r is not None]
            if not rows:
                lines.append(f"| {DESCRIBE[kind]} ({label}) | {len(rs)} | not run | - | |")
                continue
            note = ", ".join(f"N={r['fault'].split('=')[1]}: {r['units_done_at_kill']}/8 done" for r in ok)
            lines.append(
                f"| {DESCRIBE[kind]} ({label}) | {len(rs)} | {len(ok)} | {len(rs) - len(ok)} | {note} |"
            )
    timed = [r for r in _load("kill_forecast_soak") if "=" not in r["fault"]]
    if timed:
        k = sum(bool(r["killed"]) for r in timed)
        lines.append(
            f"| SIGKILL after a seeded random delay 3-12 s (soak) | {len(timed)} | {len(timed)} | 0 | {k} were killed "
            "mid-run (start-up, store creation or units) |"
        )
    for r in _load("same_shard"):
        lines.append(
            f"| {r['fault']} (misconfigured array job) | 1 | 1 | 0 | exit codes {r['exit_codes']}, units computed "
            f"{r['units_computed']} (sum 4 = the shard's units: none twice); rerun completes bitwise |"
        )
    for r in _load("corruption"):
        lines.append(
            f"| {r['fault']} | 1 | 1 | 0 | {r['units']} units flagged by `wxens verify` (exit 1) and recomputed |"
        )
    for r in _load("enospc"):
        lines.append(
            f"| {r['fault']} | 1 | 1 | 0 | `{r['error']}`; {r['units_kept']} unit(s) kept, restart completes bitwise |"
        )
    for r in _load("nonfinite"):
        lines.append(
            f"| {r['fault']} | 1 | 1 | 0 | {r['flagged']} of {r['of']} members flagged (`nonfinite_step`, manifest, "
            "summary), NaN from that step, excluded from inline scores; run completes |"
        )
    for r in _load("kill_train"):
        lines.append(
            f"| {r['fault']} | 1 | 1 | 0 | resumed from iteration {r['resumed_from']}; weights sha256 equal to an "
            "uninterrupted run |"
        )
    for r in _load("kill_score"):
        lines.append(
            f"| {r['fault']} | 1 | 1 | 0 | left after kill: {r['left_after_kill']}; rerun: same scores.nc (identical) "
            f"and CSV bytes; {r['stray_temp_dirs']} hidden temp dir left |"
        )
    rows_ = [ln.split("|") for ln in lines[4:]]
    trials = sum(int(c[2]) for c in rows_)
    rec = sum(int(c[3]) for c in rows_ if c[3].strip().isdigit())
    lost = sum(int(c[4]) for c in rows_ if c[4].strip().isdigit())
    lines.append(f"| **total** | **{trials}** | **{rec}** | **{lost}** | |")
    return lines


def bad_inputs_table() -> list[str]:
    from test_bad_inputs import CASES

    rows = {r["case"]: r for r in _load("bad_inputs")}
    lines = [
        "## Bad inputs",
        "",
        f"{len(CASES)} cases through `workflows.cli.main` (the `wxens` entry point), each asserting exit != 0, "
        "stderr exactly one line starting with `error:` (after `wxens run`'s `[i/N] stage ...` progress "
        "lines), no traceback, the expected fragment in that line, and no `COMPLETE`, manifest entry or "
        "stage record marked done; the NaN case again through a `wxens` subprocess "
        "(`test_bad_input_through_the_console_script`). Temporary paths are shown as `<tmp>`.",
        "",
        "| # | bad input | exit | error line |",
        "|---|---|---|---|",
    ]
    for i, (name, *_rest) in enumerate(CASES, 1):
        r = rows.get(name)
        err = r["error"].replace("|", "\\|") if r else "(not recorded)"
        lines.append(f"| {i} | {name} | {r['exit'] if r else '-'} | `{err}` |")
    lines += [
        "",
        "Latitude stored south to north is *not* an error: `test_latitude_reversed_is_normalised` runs the "
        "same forecast from an ascending and a descending store and finds every chunk bitwise equal "
        "(the store is written north to south).",
    ]
    return lines


def security_table() -> list[str]:
    lines = ["## Security", "", "| check | result |", "|---|---|"]
    for r in _load("security_pickle"):
        lines.append(
            f"| {r['case']} (payload would `touch` a file) | refused, nothing executed: "
            f"`{r['error'].replace('`', chr(39))}` |"
        )
    lines += [
        "| same payload as `weights.pt/.pth/.tar` through `models.checkpoint.load_checkpoint` (directory or "
        "file) | `UserError`, marker file absent; control: `torch.load(weights_only=False)` does run it |",
        "| planted `train_state.pt` with the payload, `wxens train` resumes | one-line error, nothing executed |",
        "| `!!python/object/apply:os.system`, `object/new`, `name` tags in workflow, forecast config, "
        "catalog | `not valid YAML` (safe loaders), nothing executed |",
    ]
    for r in _load("security_shell"):
        lines.append(
            f"| `wxens submit` with a fake `sbatch` that runs the job script: {r['case']} | every value reaches "
            "sbatch and `wxens` as one unchanged argument; 0 commands executed |"
        )
    lines.append(
        "| catalog locations `../x`, `data/../../x`, `file://../x`, ... | refused (`escapes the catalog folder`); "
        "an absolute path is accepted as the user's explicit choice |"
    )
    for r in _load("permissions"):
        lines.append(
            f"| `wxens forecast` and `wxens submit --dry-run` under umask 000 | {r['world_writable']} world-writable "
            "paths in run dir, store, manifest, locks, inline scores, jobs, logs |"
        )
    return lines


FINDINGS = """\
## Defects found and fixed

| where | defect | fix (commit) |
|---|---|---|
| `workflows/cli.py` | `typer.Exit(n)` was swallowed (click returns it without standalone mode): `wxens verify` of a corrupted run and `wxens forecast` with locked units exited **0** | `fix(workflows): wxens exits with the code of typer.Exit` |
| `workflows/cli.py` | a full disk ended in a 40-line traceback | `fix(workflows): a full disk ... ends in one 'error:' line and exit 1` |
| `workflows/cli.py` | with umask 000 every run dir, store chunk, manifest entry and lock was 0777/0666 | `fix(workflows): the wxens CLI masks world-write (umask \\|= 002)` |
| `pipeline/engine.py` | NaN in the initial conditions gave all-NaN members and a run marked `COMPLETE` | `fix(pipeline): NaN initial conditions are a one-line error` |
| `pipeline/config.py` | malformed YAML, a `!!python` tag or `2008-13-45` in a forecast config raised tracebacks; unknown keys had no hint | `fix(pipeline): ... did-you-mean hint`, `fix(pipeline): impossible init dates ...` |

## Known limits

* Library callers (`pipeline.run_forecast` from a notebook) keep their own umask; only the CLI masks
  world-write.
* A SIGKILL inside zarr's own write leaves a `*.partial` temp file in the chunk folder (zarr never
  reads it) and a killed `wxens score` leaves a hidden `.scores.nc.*` temp folder; reruns do not
  remove them.
* `wxens score` without `--variables` scores the variables forecast and truth share, silently
  skipping a forecast variable the truth lacks (with `--variables` it is an error).
* A catalog location through a symlink that points outside the catalog folder is followed (paths are
  checked after normalisation, not after resolving links).
* Bitwise equality of a resumed run holds on the same device and thread count (`torch.set_num_threads(1)`
  here); a resumed training run is bitwise equal on CPU with `--threads 1`.
"""


def main() -> None:
    parts = [INTRO, *faults_table(), "", *bad_inputs_table(), "", *security_table(), "", FINDINGS]
    DOC.write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
