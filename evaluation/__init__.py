"""wxens evaluation: metric kernels, region masks, and the xarray/dask front end (scores, baselines,
scorecards, plots, report).

Names are imported on first use so that ``import evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # kernels (evaluation.metrics)
    "crps_ensemble": "evaluation.metrics",
    "crps_components": "evaluation.metrics",
    "ensemble_mean_rmse": "evaluation.metrics",
    "ensemble_spread": "evaluation.metrics",
    "spread_skill_ratio": "evaluation.metrics",
    "rank_histogram": "evaluation.metrics",
    "brier_score": "evaluation.metrics",
    "reliability_curve": "evaluation.metrics",
    "roc_curve": "evaluation.metrics",
    "roc_auc": "evaluation.metrics",
    "EnsembleAccumulator": "evaluation.metrics",
    # regions
    "region_mask": "evaluation.regions",
    "region_mean": "evaluation.regions",
    # front end
    "score_forecast": "evaluation.score",
    "open_scores": "evaluation.score",
    "write_scores": "evaluation.score",
    "scores_to_frame": "evaluation.score",
    "climatology": "evaluation.baselines",
    "probabilistic_climatology": "evaluation.baselines",
    "persistence": "evaluation.baselines",
    "deterministic_member": "evaluation.baselines",
    "make_baseline": "evaluation.baselines",
    "scorecard": "evaluation.scorecard",
    "relative_score": "evaluation.scorecard",
    "write_report": "evaluation.report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = list(_LAZY)
