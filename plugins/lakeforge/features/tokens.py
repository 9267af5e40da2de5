"""Tokenization inside Spark: the model's fast tokenizer over Arrow batches, and token statistics.

The tokenizer is loaded from ``tokenizer.json`` with the ``tokenizers`` library (the Rust fast
tokenizer that ``AutoTokenizer`` wraps), so the Spark workers never import torch or transformers;
a unit test checks the ids equal ``AutoTokenizer``'s. The files are found like the trainer finds
its weights (:func:`lakeforge.weights.resolve_weights`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lakeforge.config import FeaturesSpec, PipelineConfig
from lakeforge.weights import resolve_weights

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenization features get: which tokenizer, how long, which end is cut."""

    path: str  # tokenizer.json
    max_length: int  # tokens per text, special tokens included
    truncation_side: str  # left | right
    batch_rows: int  # texts per encode_batch call

    @classmethod
    def of(cls, pipeline: PipelineConfig) -> "TokenizerSpec":
        spec: FeaturesSpec = pipeline.features
        profile = pipeline.model.cpu
        return cls(path=str(resolve_weights(spec.tokenizer or pipeline.model.base, "tokenizer.json") / "tokenizer.json"),
                   max_length=spec.max_length or profile.max_length,
                   truncation_side=spec.truncation_side or profile.truncation_side, batch_rows=spec.batch_rows)

    def load(self):
        """The ``tokenizers.Tokenizer``, truncating, not padding (cached per worker process)."""
        return _load_tokenizer(self.path, self.max_length, self.truncation_side)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """``(input_ids, truncated)`` per text."""
        tok = self.load()
        ids, truncated = [], []
        for lo in range(0, len(texts), self.batch_rows):
            for enc in tok.encode_batch(texts[lo:lo + self.batch_rows], add_special_tokens=True):
                ids.append(enc.ids)
                truncated.append(bool(enc.overflowing))
        return ids, truncated


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, max_length: int, side: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()  # trainers pad per batch (dynamic padding), not to max_length
    tok.enable_truncation(max_length, direction=side)
    return tok


def tokenize_function(spec: TokenizerSpec):
    """``mapInArrow`` function adding ``input_ids``, ``num_tokens`` and ``_truncated`` to batches."""

    def run(batches):
        import numpy as np
        import pyarrow as pa

        for rb in batches:
            texts = [t or "" for t in rb.column("text").to_pylist()]
            ids, truncated = spec.encode(texts)
            lengths = np.fromiter((len(i) for i in ids), dtype=np.int32, count=len(ids))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = np.fromiter((t for i in ids for t in i), dtype=np.int32, count=int(lengths.sum()))
            input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
            out = rb.append_column("input_ids", input_ids).append_column("num_tokens", pa.array(lengths))
            yield out.append_column("_truncated", pa.array(truncated, pa.bool_()))

    return run


def token_stats(df: "DataFrame", tokenizer: TokenizerSpec | None) -> dict[str, Any]:
    """Token counts over the rows (one aggregation): total, mean, p50/p95, max, share truncated."""
    from pyspark.sql import functions as F

    row = df.agg(F.count(F.lit(1)).alias("rows"), F.sum("num_tokens").alias("total"), F.avg("num_tokens").alias("mean"),
                 F.percentile_approx("num_tokens", [0.5, 0.95]).alias("q"), F.max("num_tokens").alias("max"),
                 F.avg(F.col("_truncated").cast("double")).alias("truncated")).first()
    q = row["q"] or [0, 0]
    out = {"total": int(row["total"] or 0), "mean": round(float(row["mean"] or 0), 2), "p50": int(q[0] or 0),
           "p95": int(q[1] or 0), "max": int(row["max"] or 0), "truncated_share": round(float(row["truncated"] or 0), 4)}
    if tokenizer is not None:
        out.update(tokenizer=tokenizer.path, max_length=tokenizer.max_length, truncation_side=tokenizer.truncation_side)
    return out
