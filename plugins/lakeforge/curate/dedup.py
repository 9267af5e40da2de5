"""Deduplication: exact (normalized-text hash) and near (MinHash + LSH banding), within a partition
and against every other curated partition of the pipeline.

Near-duplicates, step by step (:class:`NearDeduplicator`):

1. **Signatures** (:class:`MinHashSigner`, a batch step hoisted into the chain's fused pass): the
   words of each text (see :mod:`lakeforge.stage.text`) form word 5-gram shingles, each hashed
   to 64 bits; ``num_perm`` hash functions ``h(x) = (a*x + b) mod 2^64 >> 32`` (multiply-add-
   shift, ``a`` odd) give the MinHash signature; ``bands`` bands of ``rows`` values are hashed to
   one 64-bit bucket id each. Only the band ids travel on (``_bands``, array<bigint>).
2. **Banding** — written here, not Spark's ``MinHashLSH.approxSimilarityJoin``, which has no
   banding (it joins on single hash values, so every pair sharing one min-hash becomes a
   candidate) and blows up on real data: rows are exploded to ``(band, bucket, id)``, grouped by
   ``(band, bucket)``; a bucket of k documents yields the 2(k-1) edges from its smallest id to
   each member and between neighbours in id order (not all k(k-1)/2 pairs).
3. **Verification**: every distinct candidate pair gets its exact Jaccard similarity on the shingle
   sets, computed from the two texts; pairs below ``threshold`` are discarded. The probability a
   pair at similarity s becomes a candidate is 1 - (1 - s^rows)^bands; :func:`lsh_params` picks
   the bands so that it is >= 0.99 at the threshold.
4. **Clusters**: connected components of the verified pairs, by min-label propagation with pointer
   jumping (:func:`connected_components`, iterated Spark joins until no label changes). The
   smallest id of a cluster is its representative; the others are dropped (``near_duplicate``).
   A cluster's id is its representative's ``text_hash`` and a row without near-duplicates is its
   own cluster, so ``cluster_id`` is content-derived and stable across reruns.

Across partitions, a :class:`PriorIndex` (built by :mod:`lakeforge.curate.index` from the index
segments the other published partitions wrote) supplies their text hashes and band ids: a row
whose text hash, or (verified) near-duplicate, is already curated elsewhere is dropped with reason
``exact_duplicate_cross_partition`` / ``near_duplicate_cross_partition`` before the partition's
own clusters are formed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lakeforge.curate.minhash import BANDS, SIMILARITY, MinHashParams, MinHashSigner, lsh_params, verify_function
from lakeforge.errors import ConfigError
from lakeforge.stage.chain import StepContext
from lakeforge.stage.steps import HASH, REASON, TEXT, BatchStep, Step

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

CLUSTER = "cluster_id"
DUPLICATE_OF = "duplicate_of"


def text_hash(text: "Column") -> "Column":
    """sha256 hex of the lowercased, whitespace-collapsed, trimmed text: the exact-dedup key."""
    from pyspark.sql import functions as F

    normalized = F.lower(F.regexp_replace(F.regexp_replace(text, r"\s+", " "), r"^ | $", ""))
    return F.sha2(normalized, 256)


#: Most rows a key frame may have to be broadcast to every task (joined without shuffling the
#: wide side); a larger one is joined by shuffle.
BROADCAST_ROWS = 1_000_000


def small_side(keys: "DataFrame", rows: int) -> "DataFrame":
    """``keys`` marked for a broadcast join when it has at most :data:`BROADCAST_ROWS` rows.

    Spark's own choice needs size estimates, and with adaptive execution off (see
    :func:`lakeforge.spark.base_conf`) an aggregate's estimate is its input's: it would shuffle
    the wide side of every join against a few thousand keys.
    """
    from pyspark.sql import functions as F

    return F.broadcast(keys) if rows <= BROADCAST_ROWS else keys


# --------------------------------------------------------------------------------------------
# Exact
# --------------------------------------------------------------------------------------------

class ExactDeduplicator(Step):
    """Keep one row per ``text_hash`` (the smallest id; ties broken by text), drop the others
    (reason ``exact_duplicate``, with ``duplicate_of`` naming the kept id). Rows whose hash another
    published partition already holds are dropped too (``exact_duplicate_cross_partition``,
    ``duplicate_of`` naming the earlier row). Adds ``text_hash``."""

    name = "exact_dedup"
    reasons = ("exact_duplicate", "exact_duplicate_cross_partition")
    modifies_text = False

    def apply(self, df, context=None):
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        hashed = df.withColumn(HASH, text_hash(F.col(TEXT)))
        prior = getattr(context, "prior", None)
        dropped_prior = None
        if prior is not None and prior.exact is not None:
            earlier = prior.exact.groupBy(HASH).agg(F.min("p_id").alias(DUPLICATE_OF))
            matched = hashed.join(earlier, HASH, "left")
            dropped_prior = (matched.where(F.col(DUPLICATE_OF).isNotNull())
                             .withColumn(REASON, F.lit("exact_duplicate_cross_partition")))
            hashed = matched.where(F.col(DUPLICATE_OF).isNull()).drop(DUPLICATE_OF)
        order = Window.partitionBy(HASH).orderBy(F.col("id").asc_nulls_last(), F.col(TEXT).asc_nulls_last())
        ranked = (hashed.withColumn("_rank", F.row_number().over(order))
                  .withColumn(DUPLICATE_OF, F.first("id").over(order)))
        kept = ranked.where(F.col("_rank") == 1).drop("_rank", DUPLICATE_OF)
        dropped = (ranked.where(F.col("_rank") > 1).drop("_rank")
                   .withColumn(REASON, F.lit("exact_duplicate")))
        if dropped_prior is not None:
            dropped = dropped.unionByName(dropped_prior)
        return kept, dropped


# --------------------------------------------------------------------------------------------
# Connected components in Spark
# --------------------------------------------------------------------------------------------

def connected_components(edges: "DataFrame", *, max_iterations: int = 64) -> tuple["DataFrame", int]:
    """Label every node of the undirected graph ``edges(a, b)`` with the smallest node of its
    connected component: ``(labels(node, label), iterations)``.

    Min-label propagation with pointer jumping: each round a node takes the smallest of its own
    label, its neighbours' labels and its label's label. Labels only decrease and always name a
    node of the component, so at the fixpoint every component carries its minimum; pointer
    jumping makes long chains converge in about log2(length) rounds. Deterministic: the result
    does not depend on partitioning or order. Each round is checkpointed (its lineage cut).
    """
    from pyspark.sql import functions as F

    both = edges.select(F.col("a").alias("src"), F.col("b").alias("dst")).unionByName(
        edges.select(F.col("b").alias("src"), F.col("a").alias("dst"))).distinct().localCheckpoint()
    labels = (both.groupBy(F.col("src").alias("node"))
              .agg(F.least(F.min("dst"), F.col("node")).alias("label"))).localCheckpoint()
    for iteration in range(1, max_iterations + 1):
        neighbour = (both.join(labels.withColumnRenamed("node", "src"), "src")
                     .select(F.col("dst").alias("node"), F.col("label").alias("candidate")))
        jump = (labels.alias("l").join(labels.alias("m"), F.col("l.label") == F.col("m.node"))
                .select(F.col("l.node").alias("node"), F.col("m.label").alias("candidate")))
        own = labels.select("node", F.col("label").alias("candidate"))
        new = (own.unionByName(neighbour).unionByName(jump)
               .groupBy("node").agg(F.min("candidate").alias("label"))).localCheckpoint()
        changed = (new.alias("n").join(labels.alias("o"), "node")
                   .where(F.col("n.label") != F.col("o.label")).limit(1).count())
        labels = new
        if changed == 0:
            return labels, iteration
    raise RuntimeError(f"connected components did not converge in {max_iterations} rounds")


# --------------------------------------------------------------------------------------------
# The near-dedup step
# --------------------------------------------------------------------------------------------

def _timed(stats: dict[str, Any], what: str, action: Callable[[], Any]) -> Any:
    """Run a Spark action, recording its seconds in ``stats["seconds"][what]``."""
    import time

    t0 = time.monotonic()
    try:
        return action()
    finally:
        stats.setdefault("seconds", {})[what] = round(time.monotonic() - t0, 2)


@dataclass
class PriorIndex:
    """Text hashes and band ids of the rows of the other published partitions (read by
    :mod:`lakeforge.curate.index`); ``texts`` returns ``(p_partition, p_id, p_text)`` for the rows of
    the named partitions, for verifying cross-partition candidates."""

    exact: "DataFrame | None"  # text_hash, p_id, p_cluster, p_partition
    bands: "DataFrame | None"  # band, bucket, p_id, p_cluster, p_partition
    texts: Callable[[list[str]], "DataFrame"]
    versions: dict[str, str]  # partition path -> run id of the curated commit read
    rows: int  # rows over all segments


class NearDeduplicator(Step):
    """Drop near-duplicates (MinHash LSH, verified, clustered): see the module docstring.

    Drops ``near_duplicate`` (another row of the partition is the cluster's representative;
    ``duplicate_of`` names it, ``similarity`` is the row's best verified Jaccard) and
    ``near_duplicate_cross_partition`` (a verified near-duplicate is curated in another partition).
    Adds ``cluster_id``. With ``drop: false`` nothing is dropped: rows are only given their
    cluster's id (a cross-partition match inherits the earlier cluster's id).
    """

    name = "near_dedup"
    reasons = ("near_duplicate", "near_duplicate_cross_partition")
    modifies_text = False

    def __init__(self, threshold: float = 0.75, ngram: int = 5, num_perm: int = 128, bands: int | None = None,
                 rows: int | None = None, seed: int = 1, verify: bool = True, drop: bool = True):
        """Args:
            threshold: Jaccard similarity of the shingle sets at or above which two texts are near-duplicates.
            ngram: words per shingle.
            num_perm: MinHash hash functions.
            bands, rows: LSH banding (``bands * rows <= num_perm``); default from :func:`lsh_params`.
            seed: seed of the hash functions (changing it invalidates the other partitions' index).
            verify: check candidate pairs' exact Jaccard (off: every candidate pair counts, as datatrove).
            drop: drop non-representatives (off: only annotate ``cluster_id``).
        """
        if not 0 < threshold <= 1:
            raise ConfigError(f"near_dedup threshold must be within (0, 1], got {threshold}")
        if bands is None or rows is None:
            auto_bands, auto_rows = lsh_params(threshold, num_perm)
            rows = rows or (auto_rows if bands is None else num_perm // bands)
            bands = bands or num_perm // rows
        self.threshold = float(threshold)
        self.minhash = MinHashParams(ngram=int(ngram), num_perm=int(num_perm), bands=int(bands), rows=int(rows),
                                     seed=int(seed))
        self.verify = bool(verify)
        self.drop = bool(drop)

    def params(self):
        return {"threshold": self.threshold, **self.minhash.to_dict(), "verify": self.verify, "drop": self.drop}

    def candidate_probability(self, similarity: float) -> float:
        """Probability that a pair at ``similarity`` shares a band."""
        m = self.minhash
        return 1 - (1 - similarity ** m.rows) ** m.bands

    def prepare(self) -> BatchStep:
        return MinHashSigner(self.minhash)

    # -- helpers --------------------------------------------------------------------------------
    def _verified(self, pairs: "DataFrame") -> "DataFrame":
        """``pairs(a, b, a_text, b_text)`` -> ``(a, b, similarity)`` of the pairs at or above the threshold."""
        from pyspark.sql import functions as F

        if not self.verify:
            return pairs.select("a", "b", F.lit(None).cast("double").alias(SIMILARITY))
        return pairs.mapInArrow(verify_function(self.minhash.ngram, self.threshold),
                                "a string, b string, similarity double")

    def apply(self, df, context=None):
        from pyspark.sql import functions as F

        context = context or StepContext()
        if HASH not in df.columns:
            df = df.withColumn(HASH, text_hash(F.col(TEXT)))
        df = context.persist(df)
        stats: dict[str, Any] = {"params": self.params()}
        docs = df.where(F.col(BANDS).isNotNull())
        exploded = context.persist(docs.select("id", F.posexplode(BANDS).alias("band", "bucket")))
        texts = df.select("id", TEXT)

        # -- across partitions: candidates against the index of the other partitions, verified
        cross = None
        prior = getattr(context, "prior", None)
        if prior is not None and prior.bands is not None:
            candidates = (exploded.join(prior.bands, ["band", "bucket"])
                          .select(F.col("id").alias("a"), "p_id", "p_cluster", "p_partition").distinct())
            candidates = context.persist(candidates)
            partitions = sorted(r["p_partition"] for r in candidates.select("p_partition").distinct().collect())
            stats["cross_partition_candidates"] = _timed(stats, "cross_candidates", candidates.count)
            if partitions:
                ids = F.broadcast(candidates.select(F.col("a").alias("id")).distinct())
                a_texts = texts.join(ids, "id").select(F.col("id").alias("a"), F.col(TEXT).alias("a_text"))
                pairs = (candidates.join(a_texts, "a")
                         .join(prior.texts(partitions).withColumnRenamed("p_text", "b_text"), ["p_partition", "p_id"])
                         .withColumn("b", F.concat_ws("/", "p_partition", "p_id")))
                verified = self._verified(pairs.select("a", "b", "a_text", "b_text"))
                keys = candidates.select("a", F.concat_ws("/", "p_partition", "p_id").alias("b"), "p_id", "p_cluster")
                cross = context.persist(
                    verified.join(keys, ["a", "b"])
                    .groupBy(F.col("a").alias("id"))
                    .agg(F.min(F.struct("p_cluster", "p_id")).alias("m"), F.max(SIMILARITY).alias(SIMILARITY))
                    .select("id", F.col("m.p_id").alias(DUPLICATE_OF), F.col("m.p_cluster").alias("prior_cluster"),
                            SIMILARITY))
                stats["cross_partition_matches"] = _timed(stats, "cross_matches", cross.count)
            else:
                stats["cross_partition_matches"] = 0

        # -- within the partition: bucket edges (star + chain), verified, clustered
        within = exploded
        if cross is not None and self.drop:  # rows dropped as cross-partition duplicates form no clusters here
            within = within.join(small_side(cross.select("id"), stats["cross_partition_matches"]), "id", "left_anti")
        members = (within.groupBy("band", "bucket").agg(F.sort_array(F.collect_list("id")).alias("m"))
                   .where(F.size("m") > 1))
        pos = members.select("m", F.posexplode("m").alias("i", "id")).where(F.col("i") > 0)
        edges = (pos.select(F.element_at("m", 1).alias("a"), F.col("id").alias("b"))
                 .unionByName(pos.select(F.element_at("m", F.col("i")).alias("a"), F.col("id").alias("b")))
                 .distinct())
        edges = context.persist(edges)
        stats["candidate_pairs"] = _timed(stats, "candidates", edges.count)
        nodes = F.broadcast(edges.select(F.col("a").alias("id")).unionByName(edges.select(F.col("b").alias("id"))).distinct())
        node_texts = texts.join(nodes, "id")
        pairs = (edges.join(node_texts.select(F.col("id").alias("a"), F.col(TEXT).alias("a_text")), "a")
                 .join(node_texts.select(F.col("id").alias("b"), F.col(TEXT).alias("b_text")), "b"))
        verified = context.persist(self._verified(pairs.select("a", "b", "a_text", "b_text")))
        stats["verified_pairs"] = _timed(stats, "verified", verified.count)
        if stats["verified_pairs"]:
            labels, stats["cc_iterations"] = _timed(stats, "components", lambda: connected_components(verified))
            best = (verified.select(F.col("a").alias("node"), SIMILARITY)
                    .unionByName(verified.select(F.col("b").alias("node"), SIMILARITY))
                    .groupBy("node").agg(F.max(SIMILARITY).alias(SIMILARITY)))
            labels = labels.join(best, "node")
        else:
            labels = df.sparkSession.createDataFrame([], "node string, label string, similarity double")
            stats["cc_iterations"] = 0
        labels = context.persist(labels)
        sizes = labels.groupBy("label").count()
        stats["clusters"] = {int(r["count"]): int(r["n"]) for r in
                             sizes.groupBy("count").agg(F.count(F.lit(1)).alias("n")).collect()}
        stats["rows_in_clusters"] = sum(size * n for size, n in stats["clusters"].items())
        context.stats["near_dedup"] = stats

        # -- assign: representative = smallest id; cluster id = its text hash
        # (the clustered rows are few: their labels and the representatives' hashes are broadcast
        # to the rows, which are not shuffled; the data has a `label` column of its own, so the
        # component label is `_rep` here)
        in_clusters = stats["rows_in_clusters"]
        reps = small_side(labels.select(F.col("label").alias("_rep")).distinct(), in_clusters)
        rep_hash = df.select(F.col("id").alias("_rep"), F.col(HASH).alias("_rep_hash")).join(reps, "_rep")
        member = (labels.select(F.col("node").alias("id"), F.col("label").alias("_rep"), SIMILARITY)
                  .join(small_side(rep_hash, in_clusters), "_rep", "left"))
        assigned = df.join(small_side(member, in_clusters), "id", "left")
        if cross is not None:
            assigned = assigned.join(small_side(cross.withColumnRenamed(SIMILARITY, "_cross_sim"),
                                                stats["cross_partition_matches"]), "id", "left")
        else:
            assigned = assigned.withColumns({DUPLICATE_OF: F.lit(None).cast("string"),
                                             "prior_cluster": F.lit(None).cast("string"),
                                             "_cross_sim": F.lit(None).cast("double")})
        if self.drop:
            cluster = F.coalesce("prior_cluster", "_rep_hash", HASH)
            reason = (F.when(F.col("prior_cluster").isNotNull(), F.lit("near_duplicate_cross_partition"))
                      .when(F.col("_rep").isNotNull() & (F.col("_rep") != F.col("id")), F.lit("near_duplicate")))
        else:
            # a cluster touching an earlier partition inherits that cluster's id (its smallest one)
            inherited = (assigned.where(F.col("_rep").isNotNull() & F.col("prior_cluster").isNotNull())
                         .groupBy("_rep").agg(F.min("prior_cluster").alias("_inherited")))
            assigned = assigned.join(inherited, "_rep", "left")
            cluster = F.coalesce("_inherited", "prior_cluster", "_rep_hash", HASH)
            reason = F.lit(None).cast("string")
        marked = (assigned
                  .withColumn(CLUSTER, cluster)
                  .withColumn(REASON, reason)
                  .withColumn(DUPLICATE_OF, F.when(F.col(REASON) == "near_duplicate", F.col("_rep"))
                              .otherwise(F.col(DUPLICATE_OF)))
                  .withColumn(SIMILARITY, F.coalesce("_cross_sim", SIMILARITY)))
        internal = ["_rep", "_rep_hash", "prior_cluster", "_cross_sim", "_inherited"]
        marked = context.persist(marked.drop(*[c for c in internal if c in marked.columns]))
        kept = marked.where(F.col(REASON).isNull()).drop(REASON, DUPLICATE_OF, SIMILARITY)
        dropped = marked.where(F.col(REASON).isNotNull())
        return kept, dropped
