"""Priority sampling on Spark: the same training order and shards as `transforms.stages.run_sample`.

Each row's sort key comes from `transforms.sample` (hash of (seed, id, epoch), exponential key)
computed in `mapInArrow`; one global sort by (key, dataset position, epoch) is the training order
(ties broken as the local engine's stable argsort breaks them). Positions come from per-partition
row counts of the sorted frame (one number per partition reaches the driver), and shard K holds
positions [K * shard_rows, (K + 1) * shard_rows), as locally.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from functools import reduce

import numpy as np
import pyarrow as pa

from schemas import CONVERSATIONS, CORPUS, CORPUS_SCHEMA, DOCUMENTS, SCHEMA_VERSION, nullable_schema
from schemas.dataset import StageManifest

from ..sample import id_hashes, item_weights, priority_order, sort_keys, to_corpus_rows
from .datasets import FILE_ORDINAL, ROW_INDEX, HadoopStore, SparkDatasetWriter, join, kind_files, read_files, with_order
from .stages import spark_schema

SORT_KEY = "_tcm_key"
EPOCH = "_tcm_epoch"
# Corpus rows before positions are given: the corpus schema without `position`.
ITEM_SCHEMA = pa.schema([f for f in nullable_schema(CORPUS) if f.name != "position"])
KEYED_SCHEMA = pa.schema(
    [*ITEM_SCHEMA, pa.field(SORT_KEY, pa.float64()), pa.field(FILE_ORDINAL, pa.int64()), pa.field(ROW_INDEX, pa.int64()), pa.field(EPOCH, pa.int64())]
)


def priority_keys(items: pa.Table, params: dict) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """(expanded items, sort key, source row, epoch) of each expanded item, in the expansion of
    `sample.priority_order` and with its keys; checked against its order, so the two cannot drift."""
    expanded, order = priority_order(items, params)
    categories = items.column("category").to_pylist()
    is_sft = np.array([c == "sft" for c in categories], dtype=bool)
    repeats = np.where(is_sft, int(params.get("sft_epochs", 1)), 1)
    source_rows = np.repeat(np.arange(items.num_rows), repeats)
    epochs = np.concatenate([np.arange(r) for r in repeats]) if len(repeats) else np.zeros(0, dtype=np.int64)
    hashes = id_hashes(items.column("id").to_pylist())[source_rows]
    weights = item_weights(categories, items.column("source").to_pylist(), params)[source_rows]
    keys = sort_keys(hashes, epochs.astype(np.uint64), weights, is_sft[source_rows], params.get("mode", "priority"), int(params.get("seed", 0)))
    if len(keys) != expanded.num_rows or not np.array_equal(np.argsort(keys, kind="stable"), order):
        raise RuntimeError("sampling keys disagree with transforms.sample.priority_order")
    return expanded, keys, source_rows, epochs


def _keyed_items(batches, kind: str, params: dict):
    for batch in batches:
        table = pa.Table.from_batches([batch])
        items = to_corpus_rows(table.drop_columns([FILE_ORDINAL, ROW_INDEX]), kind)
        expanded, keys, source_rows, epochs = priority_keys(items, params)
        rows = pa.array(source_rows, pa.int64())
        out = expanded.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        out = out.append_column(SORT_KEY, pa.array(keys, pa.float64()))
        out = out.append_column(FILE_ORDINAL, table.column(FILE_ORDINAL).take(rows).cast(pa.int64()))
        out = out.append_column(ROW_INDEX, table.column(ROW_INDEX).take(rows).cast(pa.int64()))
        out = out.append_column(EPOCH, pa.array(epochs, pa.int64()))
        yield from out.to_batches()


def _bucket(position, edges: list[int]):
    """Which 1% of training positions a position falls in (`stages.sampling_curve`'s buckets)."""
    from pyspark.sql import functions as F

    inner = edges[1:-1]
    if not inner:
        return F.lit(0)
    return reduce(lambda a, b: a + b, [F.when(position >= int(e), 1).otherwise(0) for e in inner])


def sampling_curve(spark_frame, n: int, buckets: int = 100) -> list[dict[str, float]]:
    from pyspark.sql import functions as F

    if n == 0:
        return []
    edges = np.linspace(0, n, min(buckets, n) + 1).astype(int).tolist()
    counts = spark_frame.groupBy(_bucket(F.col("position"), edges).alias("b"), "category").count().collect()
    names = sorted({c for _, c, _ in counts})
    share: dict[int, dict[str, int]] = {}
    for b, category, count in counts:
        share.setdefault(b, {})[category] = count
    curve = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        row = share.get(i, {})
        curve.append({name: round(row.get(name, 0) / max(1, hi - lo), 4) for name in names})
    return curve


def run_sample(inputs, output, params, manifest: StageManifest, config_hash: str, engine, progress=None) -> StageManifest:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = engine.session
    store = HadoopStore(spark)
    # Files in the local engine's order: input by input, conversations before documents.
    files = {CONVERSATIONS: [], DOCUMENTS: []}
    ordinal_of: dict[str, int] = {}
    for path in inputs:
        for kind in (CONVERSATIONS, DOCUMENTS):
            for file in kind_files(store, str(path), kind):
                ordinal_of[file] = len(ordinal_of)
                files[kind].append(file)
    keyed = []
    for kind, kind_paths in files.items():
        if not kind_paths:
            continue
        raw = read_files(spark, kind_paths)
        manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + raw.count()
        # Ordinals run across both kinds, so the ordinal of a file is its place in the local order.
        placed = _with_global_order(spark, raw, kind_paths, ordinal_of)
        keyed.append(placed.mapInArrow(functools.partial(_keyed_items, kind=kind, params=params), spark_schema(KEYED_SCHEMA)))
    if not keyed:
        raise ValueError("sample: the inputs hold no documents or conversations")
    items = reduce(lambda a, b: a.unionByName(b), keyed)
    ordered = items.orderBy(SORT_KEY, FILE_ORDINAL, ROW_INDEX, EPOCH).persist(StorageLevel.DISK_ONLY)
    shard_rows = int(params.get("shard_rows", 100_000))
    with SparkDatasetWriter(spark, output, manifest) as writer:
        try:
            sizes = dict(ordered.groupBy(F.spark_partition_id().alias("p")).count().collect())
            starts, total = [], 0
            for p in range(max(sizes, default=-1) + 1):
                starts.append(total)
                total += sizes.get(p, 0)
            start_of = F.element_at(F.array(*[F.lit(s) for s in starts or [0]]), F.spark_partition_id() + 1)
            # monotonically_increasing_id's low 33 bits count rows within a partition.
            positioned = ordered.withColumn("position", start_of + F.expr("monotonically_increasing_id() & 8589934591"))
            shards = max(1, math.ceil(total / shard_rows))
            staging = join(writer.folder, "_shards.spark")
            (
                positioned.withColumn("_tcm_shard", F.floor(F.col("position") / shard_rows).cast("int"))
                .repartition(shards, "_tcm_shard")
                .sortWithinPartitions("_tcm_shard", "position")
                .select(*CORPUS_SCHEMA.names, "_tcm_shard")
                .write.partitionBy("_tcm_shard")
                .parquet(staging)
            )
            shard_list = _place_shards(spark, store, writer, staging)
            corpus = spark.read.parquet(*[join(writer.folder, s["path"]) for s in shard_list]) if shard_list else None
            counts = {
                name: dict(corpus.groupBy(name).count().collect()) if corpus is not None else {}
                for name in ("category", "source", "format")
            }
            curve = sampling_curve(corpus, total) if corpus is not None else []
        finally:
            ordered.unpersist()
        corpus_manifest = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": config_hash,
            "rows": total,
            "sampling": {k: params.get(k) for k in ("mode", "weights", "source_weights", "sft_epochs", "seed")},
            "counts": counts,
            "sampling_curve": curve,
            "shards": shard_list,
        }
        store.write_text(join(writer.folder, "manifest.json"), json.dumps(corpus_manifest, ensure_ascii=False, indent=2))
        manifest.rows_out[CORPUS] = total
        manifest.stats["shards"] = len(shard_list)
        if progress:
            progress(CORPUS, total)
        return writer.commit()


def _with_global_order(spark, frame, kind_paths: list[str], ordinal_of: dict[str, int]):
    """with_order, with ordinals that count the files of both kinds in the local order."""
    from pyspark.sql import functions as F

    placed = with_order(spark, frame, kind_paths)
    mapping = spark.createDataFrame([(i, ordinal_of[p]) for i, p in enumerate(kind_paths)], "_tcm_local long, _tcm_global long")
    return (
        placed.join(F.broadcast(mapping), placed[FILE_ORDINAL] == mapping["_tcm_local"], "left")
        .drop(FILE_ORDINAL, "_tcm_local")
        .withColumnRenamed("_tcm_global", FILE_ORDINAL)
    )


def _place_shards(spark, store: HadoopStore, writer: SparkDatasetWriter, staging: str) -> list[dict]:
    """Move `_tcm_shard=K/part-*.parquet` to `part-K.parquet`; sha256 of each shard computed on
    the executors (one digest per shard reaches the driver)."""
    from pyspark.sql import functions as F

    moved = []
    for name, full, _, is_dir in store.list(staging):
        if not (is_dir and name.startswith("_tcm_shard=")):
            continue
        number = int(name.split("=", 1)[1])
        parts = [p for n, p, _, d in store.list(full) if n.endswith(".parquet") and not d]
        if len(parts) != 1:
            raise RuntimeError(f"shard {number} was written as {len(parts)} files, expected 1")
        target = f"part-{number:05d}.parquet"
        store.rename(parts[0], join(writer.folder, target))
        moved.append((number, target))
    store.delete(staging)
    moved.sort()
    paths = [join(writer.folder, t) for _, t in moved]
    rows = dict(spark.read.parquet(*paths).groupBy(F.col("_metadata.file_name")).count().collect()) if paths else {}
    digests = dict(
        spark.sparkContext.binaryFiles(",".join(paths)).map(lambda kv: (kv[0].rsplit("/", 1)[-1], hashlib.sha256(kv[1]).hexdigest())).collect()
    ) if paths else {}
    shards = []
    for _, target in moved:
        n = int(rows.get(target, 0))
        shards.append({"path": target, "rows": n, "sha256": digests[target], "bytes": store.size(join(writer.folder, target))})
        writer.add_file(target, n)
    return shards
