"""Stages on Spark, with the arguments and manifests of `transforms.stages`.

Map stages: any `step(batch, context) -> (kept, rejected)` runs unchanged in `mapInArrow`; its two
results travel as one Arrow schema (the kept columns, the rejected-only columns such as `reason`,
and a flag), and are written as the two parts of the dataset. The context goes to the executors
once, as a broadcast variable.

Exact dedup: keys from `dedup.dedup_keys` in `mapInArrow`, the survivor of each key chosen by a
window ordered by the keep policy (`keep.keep_order`), dataset position breaking ties, as
`dedup.choose_survivors` does. MinHash near-duplicates: `near_dedup`.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest, conform_to

from .. import dedup
from .datasets import (
    FILE_ORDINAL,
    ORDER_COLUMNS,
    ROW_INDEX,
    HadoopStore,
    SparkDatasetWriter,
    kind_files,
    kinds_in,
    place_partitions,
    reason_rule,
    read_files,
    with_order,
)

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)
REJECTED_FLAG = "_tcm_rejected"
SOURCE_FILE = "_tcm_path"
Progress = Callable[[str, int], None]


class LedgerError(RuntimeError):
    """Rows in != rows kept + rows rejected: a step lost or invented rows."""


def spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def input_files(store: HadoopStore, inputs: Iterable, kind: str) -> list[str]:
    """Every Parquet file of `kind` across the inputs, in dataset order."""
    return [file for path in inputs for file in kind_files(store, str(path), kind)]


# -- map stages -------------------------------------------------------------------------------


def _table(rows: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows


def step_schemas(step, rows, context) -> tuple[pa.Schema, pa.Schema]:
    """The kept and rejected schemas a step produces, found by running it on the driver over the
    first rows of the input (more of them when a column's type stays unknown, all nulls)."""
    for limit in (64, 4096):
        sample = rows.limit(limit).toArrow()
        if sample.num_rows == 0:
            break
        kept, rejected = (_table(t) for t in step(sample.combine_chunks().to_batches()[0], context))
        if not any(pa.types.is_null(f.type) for f in (*kept.schema, *rejected.schema)):
            return kept.schema, rejected.schema
        if sample.num_rows < limit:
            break
    raise ValueError(f"step {getattr(step, '__name__', step)!r}: the type of a result column cannot be told from the first rows")


def flagged_schema(kept: pa.Schema, rejected: pa.Schema) -> pa.Schema:
    fields = [f.with_nullable(True) for f in kept]
    fields += [f.with_nullable(True) for f in rejected if f.name not in kept.names]
    return pa.schema([*fields, pa.field(REJECTED_FLAG, pa.bool_(), nullable=False)])


def _flagged(rows: pa.Table, schema: pa.Schema, flag: bool) -> Iterator[pa.RecordBatch]:
    unknown = [n for n in rows.schema.names if n not in schema.names]
    if unknown:
        raise ValueError(f"the step returned column(s) {', '.join(unknown)} it did not return on the sample rows")
    body = pa.schema([f for f in schema if f.name != REJECTED_FLAG])
    table = conform_to(rows, body).append_column(schema.field(REJECTED_FLAG), pa.array([flag] * rows.num_rows, pa.bool_()))
    yield from table.to_batches()


def _run_step(batches, step, context, schema: pa.Schema):
    """What each executor runs: the step over its batches, kept and rejected in one schema, each
    row tagged with the file its partition reads (one file per partition)."""
    value = context.value
    for batch in batches:
        if batch.num_rows == 0:
            continue
        path, first_row = batch.column(SOURCE_FILE)[0].as_py(), batch.column(ROW_INDEX)[0].as_py()
        kept, rejected = step(batch.drop_columns([SOURCE_FILE, ROW_INDEX]), value)
        for rows, flag in ((kept, False), (rejected, True)):
            for out in _flagged(_table(rows), schema, flag):
                n = out.num_rows
                yield out.append_column(SOURCE_FILE, pa.array([path] * n, pa.string())).append_column(
                    ROW_INDEX, pa.array([first_row] * n, pa.int64())
                )


def run_map_stage(step, inputs, output, manifest: StageManifest, engine, kinds, context_of, progress: Progress | None = None) -> StageManifest:
    """`transforms.stages.run_map_stage` on Spark: same step, same context, same ledger."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = engine.session
    store = HadoopStore(spark)
    with SparkDatasetWriter(spark, output, manifest) as writer:
        for kind in kinds_in(store, [str(p) for p in inputs], kinds):
            files = input_files(store, inputs, kind)
            rows = read_files(spark, files)
            rows_in = rows.count()
            if rows_in == 0:
                continue
            context = context_of(kind)
            kept_schema, rejected_schema = step_schemas(step, rows, context)
            schema = flagged_schema(kept_schema, rejected_schema)
            broadcast = spark.sparkContext.broadcast(context)
            run = functools.partial(_run_step, step=step, context=broadcast, schema=schema)
            located = rows.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE), F.col("_metadata.row_index").alias(ROW_INDEX))
            out_schema = spark_schema(schema.append(pa.field(SOURCE_FILE, pa.string())).append(pa.field(ROW_INDEX, pa.int64())))
            flagged = located.mapInArrow(run, out_schema).persist(StorageLevel.DISK_ONLY)
            try:
                # One pass for the ledger: rows per partition, outcome and rule, and where each
                # partition starts in the dataset (its file, its first row).
                tally = flagged.groupBy(
                    F.spark_partition_id().alias("task"), SOURCE_FILE, REJECTED_FLAG,
                    F.when(F.col(REJECTED_FLAG), reason_rule()).alias("rule"),
                ).agg(F.count("*"), F.min(ROW_INDEX)).collect()
                order = place_partitions(spark, {(t, f, r) for t, f, _, _, _, r in tally}, files)
                kept_by_task, rejected_by_task, reasons = Counter(), Counter(), Counter()
                for task, _, is_rejected, rule, n, _ in tally:
                    (rejected_by_task if is_rejected else kept_by_task)[task] += n
                    if is_rejected:
                        reasons[rule] += n
                kept = writer.write(kind, flagged.filter(~F.col(REJECTED_FLAG)).select(*kept_schema.names), order, kept_by_task)
                rejected = writer.reject(
                    kind, flagged.filter(F.col(REJECTED_FLAG)).select(*rejected_schema.names), order, rejected_by_task, reasons
                )
            finally:
                flagged.unpersist()
                broadcast.destroy()
            if kept + rejected != rows_in:
                raise LedgerError(f"{kind}: {rows_in} rows in, but {kept} kept + {rejected} rejected")
            manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + rows_in
            if progress:
                progress(kind, rows_in)
        return writer.commit()


# -- exact dedup ------------------------------------------------------------------------------


def _with_dedup_keys(batches, kind: str, columns: list[str]):
    """Each row with its dedup key and length, from the very function the local engine uses."""
    for batch in batches:
        table = _table(batch)
        keys = dedup.dedup_keys(table.select(columns), kind)
        key = keys.column("key").cast(pa.binary())  # Spark has no fixed-size binary
        yield from table.append_column("_tcm_key", key).append_column("_tcm_length", keys.column("length").cast(pa.int64())).to_batches()


def run_dedup(inputs, output, params, manifest: StageManifest, engine, progress: Progress | None = None) -> StageManifest:
    """Exact dedup, or exact plus MinHash near-duplicates (`method = "minhash"`), on Spark."""
    method = params.get("method", "exact")
    if method not in ("exact", "minhash"):
        raise ValueError(f"dedup.method {method!r} has no Spark implementation")
    if (params.get("paragraphs") or {}).get("enabled"):
        raise ValueError("dedup.paragraphs has no Spark implementation; set dedup.paragraphs.enabled = false to dedup on Spark")
    if params.get("index_path"):
        raise ValueError("dedup.index_path has no Spark implementation; leave it unset to dedup on Spark")
    spark = engine.session
    store = HadoopStore(spark)
    with SparkDatasetWriter(spark, output, manifest) as writer:
        groups, near = {}, {}
        for kind in kinds_in(store, [str(p) for p in inputs], TEXT_KINDS):
            files = input_files(store, inputs, kind)
            if method == "minhash":
                from .near_dedup import run_minhash_dedup

                rows_in, kept, rejected, stats = run_minhash_dedup(spark, writer, kind, files, params)
                groups[kind] = stats["clusters"]
                near[kind] = stats
            else:
                rows_in, kept, rejected, groups[kind] = _exact_dedup(spark, writer, kind, files, params)
            if kept + rejected != rows_in:
                raise LedgerError(f"{kind}: {rows_in} rows in, but {kept} kept + {rejected} rejected")
            manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + rows_in
            if progress:
                progress(kind, rows_in)
        manifest.stats["duplicate_groups"] = groups
        if near:
            manifest.stats["near_duplicates"] = near
        return writer.commit()


def _exact_dedup(spark, writer: SparkDatasetWriter, kind: str, files: list[str], params: dict):
    """One window over the exact key: the first row by the keep policy survives. Returns
    (rows in, kept, rejected, duplicate groups)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType, LongType, StructField, StructType

    from .keep import NODE, keep_order

    keep = params.get("keep", "first")
    keep = [keep] if isinstance(keep, str) else list(keep)
    quality_column = params.get("quality_column", "quality_score")
    raw = read_files(spark, files)
    columns = raw.columns
    rows = with_order(spark, raw, files)
    rows_in = rows.count()
    schema = StructType([*rows.schema.fields, StructField("_tcm_key", BinaryType()), StructField("_tcm_length", LongType())])
    keyed = rows.mapInArrow(functools.partial(_with_dedup_keys, kind=kind, columns=columns), schema).select(
        "*",
        (F.col(FILE_ORDINAL) * F.lit(1 << 32) + F.col(ROW_INDEX)).alias(NODE),
        (F.col(quality_column) if quality_column in columns else F.lit(None)).cast("double").alias("_tcm_quality"),
        F.col("source").alias("_tcm_source"),
    )
    window = Window.partitionBy("_tcm_key").orderBy(*keep_order(keep, params.get("source_priority", [])))
    decided = (
        keyed.withColumn("_tcm_rank", F.row_number().over(window))
        .withColumn("_tcm_survivor", F.first("id").over(window))
        .withColumn("_tcm_copies", F.count("*").over(Window.partitionBy("_tcm_key")))
        .orderBy(*ORDER_COLUMNS)  # back to dataset order, so `first` means the same downstream
        .persist(StorageLevel.DISK_ONLY)
    )
    try:
        is_kept = F.col("_tcm_rank") == 1
        tally = decided.groupBy(F.spark_partition_id().alias("task"), is_kept.alias("kept")).agg(
            F.count("*").alias("rows"), F.sum(F.when(is_kept & (F.col("_tcm_copies") > 1), 1).otherwise(0)).alias("groups")
        ).collect()
        kept_by_task = {t: n for t, k, n, _ in tally if k}
        rejected_by_task = {t: n for t, k, n, _ in tally if not k}
        kept = writer.write(kind, decided.filter(is_kept).select(*columns), None, kept_by_task)
        reason = F.concat(F.lit("exact_duplicate_of:"), F.col("_tcm_survivor")).alias("reason")
        rejected = writer.reject(
            kind, decided.filter(~is_kept).select(*columns, reason), None, rejected_by_task,
            Counter({"exact_duplicate_of": sum(rejected_by_task.values())}),
        )
    finally:
        decided.unpersist()
    return rows_in, kept, rejected, int(sum(g for _, _, _, g in tally))
