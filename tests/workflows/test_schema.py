"""The workflow schema: valid files, one-line errors with YAML paths and hints, never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from data_catalog.errors import UserError
from workflows.schema import Workflow, explain, load_workflow, load_workflow_text

REPO = Path(__file__).resolve().parents[2]
OK = "forecast: {members: 4, init_times: [2008-01-01], lead_steps: 4}\n"


def err(text: str) -> str:
    with pytest.raises(UserError) as info:
        load_workflow_text(text, source="wf.yaml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("wf.yaml: ")
    return msg.removeprefix("wf.yaml: ")


def test_defaults_and_derived_values() -> None:
    w = load_workflow_text(OK)
    assert w.name == "wxens" and w.seed == 0
    assert w.resolved_run_dir(Path("/x")) == Path("/x/runs/wxens")
    assert w.forecast.n_pairs() == 2 and w.forecast.perturbation.method == "bred"
    assert w.enabled_stages() == ["prepare", "skill", "forecast", "score", "report"]
    w2 = load_workflow_text(
        "forecast: {members: 2, lead_time: 10D, init_times: {start: 2008-01-01, end: 2008-01-02T12:00, step: 12h}}"
    )
    assert w2.forecast.steps("6h") == 40
    expected = np.arange(
        np.datetime64("2008-01-01T00", "ns"), np.datetime64("2008-01-02T13", "ns"), np.timedelta64(12, "h")
    )
    np.testing.assert_array_equal(np.array(w2.forecast.init_times.expand()), expected)
    with pytest.raises(UserError, match="not a multiple"):
        w2.forecast.steps("7h")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "forecast: {memebrs: 4, init_times: [2008-01-01], lead_steps: 4}",
            "forecast.memebrs: unknown key; did you mean 'members'?",
        ),
        (OK + "sedd: 3", "sedd: unknown key; did you mean 'seed'?"),
        (
            OK + "resources: {stages: {forcast: {shards: 2}}}",
            "resources.stages.forcast: unknown key; did you mean 'forecast'?",
        ),
        (OK + "score: {dask: {mod: local}}", "score.dask.mod: unknown key; did you mean 'mode'?"),
        (
            "forecast: {members: 3, init_times: [2008-01-01], lead_steps: 4}",
            "forecast: members must be even for bred perturbations (+/- pairs), got 3",
        ),
        (
            "forecast: {members: -2, init_times: [2008-01-01], lead_steps: 4}",
            "forecast.members: input should be greater than or equal to 1, got -2",
        ),
        (
            "forecast: {members: 0, init_times: [2008-01-01], lead_steps: 4}",
            "forecast.members: input should be greater than or equal to 1, got 0",
        ),
        (
            "forecast: {members: many, init_times: [2008-01-01], lead_steps: 4}",
            "forecast.members: input should be a valid integer",
        ),
        (
            "forecast: {members: 4, init_times: [2008-13-45], lead_steps: 4}",
            "forecast.init_times.times[0]: not a date/time",
        ),
        (
            "forecast: {members: 4, init_times: [2008-01-01]}",
            "forecast: give lead_time (e.g. '10D') or lead_steps",
        ),
        (
            "forecast: {members: 4, init_times: [2008-01-01], lead_time: -6h}",
            "forecast.lead_time: duration must be positive",
        ),
        (
            "forecast: {members: 4, perturbation: {method: none}, init_times: [2008-01-01], lead_steps: 1}",
            "perturbation 'none' gives identical members: set members: 1",
        ),
        (
            "forecast: {members: 4, perturbation: {n_pairs: 3}, init_times: [2008-01-01], lead_steps: 1}",
            "n_pairs=3 does not match members=4",
        ),
        (
            "forecast: {members: 4, perturbation: {method: brd}, init_times: [2008-01-01], lead_steps: 1}",
            "forecast.perturbation.method: input should be 'bred', 'gaussian', 'spherical' or 'none'",
        ),
        (OK + "resources: {partition: 'gpu; rm -rf /'}", "resources.partition: only letters"),
        (
            OK + "resources: {stages: {score: {shards: 4}}}",
            "resources.stages.score.shards: stage 'score' cannot be split",
        ),
        (OK + "score: {dask: {mode: address}}", "score.dask: dask mode 'address' needs an address"),
        (OK + 'name: "a\\nb"', "name: must not contain control characters"),
        ("name: x", "forecast: required key is missing"),
        ("[1, 2]", "a workflow must be a mapping of sections, got list"),
        ("", "the workflow is empty"),
        ("forecast: {", "not valid YAML (line 1, column 12)"),
        ("{3: 4}", "key 3 is not a string"),
        (
            OK + "data: {train: {start: 2006-01-01, end: 2000-01-01}}",
            "data.train: start 2006-01-01 is after end 2000-01-01",
        ),
    ],
)
def test_errors_are_one_line_with_path(text: str, expected: str) -> None:
    assert expected in err(text)


def test_load_workflow_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="workflow file not found"):
        load_workflow(tmp_path / "nope.yaml")
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="cannot read workflow"):
        load_workflow(p)


# ---- property tests: arbitrary YAML-ish input gives a Workflow or a UserError, never anything else ----
KEYS = [
    "name",
    "run_dir",
    "seed",
    "data",
    "forecast",
    "members",
    "init_times",
    "lead_steps",
    "lead_time",
    "perturbation",
    "method",
    "n_pairs",
    "score",
    "dask",
    "mode",
    "resources",
    "stages",
    "shards",
    "start",
    "end",
    "step",
    "train",
    "seeds",
    "bogus",
    "source",
    "report",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.sampled_from(["2008-01-01", "6h", "10D", "bred", "none", "x", "", "-1", "gpu", "local"]),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_structured_input_never_raises_anything_else(data: dict) -> None:
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    try:
        w = load_workflow_text(text)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(w, Workflow)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("forecast:members{}[],- \n\t'\"&*!|>#%@`2008-01-0169hD")), max_size=80
    )
)
def test_raw_text_never_raises_anything_else(text: str) -> None:
    try:
        load_workflow_text(text)
    except UserError as exc:
        assert "\n" not in str(exc)


def test_explain_lists_every_field_with_default() -> None:
    text = explain()
    for key in [
        "forecast.members",
        "forecast.perturbation.alpha",
        "score.dask.mode",
        "resources.stages.forecast.shards",
    ]:
        assert re.search(rf"^{re.escape(key)}\s", text, re.M), key
    assert re.search(r"^forecast.perturbation.alpha\s+number = 0.35$", text, re.M)
    # every field has a description
    from workflows.schema import explain_rows

    assert all(desc for _, _, _, desc in explain_rows())


def test_docs_reference_is_generated_from_schema() -> None:
    doc = (REPO / "docs" / "workflows.md").read_text()
    begin, end = "<!-- BEGIN workflow-reference -->\n", "<!-- END workflow-reference -->"
    assert begin in doc and end in doc
    section = doc.split(begin, 1)[1].split(end, 1)[0]
    assert section.strip() == explain(markdown=True).strip(), (
        "regenerate: python -m workflows.schema --markdown"
    )


@pytest.mark.parametrize("name", ["demo.yaml", "hens.yaml"])
def test_shipped_workflows_validate(name: str) -> None:
    w = load_workflow(REPO / "workflows" / name)
    assert w.forecast.perturbation.method == "bred"


def test_hens_layout_numbers() -> None:
    w = load_workflow(REPO / "workflows" / "hens.yaml")
    assert w.forecast.max_checkpoints in (None, 29)
    assert w.forecast.members == 256 and w.forecast.n_pairs() == 128
    assert 29 * w.forecast.members == 7424
    assert w.forecast.steps(w.data.time_step) == 60  # 15 days of 6 h
    assert w.data.source.startswith("gs://weatherbench2/datasets/era5/")
    assert w.resources.for_stage("forecast").gpus >= 1


def test_demo_layout() -> None:
    w = load_workflow(REPO / "workflows" / "demo.yaml")
    assert w.resolved_run_dir(REPO) == REPO / "runs" / "demo"
    assert w.forecast.steps(w.data.time_step) == 40
    inits = w.forecast.init_times.expand()
    assert all(np.datetime64("2008-01-01") <= t <= np.datetime64("2009-12-31") for t in inits)
    assert set(w.score.baselines) == {"climatology", "persistence", "probabilistic_climatology"}


def test_demo_forcing_reaches_the_engine_config() -> None:
    """The demo's per-channel factors, per-channel ramps and lead-time schedule pass through the
    workflow schema into an engine config the pipeline accepts, unchanged."""
    from pipeline.config import load_config
    from workflows.stages import forecast_config

    w = load_workflow(REPO / "workflows" / "demo.yaml")
    p = w.forecast.perturbation
    assert p.stochastic == {"z500": 2.0, "u500": 3.2, "v500": 3.2, "vo500": 2.4}
    assert p.stochastic_ramp_hours == {"u500": 36, "v500": 36, "vo500": 36}
    cfg = forecast_config(w, REPO / "runs" / "demo", {"z500": 1.0, "u500": 1.0, "v500": 1.0, "vo500": 1e-6})
    pert = load_config(cfg).perturbation
    assert pert.stochastic_schedule == [(0.0, 1.0), (72.0, 1.0), (192.0, 0.3)]
    assert pert.stochastic_ramp_hours == {"u500": 36.0, "v500": 36.0, "vo500": 36.0}
    assert err(OK.replace("lead_steps: 4", "lead_steps: 4, perturbation: {stochastic_schedule: [[1, 2, 3]]}"))


def test_output_and_inline_options_reach_the_engine_config() -> None:
    """``forecast.output.codec``/``dtype`` and ``forecast.inline_scoring.metrics`` reach the engine's
    config (crps and spectra switch those inline scores); the codec does not change the stage hash
    (the same values), the dtype and the metrics do; an unknown metric is refused."""
    from pipeline.config import load_config
    from workflows.runner import stage_hashes
    from workflows.stages import REGISTRY, forecast_config

    base = load_workflow(REPO / "workflows" / "demo.yaml").model_dump(mode="json")
    amp = {"z500": 1.0, "u500": 1.0, "v500": 1.0, "vo500": 1e-6}

    def variant(**fc: object) -> Workflow:
        d = json.loads(json.dumps(base))
        for dotted, value in fc.items():
            section, key = dotted.split("__")
            d["forecast"][section][key] = value
        return Workflow.model_validate(d)

    default = load_config(forecast_config(variant(), REPO / "runs" / "demo", amp))
    assert default.output.codec == "lz4" and default.inline.crps and default.inline.spectra
    w = variant(output__codec="zstd", output__dtype="bfloat16", inline_scoring__metrics=["rmse", "spectra"])
    cfg = load_config(forecast_config(w, REPO / "runs" / "demo", amp))
    assert (cfg.output.codec, cfg.output.dtype) == ("zstd", "bfloat16")
    assert not cfg.inline.crps and cfg.inline.spectra
    h0 = stage_hashes(variant(), REGISTRY)["forecast"]
    assert stage_hashes(variant(output__codec="none"), REGISTRY)["forecast"] == h0
    assert stage_hashes(variant(output__dtype="float16"), REGISTRY)["forecast"] != h0
    assert stage_hashes(variant(inline_scoring__metrics=["crps"]), REGISTRY)["forecast"] != h0
    with pytest.raises(ValidationError, match="metrics"):
        variant(inline_scoring__metrics=["crps", "brier"])
