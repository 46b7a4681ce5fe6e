"""MinHash near-duplicate clusters on Spark, with nothing that grows with the corpus on the driver.

The rule is the local one (`transforms.minhash`): signatures and LSH band keys of each row come
from `minhash.signatures` / `minhash.band_hashes` in `mapInArrow`; in each band bucket every row
is paired with the bucket's first row in dataset order (`minhash.candidate_pairs`' star); a pair
of rows with different exact keys is similar when `minhash.estimated_jaccard` of their signatures
reaches the threshold; rows with the same exact key are one. Clusters are the connected
components of those edges, found by the large-star / small-star algorithm (Kiveris et al.,
"Connected Components in MapReduce and Beyond", SoCC 2014) as DataFrame joins and aggregations,
checkpointed every round so the plan does not grow. The copy kept in each cluster is the first by
`keep_order`; the others are rejected as `exact_duplicate_of:<id>` or `near_duplicate_of:<id>`.
"""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from .. import dedup, minhash
from .keep import NODE, keep_order

EMPTY_BAND_VALUE = np.uint32(0xFFFFFFFF)


def minhash_params(params: dict) -> minhash.MinHashParams:
    return minhash.MinHashParams.from_threshold(
        float(params.get("threshold", 0.8)),
        num_perm=int(params.get("num_perm", 128)),
        ngram=int(params.get("ngram", 5)),
        seed=int(params.get("seed", 1)),
        false_negative_weight=float(params.get("false_negative_weight", 0.5)),
    )


def _fingerprints(batches, kind: str, columns: list[str], params: minhash.MinHashParams, quality_column: str):
    """Each row's fingerprint: exact key, length, signature (bytes), band keys, whether it has words."""
    for batch in batches:
        table = pa.Table.from_batches([batch])
        data = table.select(columns)
        keys = dedup.dedup_keys(data, kind)
        signatures = minhash.signatures(dedup.text_of(data, kind), params)
        bands = minhash.band_hashes(signatures, params).view(np.int64)  # Spark has no uint64: same bits
        wordless = (signatures == EMPTY_BAND_VALUE).all(axis=1)
        quality = table.column(quality_column).cast(pa.float64()) if quality_column in table.schema.names else pa.nulls(len(table), pa.float64())
        source = table.column("source") if "source" in table.schema.names else pa.nulls(len(table), pa.string())
        yield from pa.table(
            {
                NODE: table.column(NODE),
                "_tcm_id": table.column("id"),
                "_tcm_key": keys.column("key").cast(pa.binary()),
                "_tcm_length": keys.column("length").cast(pa.int64()),
                "_tcm_quality": quality,
                "_tcm_source": source.cast(pa.string()),
                "_tcm_signature": pa.array([row.tobytes() for row in signatures], pa.binary()),
                "_tcm_bands": pa.array(list(bands), pa.list_(pa.int64())),
                "_tcm_wordless": pa.array(wordless, pa.bool_()),
            }
        ).to_batches()


FINGERPRINT_SCHEMA = (
    f"{NODE} long, _tcm_id string, _tcm_key binary, _tcm_length long, _tcm_quality double, _tcm_source string, "
    "_tcm_signature binary, _tcm_bands array<long>, _tcm_wordless boolean"
)


def _similarities(batches):
    """Estimated Jaccard of each candidate pair, by `minhash.estimated_jaccard`."""
    for batch in batches:
        left = np.frombuffer(b"".join(batch.column("sa").to_pylist()), dtype=np.uint32)
        right = np.frombuffer(b"".join(batch.column("sb").to_pylist()), dtype=np.uint32)
        width = len(left) // max(1, batch.num_rows)
        share = minhash.estimated_jaccard(left.reshape(-1, width), right.reshape(-1, width)) if batch.num_rows else np.zeros(0)
        yield pa.RecordBatch.from_arrays(
            [batch.column("a"), batch.column("b"), pa.array(np.asarray(share, np.float64))], names=["a", "b", "similarity"]
        )


def _truncate(frame):
    """Cut the plan's lineage: a reliable checkpoint when a checkpoint folder is set, else a local one."""
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint(eager=True)
    return frame.localCheckpoint(eager=True)


def connected_components(edges, max_rounds: int = 100):
    """(node, root) of every node on an edge; root = the smallest node of its component.

    Alternates large-star (each node links its larger neighbours to its smallest neighbour) and
    small-star (each node links its smaller neighbours and itself to its smallest neighbour) until
    an alternation changes no edge; the edges then form one star per component around its
    smallest node."""
    from pyspark.sql import functions as F

    current = _truncate(edges.select(F.greatest("a", "b").alias("a"), F.least("a", "b").alias("b")).where("a != b").distinct())
    for _ in range(max_rounds):
        both = current.unionByName(current.select(F.col("b").alias("a"), F.col("a").alias("b")))
        smallest = both.groupBy("a").agg(F.least(F.min("b"), F.col("a")).alias("m"))
        large = both.join(smallest, "a").where(F.col("b") > F.col("a")).select(F.col("b").alias("a"), F.col("m").alias("b"))
        oriented = large.select(F.greatest("a", "b").alias("a"), F.least("a", "b").alias("b")).where("a != b").distinct()
        smallest = oriented.groupBy("a").agg(F.min("b").alias("m"))
        small = (
            oriented.join(smallest, "a")
            .select(F.col("b").alias("a"), F.col("m").alias("b"))
            .unionByName(smallest.select("a", F.col("m").alias("b")))
        )
        following = _truncate(small.select(F.greatest("a", "b").alias("a"), F.least("a", "b").alias("b")).where("a != b").distinct())
        if following.count() == current.count() and following.subtract(current).isEmpty():
            break
        current = following
    else:
        raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
    roots = current.select(F.col("b").alias(NODE)).distinct().withColumn("_tcm_root", F.col(NODE))
    return current.select(F.col("a").alias(NODE), F.col("b").alias("_tcm_root")).unionByName(roots)


def cluster_decisions(spark, rows, kind: str, columns: list[str], params: dict):
    """(decisions, stats): one row per member of a cluster of two or more rows, with the node, the
    id kept for its cluster and, for a rejected member, its reason. `rows` has NODE."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    settings = minhash_params(params)
    keep = params.get("keep", ["first"])
    keep = [keep] if isinstance(keep, str) else list(keep)
    quality_column = params.get("quality_column", "quality_score")
    fingerprint = functools.partial(_fingerprints, kind=kind, columns=columns, params=settings, quality_column=quality_column)
    prints = rows.select(NODE, *columns).mapInArrow(fingerprint, FINGERPRINT_SCHEMA).persist(StorageLevel.DISK_ONLY)

    # Same exact key: each row linked to the key's first row.
    first_of_key = prints.groupBy("_tcm_key").agg(F.min(NODE).alias("a"))
    exact = prints.join(first_of_key, "_tcm_key").where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b"))

    # Same band key: each row paired with the bucket's first row (a band's number is in its key).
    buckets = prints.where(~F.col("_tcm_wordless")).select(NODE, F.explode("_tcm_bands").alias("_tcm_band"))
    heads = buckets.groupBy("_tcm_band").agg(F.min(NODE).alias("a"))
    candidates = buckets.join(heads, "_tcm_band").where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b")).distinct()
    left = prints.select(F.col(NODE).alias("a"), F.col("_tcm_key").alias("ka"), F.col("_tcm_signature").alias("sa"))
    right = prints.select(F.col(NODE).alias("b"), F.col("_tcm_key").alias("kb"), F.col("_tcm_signature").alias("sb"))
    pairs = candidates.join(left, "a").join(right, "b").where(F.col("ka") != F.col("kb")).select("a", "b", "sa", "sb")
    scored = pairs.mapInArrow(_similarities, "a long, b long, similarity double").persist(StorageLevel.DISK_ONLY)
    similar = scored.where(F.col("similarity") >= settings.threshold).select("a", "b")
    tally = scored.agg(F.count("*"), F.sum(F.when(F.col("similarity") >= settings.threshold, 1).otherwise(0))).first()

    components = connected_components(exact.unionByName(similar))
    members = components.join(prints.drop("_tcm_signature", "_tcm_bands"), NODE)
    cluster = Window.partitionBy("_tcm_root").orderBy(*keep_order(keep, params.get("source_priority", [])))
    decided = (
        members.withColumn("_tcm_kept_id", F.first("_tcm_id").over(cluster))
        .withColumn("_tcm_kept_key", F.first("_tcm_key").over(cluster))
        .withColumn("_tcm_rank", F.row_number().over(cluster))
    )
    label = F.when(F.col("_tcm_key") == F.col("_tcm_kept_key"), F.lit("exact_duplicate_of:")).otherwise(F.lit("near_duplicate_of:"))
    decisions = decided.select(
        NODE,
        F.col("_tcm_root"),
        F.col("_tcm_kept_id"),
        F.when(F.col("_tcm_rank") > 1, F.concat(label, F.col("_tcm_kept_id"))).alias("_tcm_reason"),
    )
    decisions = _truncate(decisions)
    stats = {
        "near_pairs_checked": int(tally[0] or 0),
        "near_pairs_similar": int(tally[1] or 0),
        "exact_groups": first_of_key.join(exact.select("a").distinct(), "a").count(),
        "clusters": decisions.select("_tcm_root").distinct().count(),
        "minhash": {"num_perm": settings.num_perm, "bands": settings.bands, "rows": settings.rows, "ngram": settings.ngram, "threshold": settings.threshold},
    }
    prints.unpersist()
    scored.unpersist()
    return decisions, stats


def run_minhash_dedup(spark, writer, kind: str, files: list[str], params: dict):
    """Write `kind` of these files through `writer`, near-duplicates rejected; returns
    (rows in, kept, rejected, stats)."""
    from collections import Counter

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from .datasets import FILE_ORDINAL, ROW_INDEX, read_files, with_order

    raw = read_files(spark, files)
    columns = raw.columns
    rows = with_order(spark, raw, files)
    rows = rows.withColumn(NODE, F.col(FILE_ORDINAL) * F.lit(1 << 32) + F.col(ROW_INDEX)).drop(FILE_ORDINAL, ROW_INDEX)
    rows_in = rows.count()
    decisions, stats = cluster_decisions(spark, rows, kind, columns, params)
    decided = (
        rows.join(decisions.select(NODE, "_tcm_reason"), NODE, "left")
        .orderBy(NODE)  # back to dataset order
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        is_kept = F.col("_tcm_reason").isNull()
        rule = F.substring_index(F.col("_tcm_reason"), ":", 1)
        tally = decided.groupBy(F.spark_partition_id().alias("task"), is_kept.alias("kept"), rule.alias("rule")).count().collect()
        kept_by_task, rejected_by_task, reasons = Counter(), Counter(), Counter()
        for task, kept_flag, reason, n in tally:
            (kept_by_task if kept_flag else rejected_by_task)[task] += n
            if not kept_flag:
                reasons[reason] += n
        kept = writer.write(kind, decided.filter(is_kept).select(*columns), None, kept_by_task)
        rejected = writer.reject(
            kind, decided.filter(~is_kept).select(*columns, F.col("_tcm_reason").alias("reason")), None, rejected_by_task, reasons
        )
    finally:
        decided.unpersist()
    return rows_in, kept, rejected, stats
