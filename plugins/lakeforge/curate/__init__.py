"""Curate: clean, filter, scrub and deduplicate one raw partition on Spark; publish it as ``curated``
with its dedup index segment, its excluded rows and a quality report.

The chain is named in the pipeline YAML (``curate: [{name, params}]``) and built from
:data:`~lakeforge.curate.steps.CURATE_STEPS`, so a new dataset is a new YAML file, not new code. The
step kinds and the runner are the shared framework of :mod:`lakeforge.stage`. The modules:

* :mod:`~lakeforge.curate.steps` — the steps a YAML may name, listed explicitly;
* :mod:`~lakeforge.curate.clean` — ``strip_html`` (Lexbor parser), ``normalize_unicode`` (NFKC),
  ``normalize_whitespace``, ``lowercase``;
* :mod:`~lakeforge.curate.pii` — ``scrub_pii`` (e-mail, IP, card, phone → typed placeholders);
* :mod:`~lakeforge.curate.filters` — ``drop_empty``, ``length_filter``, ``gopher_quality``,
  ``gopher_repetition``, ``c4_quality``;
* :mod:`~lakeforge.curate.dedup` — ``exact_dedup``, ``near_dedup`` (MinHash, banding, verified
  pairs, connected components), within and across partitions;
* :mod:`~lakeforge.curate.minhash` — MinHash signatures, LSH bands, exact Jaccard of pairs (numpy);
* :mod:`~lakeforge.curate.index` — the dedup index of the other partitions (the ``dedup_index``
  table, published with each curated partition);
* :mod:`~lakeforge.curate.gates` — the data-quality gate (``quality_gate`` in the YAML);
* :mod:`~lakeforge.curate.report` — the JSON + HTML quality report;
* :mod:`~lakeforge.curate.job` — :func:`run`, what ``spark-submit jobs/curate.py`` calls.

Data contracts (Iceberg tables ``<pipeline>.<layer>``)
    raw:      the YAML's fields, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp
    curated:  id, text (cleaned), label, source, event_time, text_hash (sha256 hex of the lowercased,
              whitespace-normalized text), cluster_id (near-duplicate cluster: its representative's
              text_hash; a row without near-duplicates is its own), sorted by id within each file.
    excluded: every dropped row with its reason (``<pipeline>.excluded``).
"""

from lakeforge.curate.clean import HtmlToText, Lowercaser, UnicodeNormalizer, WhitespaceNormalizer
from lakeforge.curate.dedup import ExactDeduplicator, NearDeduplicator, text_hash
from lakeforge.curate.filters import (C4QualityFilter, EmptyTextFilter, GopherQualityFilter,
                                      GopherRepetitionFilter, LengthFilter)
from lakeforge.curate.job import curate_frame, run, select_curated
from lakeforge.curate.pii import PiiScrubber
from lakeforge.curate.steps import CURATE_STEPS, build_steps

__all__ = [
    "C4QualityFilter", "CURATE_STEPS", "EmptyTextFilter", "ExactDeduplicator",
    "GopherQualityFilter", "GopherRepetitionFilter", "HtmlToText", "LengthFilter", "Lowercaser", "NearDeduplicator",
    "PiiScrubber", "UnicodeNormalizer", "WhitespaceNormalizer", "build_steps",
    "curate_frame", "run", "select_curated", "text_hash",
]
