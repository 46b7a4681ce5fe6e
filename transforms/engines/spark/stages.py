"""The Spark engine's map stages, with the arguments and manifests of the local engine.

Map stages (clean, select, decontaminate): the local step runs unchanged in `mapInArrow`; its
kept and rejected results travel as one Arrow schema with a flag and are written as the two parts
of the dataset; a third result (clean's stats, decontamination hits) travels as one extra row per
batch, gathered on the driver in dataset order. The context goes to the executors once, as a
broadcast variable. Dedup is `dedup.py`.
"""
from __future__ import annotations

import functools
import pickle
from collections import Counter
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest, conform_to

from .datasets import (
    ROW_INDEX,
    HadoopStore,
    SparkDatasetWriter,
    join,
    kind_files,
    kinds_in,
    place_partitions,
    reason_rule,
    read_files,
)

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)
REJECTED_FLAG = "_tcm_rejected"
SOURCE_FILE = "_tcm_path"
EXTRA = "_tcm_extra"
Progress = Callable[[str, int], None]


class LedgerError(RuntimeError):
    """Rows in != rows kept + rows rejected: a step lost or invented rows."""


def close_ledger(manifest: StageManifest, kind: str, rows_in: int, kept: int, rejected: int, progress: Progress | None) -> None:
    """A kind's ledger once its rows are written: rows in (counted from the input) must equal
    kept + rejected, else LedgerError; rows in are added to the manifest and reported."""
    if kept + rejected != rows_in:
        raise LedgerError(f"{kind}: {rows_in} rows in, but {kept} kept + {rejected} rejected")
    manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + rows_in
    if progress:
        progress(kind, rows_in)


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
        kept, rejected = (_table(t) for t in step(sample.combine_chunks().to_batches()[0], context)[:2])
        if not any(pa.types.is_null(f.type) for f in (*kept.schema, *rejected.schema)):
            return kept.schema, rejected.schema
        if sample.num_rows < limit:
            break
    raise ValueError(f"step {getattr(step, '__name__', step)!r}: the type of a result column cannot be told from the first rows")


def flagged_schema(kept: pa.Schema, rejected: pa.Schema) -> pa.Schema:
    fields = [f.with_nullable(True) for f in kept]
    fields += [f.with_nullable(True) for f in rejected if f.name not in kept.names]
    return pa.schema([*fields, pa.field(REJECTED_FLAG, pa.bool_(), nullable=False), pa.field(EXTRA, pa.binary())])


def _flagged(rows: pa.Table, schema: pa.Schema, flag: bool) -> Iterator[pa.RecordBatch]:
    unknown = [n for n in rows.schema.names if n not in schema.names]
    if unknown:
        raise ValueError(f"the step returned column(s) {', '.join(unknown)} it did not return on the sample rows")
    body = pa.schema([f for f in schema if f.name not in (REJECTED_FLAG, EXTRA)])
    table = conform_to(rows, body).append_column(schema.field(REJECTED_FLAG), pa.array([flag] * rows.num_rows, pa.bool_()))
    yield from table.append_column(schema.field(EXTRA), pa.nulls(rows.num_rows, pa.binary())).to_batches()


def _extra_row(value, schema: pa.Schema) -> pa.RecordBatch:
    """A step's third result (stats, hits) as one row of its own, the data columns null."""
    columns = [pa.nulls(1, f.type) for f in schema if f.name not in (REJECTED_FLAG, EXTRA)]
    columns += [pa.array([False]), pa.array([pickle.dumps(value)], pa.binary())]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _run_step(batches, step, context, schema: pa.Schema):
    """What each executor runs: the step over its batches, kept and rejected in one schema, each
    row tagged with the file its partition reads (one file per partition). A step's third result,
    when it has one, travels as an extra row."""
    value = context.value
    for batch in batches:
        if batch.num_rows == 0:
            continue
        path, first_row = batch.column(SOURCE_FILE)[0].as_py(), batch.column(ROW_INDEX)[0].as_py()
        result = step(batch.drop_columns([SOURCE_FILE, ROW_INDEX]), value)
        outs = [out for rows, flag in ((result[0], False), (result[1], True)) for out in _flagged(_table(rows), schema, flag)]
        if len(result) > 2:
            outs.append(_extra_row(result[2], schema))
        for out in outs:
            n = out.num_rows
            yield out.append_column(SOURCE_FILE, pa.array([path] * n, pa.string())).append_column(
                ROW_INDEX, pa.array([first_row] * n, pa.int64())
            )


def run_map_stage(
    step, inputs, output, manifest: StageManifest, engine, kinds, context_of, progress: Progress | None = None, extras=None, finish=None
) -> StageManifest:
    """`SparkEngine.map_stage`: the step's third results go to `extras(kind, extra)` in dataset
    order; `finish(write_file)` writes its files through the Hadoop store before the commit."""
    with SparkDatasetWriter(engine.session, output, manifest) as writer:
        for kind, found in map_kinds(step, inputs, writer, manifest, engine, kinds, context_of, progress):
            if extras is not None:
                for extra in found:
                    extras(kind, extra)
        if finish is not None:
            store = HadoopStore(engine.session)

            def write_file(name: str, text: str, rows: int) -> None:
                store.write_text(join(writer.folder, name), text)
                writer.add_file(name, rows)

            finish(write_file)
        return writer.commit()


def map_kinds(step, inputs, writer, manifest: StageManifest, engine, kinds, context_of, progress: Progress | None = None):
    """Run `step` over each kind present and write its two parts; yields (kind, third results of
    the step, in dataset order) for steps that return (kept, rejected, extra)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = engine.session
    store = HadoopStore(spark)
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
            data = flagged.filter(F.col(EXTRA).isNull())
            # One pass for the ledger: rows per partition, outcome and rule, and where each
            # partition starts in the dataset (its file, its first row).
            tally = data.groupBy(
                F.spark_partition_id().alias("task"), SOURCE_FILE, REJECTED_FLAG,
                F.when(F.col(REJECTED_FLAG), reason_rule()).alias("rule"),
            ).agg(F.count("*"), F.min(ROW_INDEX)).collect()
            order = place_partitions(spark, {(t, f, r) for t, f, _, _, _, r in tally}, files)
            kept_by_task, rejected_by_task, reasons = Counter(), Counter(), Counter()
            for task, _, is_rejected, rule, n, _ in tally:
                (rejected_by_task if is_rejected else kept_by_task)[task] += n
                if is_rejected:
                    reasons[rule] += n
            kept = writer.write(kind, data.filter(~F.col(REJECTED_FLAG)).select(*kept_schema.names), order, kept_by_task)
            rejected = writer.reject(
                kind, data.filter(F.col(REJECTED_FLAG)).select(*rejected_schema.names), order, rejected_by_task, reasons
            )
            # The extras are small (a stats dict, the hits of a batch): gathered in dataset order.
            ordinal = {f: i for i, f in enumerate(files)}
            extra_rows = flagged.filter(F.col(EXTRA).isNotNull()).select(SOURCE_FILE, ROW_INDEX, EXTRA).collect()
            extras = [pickle.loads(e) for _, _, e in sorted(extra_rows, key=lambda r: (ordinal.get(r[0], len(ordinal)), r[0], r[1]))]
        finally:
            flagged.unpersist()
            broadcast.destroy()
        close_ledger(manifest, kind, rows_in, kept, rejected, progress)
        yield kind, extras
