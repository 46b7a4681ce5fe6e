"""The Spark engine: the same stages on a PySpark cluster.

Map stages run their record-batch step, unchanged, in `DataFrame.mapInArrow`; global steps
(exact dedup, priority sampling, MinHash clustering) have a Spark implementation beside the pure
core the local engine uses. Datasets are Parquet on any Hadoop-compatible path (local, HDFS, S3A)
and are committed like the local writer's: a temporary folder renamed into place, `_manifest.json`
written last. Importing this package imports pyspark; `transforms.stages` imports it only when a
stage runs on Spark.
"""
from .engine import SparkEngine  # noqa: F401
from .session import build_session  # noqa: F401
