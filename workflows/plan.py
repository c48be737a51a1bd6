"""``wxens run WORKFLOW --explain``: what a workflow will do, before it does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workflows.schema import Workflow


def describe_plan(workflow: Workflow, run_dir: Path | None = None) -> str:
    """Stages, shards, ensemble size and work volume of ``workflow`` (and the run's status if it exists)."""
    f = workflow.forecast
    target = Path(run_dir).resolve() if run_dir else workflow.resolved_run_dir()
    inits = f.init_times.expand()
    steps = f.steps(workflow.data.time_step)
    lines = [
        f"workflow {workflow.name!r} -> {target}",
        f"data: {workflow.data.source} (time step {workflow.data.time_step})",
        f"checkpoints: {', '.join(f.checkpoints)}"
        + (f" (first {f.max_checkpoints})" if f.max_checkpoints else ""),
        f"members per checkpoint: {f.members} ({f.perturbation.method}"
        + (f", {f.n_pairs()} +/- pairs" if f.n_pairs() else "")
        + ")",
        f"init times: {len(inits)} ({np.datetime_as_string(inits[0], unit='h')} .. "
        f"{np.datetime_as_string(inits[-1], unit='h')})",
        f"lead: {steps} steps",
        *(
            [
                f"members in total: {f.max_checkpoints} checkpoints x {f.members} = {f.max_checkpoints * f.members}"
            ]
            if f.max_checkpoints
            else []
        ),
        f"member-steps per checkpoint: {f.members * len(inits) * steps}",
        "stages:",
    ]
    for stage in workflow.enabled_stages():
        r = workflow.resources.for_stage(stage)
        lines.append(
            f"  {stage:<14} shards={r.shards} partition={r.partition or '-'} time={r.time} "
            f"gpus={r.gpus} cpus={r.cpus} mem={r.mem}"
        )
    if (target / "config.yaml").is_file():
        from workflows.status import format_status, run_status

        lines.append("")
        lines.append(format_status(run_status(target, workflow=workflow)))
    return "\n".join(lines)
