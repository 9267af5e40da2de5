"""The curate steps a pipeline YAML may name (``curate: [{name, params}]``), listed explicitly.

A new cleaning or filter step is a class in the module of its kind (:mod:`~lakeforge.curate.clean`,
:mod:`~lakeforge.curate.pii`, :mod:`~lakeforge.curate.filters`, :mod:`~lakeforge.curate.dedup`),
built on a step kind of :mod:`lakeforge.stage.steps`, plus one entry in :data:`CURATE_STEPS` below.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lakeforge.config import StepSpec
from lakeforge.curate.clean import HtmlToText, Lowercaser, UnicodeNormalizer, WhitespaceNormalizer
from lakeforge.curate.dedup import ExactDeduplicator, NearDeduplicator
from lakeforge.curate.filters import (C4QualityFilter, EmptyTextFilter, GopherQualityFilter, GopherRepetitionFilter,
                                      LengthFilter)
from lakeforge.curate.pii import PiiScrubber
from lakeforge.stage.steps import Step, StepRegistry

#: Every step curate knows, by its YAML name.
CURATE_STEPS = StepRegistry("curate", [
    HtmlToText, UnicodeNormalizer, WhitespaceNormalizer, Lowercaser,  # cleaners
    PiiScrubber,  # PII -> typed placeholders
    EmptyTextFilter, LengthFilter, GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter,  # filters
    ExactDeduplicator, NearDeduplicator,  # within and across partitions
])


def build_steps(specs: Sequence[StepSpec | Mapping[str, Any]]) -> list[Step]:
    """The chain a pipeline's ``curate:`` list names (see :meth:`StepRegistry.build`)."""
    return CURATE_STEPS.build(specs)
