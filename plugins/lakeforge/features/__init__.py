"""Features: turn one curated partition into training rows and publish them.

* :mod:`~lakeforge.features.job` — :func:`run`, what ``spark-submit jobs/features.py`` calls: label
  validation, split, tokenization, publish;
* :mod:`~lakeforge.features.split` — the train/validation/test split by near-duplicate cluster;
* :mod:`~lakeforge.features.tokens` — the model's fast tokenizer inside Spark, token statistics.
"""

from lakeforge.features.job import (FEATURES_COLUMNS, LabelRangeFilter, features_frame, run)
from lakeforge.features.split import SPLITS, assign_split, split_stats
from lakeforge.features.tokens import TokenizerSpec, token_stats

__all__ = ["FEATURES_COLUMNS", "LabelRangeFilter", "SPLITS", "TokenizerSpec", "assign_split", "features_frame",
           "run", "split_stats", "token_stats"]
