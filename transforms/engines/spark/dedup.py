"""The dedup stage on Spark: repeated paragraphs, exact and MinHash clusters, the persistent index,
with the rules, reasons, audits and stats of `transforms/dedup/deduplicate.py`.

Per kind, as the local stage:
1. repeated paragraphs (documents of the judged categories): `paragraphs.count_lines` per batch in
   `mapInArrow`, the (source, line hash) counts summed across the cluster, the lines that reach
   `min_documents` and `min_share` of their source collected (boilerplate: few lines) and chosen by
   `paragraphs.RepeatedLines.choose`, then broadcast; `paragraphs.strip_batch` removes them from
   every document in `mapInArrow` and reports per batch what it removed, so the
   `repeated_paragraphs` audit is `paragraphs.audit_table` of the summed counts (a line's text as
   first seen in dataset order: batches are contiguous runs of the dataset). A document left
   without words is rejected `repeated_paragraphs_only` and takes no part in clustering;
2. fingerprints of the stripped rows and clusters (`near_dedup.py`), against the fingerprints of
   the persistent index (`dedup.index_path`, `transforms/dedup/index.py`) when one is set;
3. kept and rejected rows in dataset order, the `clusters` audit, and the run's surviving
   fingerprints written as its index segment (one task, streamed, in dataset order).
"""
from __future__ import annotations

import functools
import glob
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import DOCUMENTS
from schemas.dataset import StageManifest

from .datasets import HadoopStore, SparkDatasetWriter, kinds_in, read_files
from .stages import TEXT_KINDS, Progress, close_ledger, input_files

EMPTIED = "_tcm_emptied"
AUDIT = "_tcm_audit"  # a row of what a batch removed, not a document
LINE_SOURCE, LINE_HASH, LINE_REMOVED, LINE_TEXT = "_tcm_line_source", "_tcm_line_hash", "_tcm_line_removed", "_tcm_line_text"
_SIGN = 1 << 64


def _signed(line_hash: int) -> int:
    """A uint64 line hash as Spark's long."""
    return line_hash - _SIGN if line_hash >= 1 << 63 else line_hash


def _unsigned(value: int) -> int:
    return value + _SIGN if value < 0 else value


# -- repeated paragraphs ----------------------------------------------------------------------


def paragraphs_apply(spark, files: list[str], settings) -> bool:
    """Whether the local stage would strip repeated paragraphs: enabled, and a document of a
    judged category present (read from the category column alone)."""
    from pyspark.sql import functions as F

    if not settings.paragraph_option("enabled", True) or not files:
        return False
    categories = settings.paragraph_option("categories", ["web"])
    if categories is None:
        return True
    frame = read_files(spark, files)
    if "category" not in frame.columns:
        return False
    return not frame.select("category").where(F.col("category").isin(list(categories))).isEmpty()


def _count_lines(batches, min_chars: int, categories):
    from transforms.dedup import paragraphs

    for batch in batches:
        holding, documents = paragraphs.count_lines(pa.Table.from_batches([batch]), min_chars, categories)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([s for s, _ in holding] + list(documents), pa.string()),
                pa.array([_signed(h) for _, h in holding] + [None] * len(documents), pa.int64()),
                pa.array(list(holding.values()) + list(documents.values()), pa.int64()),
            ],
            names=["source", "line", "documents"],
        )


def repeated_lines(rows, settings):
    """`paragraphs.RepeatedLines` of these documents: counts summed on the executors; only the
    lines that pass both thresholds reach the driver, where the local rule chooses them."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from transforms.dedup import paragraphs

    min_chars = settings.paragraph_option("min_chars", 8)
    min_documents = settings.paragraph_option("min_documents", 5)
    min_share = settings.paragraph_option("min_share", 0.05)
    categories = settings.paragraph_option("categories", ["web"])
    categories = None if categories is None else frozenset(categories)
    columns = [c for c in ("source", "text", "category") if c in rows.columns]
    count = functools.partial(_count_lines, min_chars=min_chars, categories=categories)
    totals = (
        rows.select(*columns).mapInArrow(count, "source string, line long, documents long")
        .groupBy("source", "line").agg(F.sum("documents").alias("documents"))
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        documents = Counter({s: int(n) for s, n in totals.where(F.col("line").isNull()).select("source", "documents").collect()})
        if not documents:
            return paragraphs.RepeatedLines(min_chars=min_chars)
        per_source = rows.sparkSession.createDataFrame(list(documents.items()), "source string, _tcm_source_documents long")
        passing = (
            totals.where(F.col("line").isNotNull() & (F.col("documents") >= min_documents))
            .join(F.broadcast(per_source), "source")
            .where(F.col("documents") >= F.lit(float(min_share)) * F.col("_tcm_source_documents"))
            .select("source", "line", "documents")
            .collect()
        )
    finally:
        totals.unpersist()
    holding = Counter({(s, _unsigned(line)): int(n) for s, line, n in passing})
    return paragraphs.RepeatedLines.choose(holding, documents, min_chars, min_documents, min_share)


def _strip(batches, columns: list[str], repeated, schema: pa.Schema):
    """Each batch without its repeated lines (`paragraphs.strip_batch`), every row flagged when it
    lost its last word; then one row per (source, line) removed in the batch: occurrences, the
    line's text as first seen, and the batch's first row (batches are runs of the dataset)."""
    from transforms.clean.normalize import match_key
    from transforms.dedup import paragraphs
    from .near_dedup import NODE

    value = repeated.value
    data_fields = [f for f in schema if f.name in columns]
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        nodes = table.column(NODE)
        body = table.select(columns)
        text_type = body.schema.field("text").type
        body = body.set_column(body.schema.get_field_index("text"), "text", body.column("text").cast(pa.string()))
        before = np.array([bool(match_key(t or "")) for t in body.column("text").to_pylist()], dtype=bool)
        stripped, removed, first_seen = paragraphs.strip_batch(body, value)
        after = np.array([not match_key(t or "") for t in stripped.column("text").to_pylist()], dtype=bool)
        stripped = stripped.set_column(stripped.schema.get_field_index("text"), "text", stripped.column("text").cast(text_type))
        n = table.num_rows
        out = [stripped.column(f.name) for f in data_fields]
        out += [nodes, pa.array(before & after), pa.array([False] * n)]
        out += [pa.nulls(n, pa.string()), pa.nulls(n, pa.int64()), pa.nulls(n, pa.int64()), pa.nulls(n, pa.string())]
        yield from pa.Table.from_arrays(out, schema=schema).to_batches()
        if removed:
            keys = sorted(removed)
            m = len(keys)
            first_node = nodes[0].as_py()
            audit = [pa.nulls(m, f.type) for f in data_fields]
            audit += [pa.array([first_node] * m, pa.int64()), pa.array([False] * m), pa.array([True] * m)]
            audit += [
                pa.array([s for s, _ in keys], pa.string()),
                pa.array([_signed(h) for _, h in keys], pa.int64()),
                pa.array([removed[k] for k in keys], pa.int64()),
                pa.array([first_seen[k] for k in keys], pa.string()),
            ]
            yield from pa.Table.from_arrays(audit, schema=schema).to_batches()


def strip_repeated(rows, columns: list[str], repeated):
    """(documents with NODE and EMPTIED, rows of what was removed), one persisted pass."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import BooleanType, LongType, StringType, StructField, StructType

    from .near_dedup import NODE

    spark = rows.sparkSession
    fields = [StructField(f.name, f.dataType, True) for f in rows.select(*columns).schema.fields]
    fields += [StructField(NODE, LongType(), True), StructField(EMPTIED, BooleanType(), True), StructField(AUDIT, BooleanType(), False)]
    fields += [StructField(n, t, True) for n, t in ((LINE_SOURCE, StringType()), (LINE_HASH, LongType()), (LINE_REMOVED, LongType()), (LINE_TEXT, StringType()))]
    schema = StructType(fields)
    broadcast = spark.sparkContext.broadcast(repeated)
    strip = functools.partial(_strip, columns=columns, repeated=broadcast, schema=to_arrow_schema(schema))
    flagged = rows.select(*columns, NODE).mapInArrow(strip, schema).persist(StorageLevel.DISK_ONLY)
    documents = flagged.where(~F.col(AUDIT)).select(*columns, NODE, EMPTIED)
    removed = flagged.where(F.col(AUDIT)).select(NODE, LINE_SOURCE, LINE_HASH, LINE_REMOVED, LINE_TEXT)
    return flagged, broadcast, documents, removed


def paragraph_audit(removed, repeated):
    """`paragraphs.audit_table` from the removal rows of every batch, and its stats' counts."""
    from pyspark.sql import functions as F

    from transforms.dedup import paragraphs
    from .near_dedup import NODE

    summed = removed.groupBy(LINE_SOURCE, LINE_HASH).agg(
        F.sum(LINE_REMOVED).alias("removed"), F.min_by(LINE_TEXT, F.col(NODE)).alias("line")
    ).collect()
    counts: Counter = Counter()
    first_seen: dict[tuple[str, int], str] = {}
    for source, line_hash, n, text in summed:
        key = (source, _unsigned(line_hash))
        counts[key] = int(n)
        first_seen[key] = text
    return paragraphs.audit_table(repeated, counts, first_seen), counts


# -- the persistent index ---------------------------------------------------------------------


def open_index(settings, mh_params):
    """The local `DedupIndex` of `dedup.index_path`; on Spark it must be a folder that the driver
    and every executor see (a shared mount), as the local engine's is a folder."""
    from transforms.dedup.index import DedupIndex

    path = str(settings.index_path)
    if "://" in path and not path.startswith("file://"):
        raise ValueError(
            f"dedup.index_path {path!r}: on Spark the index is a folder that the driver and every executor see "
            "(a shared mount such as NFS), not a Hadoop URI"
        )
    path = path[len("file://"):] if path.startswith("file://") else path
    signature = {"method": settings.method}
    if mh_params:
        signature.update({"num_perm": mh_params.num_perm, "ngram": mh_params.ngram, "seed": mh_params.seed})
    return DedupIndex(Path(path).resolve(), signature)


def _write_segment(batches, folder: str, segment: str, metadata: dict, num_perm):
    """One task: the surviving fingerprints, in dataset order, streamed into a temporary segment
    file in `Fingerprints.to_table`'s layout; yields the file's path and rows."""
    from transforms.dedup.clusters import Fingerprints, _object_array

    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{segment}.tmp-{os.getpid()}")
    writer, rows = None, 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            prints = Fingerprints(
                ids=np.array(batch.column("_tcm_id").to_pylist(), dtype=object),
                keys=np.array(batch.column("_tcm_key").to_pylist(), dtype="S16"),
                lengths=batch.column("_tcm_length").to_numpy().astype(np.int64),
                quality=batch.column("_tcm_quality").to_numpy(zero_copy_only=False).astype(np.float64),
                sources=np.array(batch.column("_tcm_source").to_pylist(), dtype=object),
            )
            if num_perm:
                prints.signatures = np.stack([np.frombuffer(b, np.uint32) for b in batch.column("_tcm_signature").to_pylist()])
                prints.shingles = _object_array([np.frombuffer(b, np.uint32) for b in batch.column("_tcm_shingles").to_pylist()])
            table = prints.to_table().replace_schema_metadata(metadata)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:
            table = Fingerprints.empty(num_perm).to_table().replace_schema_metadata(metadata)
            pq.write_table(table, tmp, compression="zstd")
    finally:
        if writer is not None:
            writer.close()
    yield pa.RecordBatch.from_arrays([pa.array([tmp]), pa.array([rows], pa.int64())], names=["path", "rows"])


def write_segment(index, kind: str, segment: str, survivors, num_perm) -> Path:
    """Replace segment `segment` of `kind` with the survivors' fingerprints, written by one task
    (the index holds one file per segment, rows in dataset order) and renamed into place."""
    from .near_dedup import NODE

    folder = index.root / kind
    write = functools.partial(_write_segment, folder=str(folder), segment=segment, metadata=index.schema_metadata(), num_perm=num_perm)
    (tmp, _), = survivors.repartition(1).sortWithinPartitions(NODE).mapInArrow(write, "path string, rows long").collect()
    target = folder / f"{segment}.parquet"
    os.replace(tmp, target)
    for stale in glob.glob(str(folder / f".{segment}.tmp-*")):  # attempts of a task Spark retried
        os.remove(stale)
    return target


# -- the stage --------------------------------------------------------------------------------


def run_dedup(inputs, output, params, manifest: StageManifest, engine, progress: Progress | None = None) -> StageManifest:
    """`transforms.dedup.deduplicate.run_dedup_stage` on Spark: the same repeated paragraphs,
    clusters, kept rows, reasons, audits, index segments and stats."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from schemas.dataset import fingerprint
    from schemas.records import CLUSTERS, REPEATED_PARAGRAPHS

    from transforms.dedup.deduplicate import BOILERPLATE_ONLY, DedupSettings, method_stats
    from transforms.dedup.index import segment_name
    from .datasets import FILE_ORDINAL, ROW_INDEX, with_order
    from .near_dedup import NODE, cluster_decisions, fingerprints, prior_fingerprints

    settings = DedupSettings.from_params(params)
    mh_params = settings.minhash_params()
    if settings.method not in ("exact", "minhash"):
        raise ValueError(f"dedup.method {settings.method!r}: expected exact or minhash")
    spark = engine.session
    store = HadoopStore(spark)
    index = open_index(settings, mh_params) if settings.index_path else None
    segment = None
    if index is not None:
        segment = segment_name([i["fingerprint"] for i in manifest.inputs] or [fingerprint(p) for p in inputs])
    stats = method_stats(settings.method, mh_params)
    groups: dict[str, int] = {}
    with SparkDatasetWriter(spark, output, manifest) as writer:
        for kind in kinds_in(store, [str(p) for p in inputs], TEXT_KINDS):
            kind_stats: dict = {}
            files = input_files(store, inputs, kind)
            raw = read_files(spark, files)
            columns = raw.columns
            rows = with_order(spark, raw, files)
            rows = rows.withColumn(NODE, F.col(FILE_ORDINAL) * F.lit(1 << 32) + F.col(ROW_INDEX)).drop(FILE_ORDINAL, ROW_INDEX)
            rows_in = rows.count()
            repeated = flagged = broadcast = removed = None
            if kind == DOCUMENTS and paragraphs_apply(spark, files, settings):
                repeated = repeated_lines(rows, settings)
            if repeated:
                flagged, broadcast, rows, removed = strip_repeated(rows, columns, repeated)
            else:
                rows = rows.withColumn(EMPTIED, F.lit(False))
            prior, segments, prior_rows = None, [], 0
            if index is not None:
                stored = [p for p in index.segments(kind) if p.stem != segment]
                for file in stored:
                    index.check_file(file)
                segments = [p.stem for p in stored]
                if stored:
                    prior = prior_fingerprints(spark, [store.qualify(str(p)) for p in stored], mh_params)
                    prior_rows = prior.count()
            prints = fingerprints(rows.where(~F.col(EMPTIED)), kind, columns, settings, mh_params, signatures=index is not None)
            decisions = decided = None
            try:
                decisions, found = cluster_decisions(prints, settings, mh_params, prior)
                reason = F.coalesce(F.col("_tcm_cluster_reason"), F.when(F.col(EMPTIED), F.lit(BOILERPLATE_ONLY)))
                decided = (
                    rows.join(decisions.select(NODE, F.col("reason").alias("_tcm_cluster_reason")), NODE, "left")
                    .withColumn("_tcm_reason", reason).orderBy(NODE).persist(StorageLevel.DISK_ONLY)
                )
                is_kept = F.col("_tcm_reason").isNull()
                rule = F.substring_index(F.col("_tcm_reason"), ":", 1)
                tally = decided.groupBy(F.spark_partition_id().alias("task"), is_kept.alias("kept"), rule.alias("rule")).count().collect()
                kept_by_task, rejected_by_task, reasons = Counter(), Counter(), Counter()
                for task, kept_flag, rule_name, n in tally:
                    (kept_by_task if kept_flag else rejected_by_task)[task] += n
                    if not kept_flag:
                        reasons[rule_name] += n
                kept = writer.write(kind, decided.filter(is_kept).select(*columns), None, kept_by_task)
                rejected = writer.reject(
                    kind, decided.filter(~is_kept).select(*columns, F.col("_tcm_reason").alias("reason")), None, rejected_by_task, reasons
                )
                if index is not None:
                    duplicates = decisions.where(F.col("reason").isNotNull()).select(NODE)
                    write_segment(index, kind, segment, prints.join(duplicates, NODE, "left_anti"), mh_params.num_perm if mh_params else None)
                audit = decisions.orderBy(NODE).select(
                    F.lit(kind).alias("kind"), "id", "cluster", "kept", "similarity", "match", "source", (F.col(NODE) < 0).alias("prior")
                )
                writer.write(CLUSTERS, audit)
                if repeated is not None:
                    table, counts = paragraph_audit(removed, repeated) if removed is not None else (None, Counter())
                    if table is not None and table.num_rows:
                        writer.write(REPEATED_PARAGRAPHS, spark.createDataFrame(table).coalesce(1))
                    kind_stats["repeated_paragraphs"] = {
                        "lines": len(counts),
                        "occurrences_removed": sum(counts.values()),
                        "documents_emptied": reasons.get(BOILERPLATE_ONLY, 0),
                    }
            finally:
                for frame in (decided, prints, prior, flagged):
                    if frame is not None:
                        frame.unpersist()
                if broadcast is not None:
                    broadcast.destroy()
            close_ledger(manifest, kind, rows_in, kept, rejected, progress)
            groups[kind] = found["clusters"]
            kind_stats.update(
                {
                    "exact_duplicates": reasons.get("exact_duplicate_of", 0),
                    "near_duplicates": reasons.get("near_duplicate_of", 0),
                    "clusters": found["clusters"],
                    "candidate_pairs_checked": found["candidate_pairs_checked"],
                    "candidate_pairs_similar": found["candidate_pairs_similar"],
                    "prior_rows": prior_rows,
                    "prior_segments": segments,
                }
            )
            stats[kind] = kind_stats
        manifest.stats["duplicate_groups"] = groups
        manifest.stats["dedup"] = stats
        if index is not None:
            manifest.stats["dedup"]["index"] = {"path": str(index.root), "segment": segment}
        return writer.commit()
