"""Exact and MinHash near-duplicate clusters on Spark, with the rules of `transforms.dedup.clusters`.

Each row's fingerprint (exact key, length, quality, source, MinHash signature, shingle set) comes
from `deduplicate.fingerprint_batch` in `mapInArrow`, so both engines see the same keys, signatures
and shingles. Edges: every row to the first row (dataset order) of its exact key; with MinHash,
every row to the first row of each LSH band bucket it falls in (`minhash.candidate_pairs`' star),
a pair dropped when either row has no words or both share an exact key, kept when the exact
Jaccard of the two shingle sets (`minhash.exact_jaccard`, as the local engine) reaches the
threshold. Clusters are the connected components of those edges, found by the
large-star / small-star algorithm (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014) as DataFrame joins, checkpointed every round so the plan does not grow. In each
cluster the kept row is chosen by `clusters.kept_member`, the local engine's policy function,
over the cluster's rows grouped on an executor.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pyarrow as pa

from transforms.dedup import minhash
from transforms.dedup.clusters import Fingerprints, kept_member
from transforms.dedup.deduplicate import fingerprint_batch

NODE = "_tcm_node"  # a row's dataset position as one number: file ordinal << 32 | row index
EMPTY_VALUE = np.uint32(0xFFFFFFFF)


def _fingerprints(batches, kind: str, columns: list[str], params: minhash.MinHashParams | None, quality_column: str):
    for batch in batches:
        table = pa.Table.from_batches([batch])
        rows, _ = fingerprint_batch(table.select(columns), kind, params, quality_column)
        out = {
            NODE: table.column(NODE),
            "_tcm_id": pa.array(rows.ids.tolist(), pa.string()),
            "_tcm_key": pa.array(rows.keys.tolist(), pa.binary()),  # Spark has no fixed-size binary
            "_tcm_length": pa.array(rows.lengths, pa.int64()),
            "_tcm_quality": pa.array(rows.quality, pa.float64()),
            "_tcm_source": pa.array(rows.sources.tolist(), pa.string()),
        }
        if params is not None:
            sig = rows.signatures
            out["_tcm_shingles"] = pa.array([r.tobytes() for r in rows.shingles], pa.binary())
            out["_tcm_bands"] = pa.array(list(minhash.band_hashes(sig, params).view(np.int64)), pa.list_(pa.int64()))
            out["_tcm_wordless"] = pa.array((sig == EMPTY_VALUE).all(axis=1) if len(sig) else np.zeros(0, bool), pa.bool_())
        yield from pa.table(out).to_batches()


def _schema(signed: bool) -> str:
    base = f"{NODE} long, _tcm_id string, _tcm_key binary, _tcm_length long, _tcm_quality double, _tcm_source string"
    return base + (", _tcm_shingles binary, _tcm_bands array<long>, _tcm_wordless boolean" if signed else "")


def _shingle_set(value: bytes) -> np.ndarray:
    return np.frombuffer(value, dtype=np.uint32)


def _similarities(batches):
    for batch in batches:
        pairs = zip(batch.column("sa").to_pylist(), batch.column("sb").to_pylist())
        share = np.fromiter((minhash.exact_jaccard(_shingle_set(a), _shingle_set(b)) for a, b in pairs), np.float64, count=batch.num_rows)
        yield pa.RecordBatch.from_arrays([batch.column("a"), batch.column("b"), pa.array(share)], names=["a", "b", "similarity"])


def _truncate(frame):
    """Cut the plan's lineage: a reliable checkpoint when a checkpoint folder is set, else a local one."""
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint(eager=True)
    return frame.localCheckpoint(eager=True)


def connected_components(edges, max_rounds: int = 100):
    """(node, root) of every node on an edge; root = the smallest node of its component."""
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


DECISION_SCHEMA = f"{NODE} long, id string, cluster string, kept boolean, similarity double, match string, source string, reason string"


def _decide(members: pd.DataFrame, keep: list[str], source_priority: list[str], signed: bool) -> pd.DataFrame:
    """One cluster: the kept row by the local policy, and each member's audit row and reason."""
    members = members.sort_values(NODE, kind="stable").reset_index(drop=True)
    rows = Fingerprints(
        ids=members["_tcm_id"].to_numpy(object),
        keys=np.array(members["_tcm_key"].tolist(), dtype="S16"),
        lengths=members["_tcm_length"].to_numpy(np.int64),
        quality=members["_tcm_quality"].to_numpy(np.float64),
        sources=members["_tcm_source"].to_numpy(object),
    )
    kept = kept_member(rows, keep, source_priority)
    exact = rows.keys == rows.keys[kept]
    similarity = np.ones(len(rows))
    if signed:
        sets = [_shingle_set(b) for b in members["_tcm_shingles"]]
        similarity = np.array([1.0 if same else minhash.exact_jaccard(one, sets[kept]) for one, same in zip(sets, exact)])
    is_kept = np.arange(len(rows)) == kept
    match = np.where(is_kept, "kept", np.where(exact, "exact", "near"))
    label = np.where(exact, "exact_duplicate_of:", "near_duplicate_of:")
    cluster = rows.ids[kept]
    return pd.DataFrame(
        {
            NODE: members[NODE],
            "id": rows.ids,
            "cluster": cluster,
            "kept": is_kept,
            "similarity": similarity,
            "match": match,
            "source": rows.sources,
            "reason": [None if k else f"{lab}{cluster}" for k, lab in zip(is_kept, label)],
        }
    )


def cluster_decisions(rows, kind: str, columns: list[str], settings, params: minhash.MinHashParams | None):
    """(decisions, stats): one row per member of a cluster of two or more rows (DECISION_SCHEMA,
    reason null for the kept row). `rows` has NODE."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    signed = params is not None
    fingerprint = functools.partial(_fingerprints, kind=kind, columns=columns, params=params, quality_column=settings.quality_column)
    prints = rows.select(NODE, *columns).mapInArrow(fingerprint, _schema(signed)).persist(StorageLevel.DISK_ONLY)

    first_of_key = prints.groupBy("_tcm_key").agg(F.min(NODE).alias("a"))
    edges = prints.join(first_of_key, "_tcm_key").where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b"))
    checked = similar_count = 0
    scored = None
    if signed:
        buckets = prints.select(NODE, F.posexplode("_tcm_bands").alias("_tcm_band_no", "_tcm_band"))
        heads = buckets.groupBy("_tcm_band_no", "_tcm_band").agg(F.min(NODE).alias("a"))
        candidates = (
            buckets.join(heads, ["_tcm_band_no", "_tcm_band"]).where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b")).distinct()
        )
        left = prints.select(F.col(NODE).alias("a"), F.col("_tcm_key").alias("ka"), F.col("_tcm_shingles").alias("sa"), F.col("_tcm_wordless").alias("wa"))
        right = prints.select(F.col(NODE).alias("b"), F.col("_tcm_key").alias("kb"), F.col("_tcm_shingles").alias("sb"), F.col("_tcm_wordless").alias("wb"))
        pairs = (
            candidates.join(left, "a").join(right, "b")
            .where(~F.col("wa") & ~F.col("wb") & (F.col("ka") != F.col("kb")))
            .select("a", "b", "sa", "sb")
        )
        scored = pairs.mapInArrow(_similarities, "a long, b long, similarity double").persist(StorageLevel.DISK_ONLY)
        is_similar = F.col("similarity") >= params.threshold
        tally = scored.agg(F.count("*"), F.sum(F.when(is_similar, 1).otherwise(0))).first()
        checked, similar_count = int(tally[0] or 0), int(tally[1] or 0)
        edges = edges.unionByName(scored.where(is_similar).select("a", "b"))

    components = connected_components(edges)
    members = components.join(prints.drop("_tcm_bands", "_tcm_wordless"), NODE)
    keep, source_priority = list(settings.keep), list(settings.source_priority)

    def decide(members: pd.DataFrame) -> pd.DataFrame:
        return _decide(members, keep, source_priority, signed)

    decisions = _truncate(members.groupBy("_tcm_root").applyInPandas(decide, DECISION_SCHEMA))
    stats = {
        "clusters": decisions.where("kept").count(),
        "candidate_pairs_checked": checked,
        "candidate_pairs_similar": similar_count,
    }
    prints.unpersist()
    if scored is not None:
        scored.unpersist()
    return decisions, stats
