"""Datasets on any Hadoop-compatible path (local, HDFS, S3A), read and written by Spark.

The layout is the one `schemas.dataset` defines (one folder of `part-NNNNN.parquet` per kind,
`rejected/<kind>/` with a `reason` column, `_manifest.json`), so a dataset written by one engine
is read by the other. Files are listed, renamed and committed through the Hadoop FileSystem API of
the session: a stage fills `OUT.tmp-<pid>` and renames it into place, manifest written last.

Row order: a dataset's order is its part files in name order, rows in file order (what the local
engine streams, and what dedup's `keep = "first"` means). Each Spark scan partition reads one
contiguous run of row groups of one file (see session.REQUIRED_SETTINGS), but partitions come
in size order; a map stage therefore names each output part after the (file, first row) its
partition read, which keeps the order without a shuffle. Stages that shuffle sort by
(file ordinal, row index) before writing.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from typing import Iterable, Sequence

import pyarrow as pa

from schemas import CORPUS, KINDS, kind_of
from schemas.dataset import MANIFEST, REJECTED, DatasetError, StageManifest, hash_config

# Hidden columns that carry a row's place in its dataset while Spark moves it around.
FILE_ORDINAL = "_tcm_file"
ROW_INDEX = "_tcm_row"
ORDER_COLUMNS = (FILE_ORDINAL, ROW_INDEX)

_SPARK_PART = re.compile(r"^part-(\d+)-.*\.parquet$")


class HadoopStore:
    """Files through the session's Hadoop FileSystem: the same calls for file:, hdfs:, s3a:."""

    def __init__(self, spark):
        self.spark = spark
        self.jvm = spark.sparkContext._jvm
        self.conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self.jvm.org.apache.hadoop.fs.Path(str(path))

    def _fs(self, path: str):
        return self._path(path).getFileSystem(self.conf)

    def qualify(self, path: str) -> str:
        p = self._path(path)
        return p.getFileSystem(self.conf).makeQualified(p).toString()

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def is_dir(self, path: str) -> bool:
        p = self._path(path)
        fs = p.getFileSystem(self.conf)
        return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())

    def delete(self, path: str) -> None:
        p = self._path(path)
        fs = p.getFileSystem(self.conf)
        if fs.exists(p):
            fs.delete(p, True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def rename(self, source: str, target: str) -> None:
        fs = self._fs(source)
        fs.mkdirs(self._path(target).getParent())
        if not fs.rename(self._path(source), self._path(target)):
            raise OSError(f"could not rename {source} to {target}")

    def list(self, path: str) -> list[tuple[str, str, int, bool]]:
        """(name, qualified path, bytes, is folder) of each entry, sorted by name."""
        p = self._path(path)
        fs = p.getFileSystem(self.conf)
        if not fs.exists(p):
            return []
        entries = [(s.getPath().getName(), s.getPath().toString(), int(s.getLen()), bool(s.isDirectory())) for s in fs.listStatus(p)]
        return sorted(entries)

    def size(self, path: str) -> int:
        return int(self._fs(path).getFileStatus(self._path(path)).getLen())

    def write_text(self, path: str, text: str) -> None:
        stream = self._fs(path).create(self._path(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        stream = self._fs(path).open(self._path(path))
        try:
            return self.jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()


def join(folder: str, *names: str) -> str:
    return "/".join([str(folder).rstrip("/"), *names])


# -- reading ----------------------------------------------------------------------------------


def kind_files(store: HadoopStore, path: str, kind: str) -> list[str]:
    """The Parquet files of `kind` in a dataset folder, as `schemas.dataset.kind_files` finds them."""
    sub = join(path, kind)
    if store.is_dir(sub):
        return [full for name, full, _, is_dir in store.list(sub) if name.endswith(".parquet") and not is_dir]
    loose = [full for name, full, _, is_dir in store.list(path) if name.endswith(".parquet") and not is_dir]
    if loose:
        names = store.spark.read.parquet(loose[0]).schema.names
        if kind_of(pa.schema([(n, pa.string()) for n in names])) == kind:
            return loose
    return []


def kinds_in(store: HadoopStore, inputs: Iterable[str], kinds: Sequence[str] = (*KINDS, CORPUS)) -> list[str]:
    found = {kind for path in inputs for kind in kinds if kind_files(store, str(path), kind)}
    return [kind for kind in kinds if kind in found]


def check_input(store: HadoopStore, path: str) -> str:
    if not store.exists(path):
        raise DatasetError(f"input folder {path} does not exist")
    if not kinds_in(store, [path]):
        raise DatasetError(f"input folder {path} holds no dataset (no Parquet files of a known kind)")
    return path


# Split size bounds: large enough that a task's fixed cost is small, small enough to spread work.
MIN_SPLIT_BYTES = 4 << 20
MAX_SPLIT_BYTES = 128 << 20


def plan_splits(spark, store: "HadoopStore", files: Sequence[str]) -> int:
    """Set the scan's split size so that the input spreads over every core (files are cut at
    row-group boundaries, never packed together): Spark's own bytes-per-core rule, which its
    packing of small files would otherwise provide."""
    total = sum(store.size(f) for f in files)
    cores = max(1, spark.sparkContext.defaultParallelism)
    split = int(min(MAX_SPLIT_BYTES, max(MIN_SPLIT_BYTES, total // cores + 1)))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(split))
    return split


def read_files(spark, files: Sequence[str]):
    """One DataFrame over these Parquet files; columns of all files merged."""
    if not files:
        raise DatasetError("no Parquet files to read")
    plan_splits(spark, HadoopStore(spark), files)
    return spark.read.option("mergeSchema", "true").parquet(*files)


def _ordinals(spark, files: Sequence[str], first: int = 0):
    """A small (path, ordinal) table: the path as Spark's `_metadata.file_path` may spell it."""
    jvm = spark.sparkContext._jvm
    rows = []
    for number, file in enumerate(files, start=first):
        for spelling in {file, jvm.org.apache.hadoop.fs.Path(file).toUri().toString()}:
            rows.append((spelling, number))
    return spark.createDataFrame(rows, f"_tcm_path string, {FILE_ORDINAL} long")


def with_order(spark, frame, files: Sequence[str], first: int = 0):
    """Add each row's place in the dataset: (file ordinal, row index within the file)."""
    from pyspark.sql import functions as F

    located = frame.select("*", F.col("_metadata.file_path").alias("_tcm_path"), F.col("_metadata.row_index").alias(ROW_INDEX))
    placed = located.join(F.broadcast(_ordinals(spark, files, first)), "_tcm_path", "left").drop("_tcm_path")
    return placed


def place_partitions(spark, starts: Iterable[tuple[int, str, int]], files: Sequence[str]) -> dict[int, tuple[int, int]]:
    """Scan partition number -> (ordinal of the file it read, first row index it read), from
    (partition, file path, row index) triples. A partition that read two files would break the
    dataset's order: refused."""
    jvm = spark.sparkContext._jvm
    ordinal = {}
    for number, file in enumerate(files):
        ordinal[file] = number
        ordinal.setdefault(jvm.org.apache.hadoop.fs.Path(file).toUri().toString(), number)
    placed: dict[int, tuple[int, int]] = {}
    for p, f, row in starts:
        if f not in ordinal:
            raise DatasetError(f"Spark read a file the stage did not list: {f}")
        previous = placed.setdefault(p, (ordinal[f], row))
        if previous[0] != ordinal[f]:
            raise DatasetError(
                "one Spark partition read two input files, so the dataset's row order cannot be kept; "
                "do not override spark.sql.files.openCostInBytes"
            )
        placed[p] = min(previous, (ordinal[f], row))
    return placed


# -- writing ----------------------------------------------------------------------------------


class SparkDatasetWriter:
    """The Spark counterpart of `schemas.dataset.DatasetWriter`: same layout, same manifest."""

    def __init__(self, spark, output: str | os.PathLike, manifest: StageManifest):
        self.spark = spark
        self.store = HadoopStore(spark)
        self.output = str(output).rstrip("/")
        self.tmp = f"{self.output}.tmp-{os.getpid()}"
        self.store.delete(self.tmp)
        self.store.mkdirs(self.tmp)
        self.manifest = manifest
        self.manifest.started_at = self.manifest.started_at or _now()
        self.kept: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.reasons: Counter[str] = Counter()
        self._files: list[dict] = []
        self._t0 = time.perf_counter()

    @property
    def folder(self) -> str:
        return self.tmp

    def write(self, kind: str, frame, part_order: dict[int, tuple] | None = None, rows_by_task: dict[int, int] | None = None) -> int:
        rows = self._write_parts(frame, join(self.tmp, kind), part_order, rows_by_task)
        if rows:
            self.kept[kind] = self.kept.get(kind, 0) + rows
        return rows

    def reject(
        self,
        kind: str,
        frame,
        part_order: dict[int, tuple] | None = None,
        rows_by_task: dict[int, int] | None = None,
        reasons: Counter | None = None,
    ) -> int:
        """Rows removed by the stage; each must carry a `reason`. `reasons` (rule -> rows), when the
        stage counted them already, saves a pass over the written rows."""
        if "reason" not in frame.columns:
            raise ValueError("rejected rows need a reason column")
        folder = join(self.tmp, REJECTED, kind)
        rows = self._write_parts(frame, folder, part_order, rows_by_task)
        if rows:
            self.rejected[kind] = self.rejected.get(kind, 0) + rows
            if reasons is None:
                reasons = Counter(dict(self.spark.read.parquet(folder).groupBy(reason_rule().alias("rule")).count().collect()))
            self.reasons.update(reasons)
        return rows

    def _write_parts(self, frame, folder: str, part_order: dict[int, tuple] | None, rows_by_task: dict[int, int] | None) -> int:
        """Write `frame` with Spark, then name its files `part-NNNNN.parquet` in dataset order:
        by `part_order` (write task -> place), else by task number (a sorted frame). Rows per
        file come from `rows_by_task` when the stage counted them, else from one pass."""
        from pyspark.sql import functions as F

        staging = f"{folder}.spark"
        frame.write.mode("overwrite").parquet(staging)
        names = [(name, full, size) for name, full, size, is_dir in self.store.list(staging) if _SPARK_PART.match(name)]
        if rows_by_task is None and names:
            by_name = dict(self.spark.read.parquet(staging).groupBy(F.col("_metadata.file_name")).count().collect())
            rows_of = lambda name, task: int(by_name.get(name, 0))  # noqa: E731
        else:
            rows_of = lambda name, task: int((rows_by_task or {}).get(task, 0))  # noqa: E731
        placed = []
        for name, full, size in names:
            task = int(_SPARK_PART.match(name).group(1))
            if part_order is not None and task not in part_order:
                placed.append(((-1,), task, name, full, size))  # a task that read no rows: its file is empty
                continue
            placed.append((part_order[task] if part_order is not None else (task,), task, name, full, size))
        total, number = 0, len([n for n, *_ in self.store.list(folder) if n.endswith(".parquet")])
        for _, task, name, full, size in sorted(placed):
            rows = rows_of(name, task)
            if rows == 0:
                continue  # an empty partition's file: the local layout has none
            target = join(folder, f"part-{number:05d}.parquet")
            self.store.rename(full, target)
            self._files.append({"path": target[len(self.tmp) + 1 :], "rows": rows, "bytes": size})
            total += rows
            number += 1
        self.store.delete(staging)
        return total

    def add_file(self, name: str, rows: int) -> None:
        """Record a file the stage wrote itself into `folder` (shards, reports)."""
        self._files.append({"path": name, "rows": rows, "bytes": self.store.size(join(self.tmp, name))})

    def rows_written(self, kind: str) -> int:
        return self.kept.get(kind, 0)

    def commit(self) -> StageManifest:
        m = self.manifest
        m.settle(self.kept, self.rejected, self.reasons)
        m.files = sorted(self._files, key=lambda f: f["path"])
        m.timings.setdefault("seconds", round(time.perf_counter() - self._t0, 3))
        m.finished_at = _now()
        m.fingerprint = hash_config({"key": m.key(), "files": m.files})
        self.store.write_text(join(self.tmp, MANIFEST), m.to_json())
        self._replace()
        return m

    def _replace(self) -> None:
        old = f"{self.output}.old-{os.getpid()}"
        if self.store.exists(self.output):
            self.store.rename(self.output, old)
        self.store.rename(self.tmp, self.output)
        self.store.delete(old)

    def abort(self) -> None:
        self.store.delete(self.tmp)

    def __enter__(self) -> "SparkDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def reason_rule():
    """The rule a `reason` names (text before the first colon), as the local writer counts it."""
    from pyspark.sql import functions as F

    reason = F.col("reason")
    return F.when(reason.isNull() | (reason == ""), F.lit("unknown")).otherwise(F.substring_index(reason, ":", 1))


def read_manifest(store: HadoopStore, path: str) -> StageManifest | None:
    target = join(path, MANIFEST)
    if not store.exists(target):
        return None
    return StageManifest.from_dict(json.loads(store.read_text(target)))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
