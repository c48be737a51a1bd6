"""A self-contained HTML report: ``report.html`` plus its PNG figures in one folder.

All text inserted into the HTML (variable names, labels, attributes, numbers) is escaped; figures are
referenced by relative file name, so the folder can be copied or archived as is. ``report.html`` is
written last and atomically: a folder without it is an unfinished report.
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from data_catalog.errors import UserError
from evaluation import plots
from evaluation.score import open_scores

log = logging.getLogger(__name__)

__all__ = ["write_report"]

_BASELINE_ORDER = ("climatology", "probabilistic_climatology", "persistence")
_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f2f2f2}figure{display:inline-block;margin:0.5em;vertical-align:top}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}"""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


class _Figures:
    """Saves figures into ``out_dir`` and remembers (file, caption, section)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.items: list[tuple[str, str, str]] = []

    def add(self, section: str, stem: str, caption: str, make: Any, *args: Any, **kw: Any) -> None:
        try:
            fig: Figure = make(*args, **kw)
        except UserError as exc:
            log.warning("figure %s skipped: %s", stem, exc)
            return
        name = f"{_safe(stem)}.png"
        fig.savefig(self.out_dir / name, dpi=90)
        self.items.append((name, caption, section))


def _table(df: pd.DataFrame, fmt: str = "{:.4g}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    rows = []
    for idx, row in df.iterrows():
        cells = "".join(
            f"<td>{html.escape(fmt.format(v) if isinstance(v, float | np.floating) and np.isfinite(v) else str(v))}</td>"
            for v in row.to_numpy()
        )
        rows.append(f"<tr><th>{html.escape(str(idx))}</th>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_report(
    scores: xr.Dataset | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    forecast: xr.Dataset | str | os.PathLike[str] | None = None,
    truth: xr.Dataset | str | os.PathLike[str] | None = None,
    *,
    baseline: str | None = None,
    variables: Sequence[str] | None = None,
    region: str = "global",
    point: tuple[float, float] = (50.0, 10.0),
    title: str = "wxens forecast report",
) -> Path:
    """Write ``out_dir/report.html`` and its PNGs; returns the path of ``report.html``.

    Sections: scorecards against ``baseline`` (default: the first of climatology, probabilistic
    climatology, persistence found in ``scores``), CRPS / RMSE / spread / spread-skill curves per
    variable, rank histograms, reliability diagrams (if scored with thresholds); with ``forecast``: maps
    of ensemble mean and spread and a plume at ``point`` (lat, lon); with ``forecast`` and ``truth``:
    spectra and EFI maps.
    """
    from evaluation.score import open_forecast, open_truth
    from evaluation.scorecard import scorecard

    ds = scores if isinstance(scores, xr.Dataset) else open_scores(scores)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "report.html"
    if final.exists():
        final.unlink()  # never leave an old report beside new figures
    labels = [str(v) for v in ds["forecast"].values] if "forecast" in ds.dims else ["forecast"]
    main = labels[0]
    if baseline is None:
        baseline = next(
            (b for b in _BASELINE_ORDER if b in labels[1:]), labels[1] if len(labels) > 1 else None
        )
    elif baseline not in labels:
        raise UserError(f"baseline {baseline!r} not among the scored forecasts: {', '.join(labels)}")
    all_vars = [str(v) for v in ds["variable"].values]
    variables = list(variables or all_vars)
    unknown = [v for v in variables if v not in all_vars]
    if unknown:
        raise UserError(f"variable(s) {', '.join(unknown)} not in the scores ({', '.join(all_vars)})")
    if region not in [str(r) for r in ds["region"].values]:
        raise UserError(f"region {region!r} not in the scores")
    figs = _Figures(out)
    cards: list[tuple[str, pd.DataFrame]] = []
    if baseline is not None:
        for metric in ("crps", "rmse"):
            if metric in ds:
                card = scorecard(ds, baseline=baseline, metric=metric, forecast=main, region=region)
                cards.append((metric, card))
                figs.add(
                    "Scorecards",
                    f"scorecard_{metric}",
                    f"{metric.upper()} skill of {main} vs {baseline} ({region})",
                    plots.plot_scorecard,
                    card,
                )
    for v in variables:
        figs.add(
            "Scores against lead time",
            f"crps_{v}",
            f"{v}: CRPS of every forecast",
            plots.plot_metric_vs_lead,
            ds,
            "crps",
            v,
            region,
        )
        figs.add(
            "Scores against lead time",
            f"rmse_spread_{v}",
            f"{v}: RMSE and spread of {main}",
            plots.plot_skill_spread,
            ds,
            v,
            region,
            main,
        )
        figs.add(
            "Scores against lead time",
            f"ssr_{v}",
            f"{v}: spread/skill ratio",
            plots.plot_metric_vs_lead,
            ds,
            "spread_skill_ratio",
            v,
            region,
            [main],
        )
        if "rank_histogram" in ds:
            figs.add(
                "Calibration",
                f"rank_{v}",
                f"{v}: rank histogram of {main}, last lead",
                plots.plot_rank_histogram,
                ds,
                v,
                region,
                main,
            )
        if "reliability_observed_frequency" in ds and "threshold" in ds.dims:
            tv = ds["threshold_value"].sel(variable=v).values
            for q in np.flatnonzero(np.isfinite(tv)):
                figs.add(
                    "Calibration",
                    f"reliability_{v}_{q}",
                    f"{v} > {tv[q]:g}: reliability of {main}",
                    plots.plot_reliability,
                    ds,
                    v,
                    region,
                    int(q),
                    main,
                )
    fc = tr = None
    if forecast is not None:
        fc = open_forecast(forecast)
        tr = open_truth(truth, variables) if truth is not None else None
        fvars = [v for v in variables if v in plots.normalize_forecast(fc).data_vars]
        for v in fvars:
            figs.add(
                "Ensemble fields",
                f"maps_{v}",
                f"{v}: ensemble mean and spread, first init, last lead",
                plots.plot_ensemble_maps,
                fc,
                v,
            )
            figs.add(
                "Ensemble fields",
                f"plume_{v}",
                f"{v}: plume at {point[0]:g}N {point[1]:g}E",
                plots.plot_plume,
                fc,
                tr,
                v,
                point[0],
                point[1],
            )
            if tr is not None:
                try:
                    figs.add(
                        "Spectra and extremes",
                        f"spectra_{v}",
                        f"{v}: power spectra by lead",
                        plots.plot_spectra,
                        fc,
                        tr,
                        v,
                    )
                except (ValueError, RuntimeError) as exc:  # e.g. a regional grid has no spherical spectrum
                    log.warning("spectra of %s skipped: %s", v, exc)
                figs.add(
                    "Spectra and extremes",
                    f"efi_{v}",
                    f"{v}: extreme forecast index, last lead",
                    plots.plot_efi_map,
                    fc,
                    tr,
                    v,
                )

    # ---- HTML ------------------------------------------------------------------------------------
    e = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>"
    ]
    parts.append(f"<h1>{e(title)}</h1>")
    nm = (
        ds["n_members"].to_series().to_dict()
        if "n_members" in ds and "forecast" in ds["n_members"].dims
        else {}
    )
    meta = [f"forecasts: {', '.join(f'{k} ({int(nm[k])} members)' if k in nm else k for k in labels)}"]
    meta.append(f"variables: {', '.join(all_vars)}; region: {region}")
    meta.append(
        f"fair CRPS: {'yes' if int(ds.attrs.get('fair', 1)) else 'no'}; {ds.attrs.get('time_mean', '')}"
    )
    parts.append("<ul>" + "".join(f"<li>{e(str(m))}</li>" for m in meta) + "</ul>")
    summary = ds[[m for m in ("crps", "rmse", "spread", "spread_skill_ratio") if m in ds]].sel(region=region)
    if "forecast" in summary.dims:
        summary = summary.sel(forecast=main)
    if "time" in summary.dims:
        summary = summary.mean("time")
    parts.append(f"<h2>Summary of {e(main)} ({e(region)})</h2>")
    for v in variables:
        sv = summary.sel(variable=v)
        df = pd.DataFrame(
            {m: sv[m].values for m in sv.data_vars},
            index=pd.Index(
                (sv["prediction_timedelta"].values / np.timedelta64(1, "h")).astype(float), name="lead (h)"
            ),
        )
        parts.append(f"<h3>{e(v)}</h3>" + _table(df))
    for metric, card in cards:
        parts.append(f"<h2>{e(metric.upper())} scorecard vs {e(str(baseline))}</h2>")
        parts.append(
            "<p>1 - score/baseline score: above 0 is better than the baseline.</p>" + _table(card, "{:.3f}")
        )
    section = None
    for name, caption, sec in figs.items:
        if sec != section:
            parts.append(f"<h2>{e(sec)}</h2>")
            section = sec
        parts.append(
            f"<figure><img src='{e(name, quote=True)}' alt='{e(caption, quote=True)}'><figcaption>{e(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    tmp = out / ".report.html.tmp"
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, final)
    log.info("wrote report %s with %d figures", final, len(figs.items))
    return final
