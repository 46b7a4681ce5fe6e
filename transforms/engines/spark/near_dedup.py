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


def _fingerprints(batches, kind: str, columns: list[str], params: minhash.MinHashParams | None, quality_column: str, signatures: bool):
    for batch in batches:
        table = pa.Table.from_batches([batch])
        rows, _ = fingerprint_batch(table.select(columns), kind, params, quality_column)
        yield from _print_table(table.column(NODE), rows, params, signatures).to_batches()


def _print_table(nodes, rows: Fingerprints, params: minhash.MinHashParams | None, signatures: bool) -> pa.Table:
    """Fingerprints as the columns the Spark plan joins on (`_schema`)."""
    out = {
        NODE: nodes,
        "_tcm_id": pa.array(rows.ids.tolist(), pa.string()),
        "_tcm_key": pa.array(rows.keys.tolist(), pa.binary()),  # Spark has no fixed-size binary
        "_tcm_length": pa.array(rows.lengths, pa.int64()),
        "_tcm_quality": pa.array(rows.quality, pa.float64()),
        "_tcm_source": pa.array(rows.sources.tolist(), pa.string()),
    }
    if params is not None:
        sig = rows.signatures
        shingles = rows.shingles if rows.shingles is not None else [None] * len(rows)
        out["_tcm_shingles"] = pa.array([None if r is None else r.tobytes() for r in shingles], pa.binary())
        out["_tcm_bands"] = pa.array(list(minhash.band_hashes(sig, params).view(np.int64)), pa.list_(pa.int64()))
        out["_tcm_wordless"] = pa.array((sig == EMPTY_VALUE).all(axis=1) if len(sig) else np.zeros(0, bool), pa.bool_())
        if signatures:
            out["_tcm_signature"] = pa.array([r.tobytes() for r in sig], pa.binary())
    return pa.table(out)


def _schema(signed: bool, signatures: bool = False) -> str:
    base = f"{NODE} long, _tcm_id string, _tcm_key binary, _tcm_length long, _tcm_quality double, _tcm_source string"
    if not signed:
        return base
    return base + ", _tcm_shingles binary, _tcm_bands array<long>, _tcm_wordless boolean" + (", _tcm_signature binary" if signatures else "")


def _shingle_set(value: bytes) -> np.ndarray:
    return np.frombuffer(value, dtype=np.uint32)


def _similarity(sa, sb, ga, gb) -> float:
    """The local rule (`clusters.similarities`): the exact Jaccard of the shingle sets where both
    rows have one, else the signatures' estimate (index rows stored without shingle sets)."""
    if sa is not None and sb is not None:
        return minhash.exact_jaccard(_shingle_set(sa), _shingle_set(sb))
    return float(minhash.estimated_jaccard(_shingle_set(ga), _shingle_set(gb)))


def _similarities(batches):
    for batch in batches:
        columns = [batch.column(n).to_pylist() if n in batch.schema.names else [None] * batch.num_rows for n in ("sa", "sb", "ga", "gb")]
        share = np.fromiter((_similarity(*four) for four in zip(*columns)), np.float64, count=batch.num_rows)
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
    """One cluster: the kept row by the local policy (a row of the corpus built before, NODE < 0,
    always wins), and each member's audit row and reason."""
    members = members.sort_values(NODE, kind="stable").reset_index(drop=True)
    rows = Fingerprints(
        ids=members["_tcm_id"].to_numpy(object),
        keys=np.array(members["_tcm_key"].tolist(), dtype="S16"),
        lengths=members["_tcm_length"].to_numpy(np.int64),
        quality=members["_tcm_quality"].to_numpy(np.float64),
        sources=members["_tcm_source"].to_numpy(object),
    )
    prior = np.flatnonzero(members[NODE].to_numpy() < 0)
    if len(prior):  # the policy among the prior rows alone: they come first, in their own order
        kept = int(prior[kept_member(rows.take(prior), keep, source_priority)])
    else:
        kept = kept_member(rows, keep, source_priority)
    exact = rows.keys == rows.keys[kept]
    similarity = np.ones(len(rows))
    if signed:
        shingles = members["_tcm_shingles"].tolist()
        signatures = members["_tcm_signature"].tolist() if "_tcm_signature" in members else [None] * len(rows)
        similarity = np.array(
            [1.0 if same else _similarity(shingles[i], shingles[kept], signatures[i], signatures[kept]) for i, same in enumerate(exact)]
        )
    is_kept = np.arange(len(rows)) == kept
    match = np.where(is_kept, "kept", np.where(exact, "exact", "near"))
    label = np.where(exact, "exact_duplicate_of:", "near_duplicate_of:")
    cluster = rows.ids[kept]
    new = members[NODE].to_numpy() >= 0
    return pd.DataFrame(
        {
            NODE: members[NODE],
            "id": rows.ids,
            "cluster": cluster,
            "kept": is_kept,
            "similarity": similarity,
            "match": match,
            "source": rows.sources,
            "reason": [f"{lab}{cluster}" if n and not k else None for k, n, lab in zip(is_kept, new, label)],
        }
    )


def fingerprints(rows, kind: str, columns: list[str], settings, params: minhash.MinHashParams | None, signatures: bool = False):
    """Each row's fingerprint (`_schema`), persisted on the executors' disks; `rows` has NODE.
    `signatures` adds the MinHash signature (for the persistent index)."""
    from pyspark import StorageLevel

    fingerprint = functools.partial(
        _fingerprints, kind=kind, columns=columns, params=params, quality_column=settings.quality_column, signatures=signatures
    )
    return rows.select(NODE, *columns).mapInArrow(fingerprint, _schema(params is not None, signatures)).persist(StorageLevel.DISK_ONLY)


def _index_prints(batches, params: minhash.MinHashParams | None):
    for batch in batches:
        table = pa.Table.from_batches([batch])
        nodes = table.column(NODE)
        stored = _index_types(table.drop_columns([NODE]), params)
        rows = Fingerprints.from_table(stored)
        if rows.shingles is not None:  # a segment written before shingle sets were stored: null here
            missing = stored.column("shingles").is_null().to_numpy(zero_copy_only=False)
            rows.shingles[missing] = None
        yield from _print_table(nodes, rows, params, params is not None).to_batches()


def _index_types(table: pa.Table, params: minhash.MinHashParams | None) -> pa.Table:
    """An index segment as Spark hands it over (unsigned integers widened, fixed-size lists as
    lists) back in the types `Fingerprints.from_table` reads."""
    if params is not None:
        position = table.schema.get_field_index("signature")
        flat = table.column(position).combine_chunks().flatten().cast(pa.uint32())
        table = table.set_column(position, "signature", pa.FixedSizeListArray.from_arrays(flat, params.num_perm))
    if "shingles" in table.schema.names:
        position = table.schema.get_field_index("shingles")
        table = table.set_column(position, "shingles", table.column(position).cast(pa.list_(pa.uint32())))
    return table


def prior_fingerprints(spark, files: list[str], params: minhash.MinHashParams | None):
    """The fingerprints of the persistent index's segments (`transforms/dedup/index.py`), in the
    order the local engine loads them, numbered below every new row (NODE < 0)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from .datasets import FILE_ORDINAL, ROW_INDEX, read_files, with_order

    stored = read_files(spark, files)
    wanted = ["id", "key", "length", "quality", "source"] + (["signature"] + (["shingles"] if "shingles" in stored.columns else []) if params else [])
    rows = with_order(spark, stored.select(*wanted), files, first=-len(files))
    rows = rows.withColumn(NODE, F.col(FILE_ORDINAL) * F.lit(1 << 32) + F.col(ROW_INDEX)).drop(FILE_ORDINAL, ROW_INDEX)
    convert = functools.partial(_index_prints, params=params)
    return rows.mapInArrow(convert, _schema(params is not None, params is not None)).persist(StorageLevel.DISK_ONLY)


def cluster_decisions(prints, settings, params: minhash.MinHashParams | None, prior=None):
    """(decisions, stats): one row per member of a cluster of two or more rows (DECISION_SCHEMA,
    reason null for the kept row and for rows of the corpus built before). `prints` are the new
    rows' fingerprints (`fingerprints`), `prior` those of the persistent index (NODE < 0): pairs
    of two prior rows were decided when they were added, so they make no edge."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    signed = params is not None
    if prior is not None:
        prints = prints.unionByName(prior)
    fresh = (F.col("a") >= 0) | (F.col("b") >= 0)

    first_of_key = prints.groupBy("_tcm_key").agg(F.min(NODE).alias("a"))
    edges = prints.join(first_of_key, "_tcm_key").where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b")).where(fresh)
    checked = similar_count = 0
    scored = None
    if signed:
        estimate = "_tcm_signature" in prints.columns
        buckets = prints.select(NODE, F.posexplode("_tcm_bands").alias("_tcm_band_no", "_tcm_band"))
        heads = buckets.groupBy("_tcm_band_no", "_tcm_band").agg(F.min(NODE).alias("a"))
        candidates = (
            buckets.join(heads, ["_tcm_band_no", "_tcm_band"]).where(F.col(NODE) != F.col("a")).select("a", F.col(NODE).alias("b")).distinct().where(fresh)
        )

        def side(name: str):
            extra = [F.col("_tcm_signature").alias(f"g{name}")] if estimate else []
            return prints.select(
                F.col(NODE).alias(name), F.col("_tcm_key").alias(f"k{name}"), F.col("_tcm_shingles").alias(f"s{name}"),
                F.col("_tcm_wordless").alias(f"w{name}"), *extra,
            )

        pairs = (
            candidates.join(side("a"), "a").join(side("b"), "b")
            .where(~F.col("wa") & ~F.col("wb") & (F.col("ka") != F.col("kb")))
            .select("a", "b", "sa", "sb", *(["ga", "gb"] if estimate else []))
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
    if scored is not None:
        scored.unpersist()
    return decisions, stats
