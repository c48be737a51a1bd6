"""Command-line commands of the models layer (composed into `wxens` by workflows.cli).

``wxens train``: train one checkpoint (``--seed``) or several independent ones (``--seeds 0-7``,
side by side with ``--processes N``).
``wxens checkpoints list DIR``: the checkpoints below DIR with their validation skill.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="models commands")
checkpoints_app = typer.Typer(no_args_is_help=True, help="Inspect trained checkpoints.")


def train_command(
    out: Path = typer.Option(..., "--out", help="Checkpoint directory (with --seeds: parent of seed-<S>/)."),
    dataset: str = typer.Option(
        "builtin:sphere-swe", "--dataset", help="Dataset id, catalog name or zarr path."
    ),
    seed: int = typer.Option(None, "--seed", help="Train one checkpoint with this seed."),
    seeds: str = typer.Option(None, "--seeds", help="Train one checkpoint per seed: '0-7', '0,3,5'."),
    embed_dim: int = typer.Option(32, "--embed-dim", help="SFNO width."),
    num_layers: int = typer.Option(4, "--num-layers", help="SFNO depth."),
    scale_factor: float = typer.Option(
        1.0, "--scale-factor", help="Internal Gauss grid has ceil(nlat / scale) rows."
    ),
    lmax: int = typer.Option(None, "--lmax", help="Spectral truncation (degree, exclusive)."),
    mmax: int = typer.Option(None, "--mmax", help="Spectral truncation (order, exclusive); default lmax."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser iterations."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, cosine schedule)."),
    rollout_steps: str = typer.Option(
        "1",
        "--rollout-steps",
        help="Steps unrolled in fine-tuning; several (20,120) alternate per iteration.",
    ),
    rollout_iters: int = typer.Option(
        0, "--rollout-iters", help="Final iterations that use the unrolled loss."
    ),
    features: str = typer.Option(
        "doy,sinlat,static:orography",
        "--features",
        help="Extra inputs: doy, sinlat, static:<field> (comma list; '' for none).",
    ),
    spectral_loss: float = typer.Option(
        0.0, "--spectral-loss", help="Weight of the degree-normalised spectral error term (0: off)."
    ),
    spectral_loss_kind: str = typer.Option(
        "error",
        "--spectral-loss-kind",
        help="'error' (power of the error), 'amse' (amplitude + coherence) or 'amplitude' (amplitude only).",
    ),
    mse_steps: int = typer.Option(
        None, "--mse-steps", help="Rollouts: grid MSE over the first N steps only (default: every step)."
    ),
    loss: str = typer.Option(
        "mse", "--loss", help="'mse' (deterministic) or 'crps' (a noise-driven member generator, fair CRPS)."
    ),
    ensemble_members: int = typer.Option(
        2, "--ensemble-members", help="Members per window with --loss crps."
    ),
    noise_channels: int = typer.Option(
        0, "--noise-channels", help="Noise input fields, fresh every step (stochastic model; --loss crps)."
    ),
    noise_lmax: int = typer.Option(
        None, "--noise-lmax", help="Band limit of the noise, degrees < L (default: the network's --lmax)."
    ),
    train_years: str = typer.Option("2000-2006", "--train-years", help="Training years, 'A-B' or 'A'."),
    valid_years: str = typer.Option(
        "2007", "--valid-years", help="Validation years (skill file), 'A-B' or 'A'."
    ),
    init_from: str = typer.Option(
        None,
        "--init-from",
        help="Fine-tune: start from this checkpoint's weights (same architecture); "
        "'{seed}' in it is replaced by each seed (s1/seed-{seed}).",
    ),
    processes: int = typer.Option(
        1, "--processes", help="With --seeds: train up to N seeds side by side, one process each."
    ),
    save_every: int = typer.Option(100, "--save-every", help="Iterations between resumable training states."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (train on the GPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train SFNO checkpoint(s) from scratch (or fine-tune with --init-from); rerunning the same command resumes an interrupted run."""
    from data_catalog.errors import UserError
    from models.train import TrainConfig, parse_seeds, train_many

    if (seed is None) == (seeds is None):
        raise UserError("give exactly one of --seed S or --seeds LIST")
    cfg = TrainConfig(
        dataset=dataset,
        embed_dim=embed_dim,
        num_layers=num_layers,
        scale_factor=scale_factor,
        lmax=lmax,
        mmax=mmax,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        rollout_steps=_rollout_steps(rollout_steps),
        rollout_iters=rollout_iters,
        features=tuple(f.strip() for f in features.split(",") if f.strip()),
        save_every=save_every,
        threads=threads,
        device=device,
        train_years=_years(train_years, "--train-years"),
        valid_years=_years(valid_years, "--valid-years"),
        spectral_loss=spectral_loss,
        spectral_loss_kind=spectral_loss_kind,
        mse_steps=mse_steps,
        loss=loss,
        ensemble_members=ensemble_members,
        noise_channels=noise_channels,
        noise_lmax=noise_lmax,
        init_from=init_from or None,
    )
    if seed is not None:
        from dataclasses import replace

        from models.train import _init_for, train

        res = [
            train(replace(cfg, seed=seed, init_from=_init_for(cfg.init_from, seed)), out, progress=progress)
        ]
    else:
        res = train_many(cfg, parse_seeds(seeds), out, progress=progress, processes=processes)
    for r in res:
        what = "already trained" if r.skipped else f"trained in {r.seconds:.0f} s"
        typer.echo(f"{r.path}: {what}")


def _rollout_steps(text: str) -> int | tuple[int, ...]:
    from data_catalog.errors import UserError

    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--rollout-steps: expected integers like 8 or 20,120, not '{text}'") from None
    if not vals:
        raise UserError("--rollout-steps: give at least one length")
    return vals[0] if len(vals) == 1 else vals


def _years(text: str, flag: str) -> tuple[int, int]:
    """``"2000-2006"`` -> (2000, 2006); ``"2007"`` -> (2007, 2007)."""
    from data_catalog.errors import UserError

    try:
        a, _, b = text.strip().partition("-")
        lo, hi = int(a), int(b or a)
    except ValueError:
        raise UserError(f"bad {flag} '{text}': use e.g. 2000-2006 or 2007") from None
    if hi < lo:
        raise UserError(f"bad {flag} '{text}': the range is empty")
    return lo, hi


def list_command(
    directory: Path = typer.Argument(..., help="Folder holding checkpoint directories."),
    channel: str = typer.Option(
        None, "--channel", help="Channel whose skill to show (default z500 or first)."
    ),
) -> None:
    """List checkpoints with their validation RMSE at 48 h and 120 h (and whether a spectral filter is on)."""
    from rich.console import Console
    from rich.table import Table

    from models.checkpoint import list_checkpoints

    infos = list_checkpoints(directory)
    table = Table(title=f"checkpoints in {directory}")
    cols = (
        "path",
        "seed",
        "width x depth",
        "lmax",
        "noise",
        "filter",
        "train s",
        "channel",
        "RMSE 48 h",
        "RMSE 120 h",
    )
    for col in cols:
        table.add_column(col)
    for info in infos:
        ch = channel or ("z500" if "z500" in info.channels else (info.channels[0] if info.channels else "-"))
        a = info.architecture

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g}"

        table.add_row(
            str(info.path.relative_to(directory) if info.path != Path(directory) else info.path),
            str(info.seed),
            f"{a.get('embed_dim', '?')} x {a.get('num_layers', '?')}",
            str(a.get("lmax", "?")),
            info.noise,
            "yes" if info.spectral_filter else "-",
            fmt(info.training_seconds),
            ch,
            fmt(info.rmse(ch, 48)),
            fmt(info.rmse(ch, 120)),
        )
    Console(width=120).print(table)
    if not infos:
        typer.echo(f"no checkpoints found in {directory}")


def skill_command(
    directory: Path = typer.Argument(..., help="A checkpoint directory or a folder of them."),
    dataset: str = typer.Option("builtin:sphere-swe", "--dataset", help="Catalog name or zarr path."),
    years: str = typer.Option("2008-2009", "--years", help="Years to score, 'A-B' (held-out years)."),
    clim_years: str = typer.Option(
        "2000-2006", "--clim-years", help="Years of the monthly climatology reference (training years)."
    ),
    inits: int = typer.Option(16, "--inits", help="Init times, spread evenly over --years."),
    lead_hours: str = typer.Option("6,24,48,72,120,168,240", "--leads", help="Lead hours to show."),
    channel: str = typer.Option(None, "--channel", help="Only this channel (default all)."),
    json_out: Path = typer.Option(None, "--json", help="Also write every lead and channel to this file."),
) -> None:
    """Latitude-weighted RMSE of checkpoints vs persistence and climatology on chosen years."""
    import json

    from rich.console import Console
    from rich.table import Table

    from data_catalog.errors import UserError
    from models.checkpoint import list_checkpoints, load_checkpoint
    from models.data import load_years, monthly_climatology, open_dataset
    from models.skill import skill_table

    leads = [int(v) for v in lead_hours.split(",") if v.strip()]
    paths = [i.path for i in list_checkpoints(directory)]
    if not paths:
        raise UserError(f"no checkpoints in {directory}")
    models = [load_checkpoint(p) for p in paths]
    ds = open_dataset(dataset)
    chans = list(models[0].channels)
    block = load_years(ds, chans, _years(years, "--years"))
    clim = monthly_climatology(load_years(ds, chans, _years(clim_years, "--clim-years")))
    steps = max(leads) // 6
    results = {
        str(p): skill_table(m, block, clim, n_inits=inits, lead_steps=steps)
        for p, m in zip(paths, models, strict=True)
    }
    console = Console()
    for c in [channel] if channel else chans:
        if c not in chans:
            raise UserError(f"channel '{c}' not in {chans}")
        table = Table(title=f"{c}: latitude-weighted RMSE, {inits} inits in {years}")
        table.add_column("")
        for h in leads:
            table.add_column(f"{h} h")
        first = next(iter(results.values()))
        for p, r in results.items():
            table.add_row(Path(p).name, *(f"{r['rmse'][c][h // 6 - 1]:.4g}" for h in leads))
        for key in ("persistence", "climatology"):
            table.add_row(key, *(f"{first[key][c][h // 6 - 1]:.4g}" for h in leads))
        console.print(table)
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))


def calibrate_spectrum_command(
    directory: Path = typer.Argument(..., help="A checkpoint directory or a folder of them."),
    dataset: str = typer.Option("builtin:sphere-swe", "--dataset", help="Catalog name or zarr path."),
    years: str = typer.Option("2000-2006", "--years", help="Calibration years, 'A-B' (training years)."),
    inits: int = typer.Option(77, "--inits", help="Roll-outs per round, spread over --years."),
    steps: int = typer.Option(120, "--steps", help="Roll-out length in steps (120 x 6 h = 30 days)."),
    window: int = typer.Option(40, "--window", help="Last steps of each roll-out whose power is compared."),
    iters: int = typer.Option(24, "--iters", help="Calibration rounds."),
    eta: float = typer.Option(0.005, "--eta", help="Gain update per round: -eta/2 log(power ratio)."),
    max_change: float = typer.Option(0.01, "--max-change", help="Largest change of a log gain per round."),
    refine: bool = typer.Option(False, "--refine", help="Go on from each checkpoint's present filter."),
) -> None:
    """Calibrate each checkpoint's spectral filter (writes spectral_filter.json, rescores skill.json)."""
    from rich.console import Console

    from data_catalog.errors import UserError
    from models.checkpoint import list_checkpoints
    from models.spectral_filter import CalibrationSettings, calibrate_checkpoint

    settings = CalibrationSettings(
        years=_years(years, "--years"),
        n_inits=inits,
        steps=steps,
        window=window,
        iters=iters,
        eta=eta,
        max_change=max_change,
    )
    settings.check()
    paths = [i.path for i in list_checkpoints(directory)]
    if not paths:
        raise UserError(f"no checkpoints in {directory}")
    console = Console(highlight=False, soft_wrap=True)
    for p in paths:
        rec = calibrate_checkpoint(p, dataset, settings, refine=refine)
        first, last = rec["history"][0], rec["history"][-1]
        console.print(
            f"{p}: power ratio over days {(steps - window) * 6 // 24}-{steps * 6 // 24}, degrees 1-2/3 lmax: "
            f"{first['ratio_min']:.2f}-{first['ratio_max']:.2f} -> {last['ratio_min']:.2f}-{last['ratio_max']:.2f}; "
            f"gains {rec['smallest_gain']:.3f}-{rec['largest_gain']:.3f} per step ({rec['seconds']:.0f} s)"
        )


app.command("train")(train_command)
checkpoints_app.command("list")(list_command)
checkpoints_app.command("skill")(skill_command)
checkpoints_app.command("calibrate-spectrum")(calibrate_spectrum_command)


def register(root: typer.Typer) -> None:
    """Add ``train`` and ``checkpoints`` to the ``wxens`` command line."""
    root.command("train")(train_command)
    root.add_typer(checkpoints_app, name="checkpoints")
