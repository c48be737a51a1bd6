"""Property-based tests: the config loaders and the catalog parser never raise anything but a valid
result or a one-line :class:`UserError`, whatever the input (hypothesis)."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_catalog.errors import UserError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORKFLOW_KEYS = [
    "name", "run_dir", "seed", "data", "train", "skill", "model_climate", "forecast", "score", "report",
    "resources", "source", "variables", "members", "init_times", "lead_time", "lead_steps", "perturbation",
    "method", "n_pairs", "alpha", "times", "start", "end", "step", "checkpoints", "batch_size", "output",
    "dtype", "shards", "partition", "time", "gpus", "baselines", "thresholds", "memebrs", "enabled",
]  # fmt: skip
FORECAST_KEYS = [
    "analysis", "init_times", "checkpoints", "model_loader", "perturbation", "lead_steps", "batch_size",
    "device", "bf16", "output", "inline", "seed", "progress", "method", "n_pairs", "alpha", "cycles",
    "seed_channel", "boundary", "amplitude", "nonnegative", "path", "variables", "members", "dtype",
    "keepbits", "keep", "enabled", "crps", "start", "stop", "every_hours", "forecast",
]  # fmt: skip
CATALOG_KEYS = [
    "version", "entries", "location", "description", "variables", "time", "time_step", "grid", "remote",
    "storage_options", "start", "end", "era5", "../x", "a b",
]  # fmt: skip

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=20),
    st.sampled_from(["2008-01-01", "2008-13-45", "6h", "10D", "-1h", "0h", "bred", "none", "auto", "3/2",
                     "pretrained:sphere-swe", "builtin:sphere-swe", "../../etc", "float16", "x:y"]),
)  # fmt: skip


def _tree(keys: list[str]) -> st.SearchStrategy:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=8), st.integers(-3, 3), st.booleans())
    return st.recursive(
        _scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(key, children, max_size=6),
        ),
        max_leaves=25,
    )


def _set(doc: dict, path: tuple, value) -> dict:
    node = doc
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value
    return doc


def _mutated(base: dict, paths: list[tuple], keys: list[str]) -> st.SearchStrategy:
    """A valid document with up to three of its values (or new keys) replaced by random trees."""
    import copy

    edit = st.tuples(st.sampled_from(paths), _tree(keys))
    return st.lists(edit, min_size=1, max_size=3).map(
        lambda edits: [_set(d, p, v) for d in [copy.deepcopy(base)] for p, v in edits][-1]
    )


BASE_FORECAST = {
    "analysis": "/nonexistent/analysis.zarr",
    "init_times": ["2008-01-02T00"],
    "checkpoints": ["/nonexistent/ckpt"],
    "perturbation": {"method": "bred", "n_pairs": 2},
    "lead_steps": 2,
    "output": {"variables": ["z500"]},
}
FORECAST_PATHS = [
    ("init_times",), ("init_times", "start"), ("init_times", "stop"), ("init_times", "every_hours"),
    ("checkpoints",), ("perturbation", "n_pairs"), ("perturbation", "method"), ("perturbation", "amplitude"),
    ("perturbation", "alpha"), ("perturbation", "cycles"), ("lead_steps",), ("batch_size",), ("seed",),
    ("output", "dtype"), ("output", "keepbits"), ("output", "members"), ("output", "keep"),
    ("inline", "enabled"), ("inline", "thresholds"), ("lead_step",), ("output", "variabels"),
]  # fmt: skip
BASE_WORKFLOW = {
    "name": "p",
    "forecast": {"members": 4, "init_times": ["2008-01-02"], "lead_time": "2D"},
}
WORKFLOW_PATHS = [
    ("name",), ("seed",), ("run_dir",), ("forecast", "members"), ("forecast", "init_times"),
    ("forecast", "init_times", "start"), ("forecast", "init_times", "step"), ("forecast", "lead_time"),
    ("forecast", "lead_steps"), ("forecast", "perturbation", "method"), ("forecast", "perturbation", "n_pairs"),
    ("forecast", "checkpoints"), ("data", "time_step"), ("data", "train", "start"), ("score", "dask", "mode"),
    ("resources", "partition"), ("resources", "time"), ("resources", "stages", "score", "shards"),
    ("train", "seeds"), ("forecast", "memebrs"), ("skill", "lead_hours"),
]  # fmt: skip


def _dump(value) -> str | None:
    try:
        return yaml.safe_dump(value)
    except yaml.YAMLError:
        return None


@SETTINGS
@given(st.one_of(_tree(WORKFLOW_KEYS), _mutated(BASE_WORKFLOW, WORKFLOW_PATHS, WORKFLOW_KEYS)))
def test_workflow_loader_never_tracebacks(doc):
    from workflows.schema import Workflow, load_workflow_text, parse_workflow

    for attempt in (lambda: parse_workflow(doc), lambda: load_workflow_text(_dump(doc) or "")):
        try:
            wf = attempt()
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc)
            continue
        assert isinstance(wf, Workflow)
        try:  # what the runner derives first from a valid workflow
            wf.forecast.init_times.expand()
            wf.forecast.steps(wf.data.time_step)
            wf.enabled_stages()
            wf.resolved_run_dir()
        except UserError as exc:
            assert "\n" not in str(exc)


@SETTINGS
@given(st.text(max_size=200))
def test_workflow_loader_random_text(text):
    from workflows.schema import load_workflow_text

    try:
        load_workflow_text(text)
    except UserError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(doc=st.one_of(_tree(FORECAST_KEYS), _mutated(BASE_FORECAST, FORECAST_PATHS, FORECAST_KEYS)))
def test_forecast_config_loader_never_tracebacks(tmp_path_factory, doc):
    from pipeline.config import ForecastConfig, load_config

    path = tmp_path_factory.mktemp("cfg") / "f.yaml"
    path.write_text(_dump(doc) or "")
    for attempt in (lambda: load_config(doc), lambda: load_config(path)):
        try:
            cfg = attempt()
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc)
            continue
        assert isinstance(cfg, ForecastConfig)
        try:  # the derived values a run reads first are errors of the same kind
            cfg.init_array()
            cfg.identity_hash()
            cfg.checkpoint_paths()
        except UserError as exc:
            assert "\n" not in str(exc)


@SETTINGS
@given(doc=_tree(CATALOG_KEYS))
def test_catalog_parser_never_tracebacks(tmp_path_factory, doc):
    from data_catalog.catalog import load_catalog, parse_catalog

    root = tmp_path_factory.mktemp("cat")
    text = _dump(doc) or ""
    try:
        entries = parse_catalog(text, root=str(root))
    except UserError as exc:
        assert "\n" not in str(exc)
        entries = None
    if entries is not None:
        for e in entries.values():  # every accepted relative location stays inside the root
            loc = e.resolved_location()
            if not (loc.startswith("builtin:") or "://" in loc or e.location.startswith(("/", "~"))):
                assert loc == str(root) or loc.startswith(str(root) + "/")
    f = root / "c.yaml"
    f.write_text(text)
    try:
        load_catalog(f, include_default=False)
    except UserError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.text(max_size=200))
def test_catalog_parser_random_text(text):
    from data_catalog.catalog import parse_catalog

    try:
        parse_catalog(text)
    except UserError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.text(alphabet="0123456789/-ab ", max_size=8))
def test_shard_specs(text):
    from pipeline.members import parse_shard

    try:
        i, n = parse_shard(text, environ={})
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 <= i < n
