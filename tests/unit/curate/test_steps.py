"""The curate step registry: chains built from the pipeline YAML, fused passes, clear errors."""

from __future__ import annotations

import pytest

from lakeforge.config import PipelineConfig
from lakeforge.curate import CURATE_STEPS, build_steps
from lakeforge.errors import ConfigError
from lakeforge.stage.chain import plan


def test_build_steps_from_pipeline_yaml():
    steps = build_steps(PipelineConfig.load("movie_reviews").curate)
    assert [s.name for s in steps] == ["strip_html", "normalize_unicode", "normalize_whitespace", "scrub_pii",
                                       "drop_empty", "length_filter", "gopher_quality", "gopher_repetition",
                                       "c4_quality", "exact_dedup", "near_dedup"]
    assert (steps[5].min_chars, steps[5].max_chars) == (20, 20000)


def test_batch_steps_fuse_into_one_pass_and_minhash_joins_it():
    steps = build_steps(PipelineConfig.load("movie_reviews").curate)
    stages = plan(steps)
    # one Python pass for the nine batch steps plus the near-dedup signatures, then the frame steps
    assert [type(s).__name__ for s in stages] == ["FusedPass", "ExactDeduplicator", "NearDeduplicator"]
    assert [s.name for s in stages[0].steps][-1] == "minhash"
    assert len(stages[0].steps) == 10


def test_fused_chain_equals_steps_one_by_one():
    """A dropped row keeps the text it had when dropped; later steps only see rows still alive."""
    steps = build_steps([{"name": "strip_html"}, {"name": "length_filter", "params": {"min_chars": 5}},
                         {"name": "lowercase"}])
    import pyarrow as pa

    from lakeforge.stage.text import TextBatch

    batch = TextBatch(pa.RecordBatch.from_pydict({"text": ["<b>HI</b>", "<p>Long Enough</p>", None]}))
    for step in steps:
        step.process(batch)
    assert batch.final_text().to_pylist() == ["HI", "long enough\n", None]
    assert list(batch.reasons) == ["too_short", None, "too_short"]


def test_unknown_step_lists_known_names():
    with pytest.raises(ConfigError) as err:
        build_steps([{"name": "strip_htm"}])
    assert "strip_htm" in str(err.value)
    for known in CURATE_STEPS:
        assert known in str(err.value)


@pytest.mark.parametrize("spec", [
    {"name": "length_filter", "params": {"min_char": 3}},
    {"name": "length_filter", "params": {"min_chars": 10, "max_chars": 5}},
    {"name": "strip_html", "params": {"parser": "lxml"}},
])
def test_bad_step_params(spec):
    with pytest.raises(ConfigError, match=spec["name"]):
        build_steps([spec])
