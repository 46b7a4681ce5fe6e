"""A SparkSession built from the `[engine]` section: master plus pass-through Spark settings."""
from __future__ import annotations

import os
import sys
from typing import Mapping

# Settings the engine relies on; a user's `[engine.spark]` may override the others, not this.
# A scan partition never packs two files (or two pieces of one): each partition is one
# contiguous run of row groups of one file, which is how map stages keep the dataset's row
# order (see datasets.py). Split sizes are chosen per stage by `datasets.plan_splits`.
REQUIRED_SETTINGS = {
    "spark.sql.files.openCostInBytes": str(1 << 40),
}

DEFAULT_SETTINGS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.compression.codec": "zstd",
    # Spark's `_SUCCESS` marker is not part of the dataset layout; the manifest is.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    # Local paths without Hadoop's `.crc` side files, which are not part of the layout either.
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
}


def build_session(master: str = "local[2]", settings: Mapping[str, str] | None = None, app_name: str = "tcm-corpus"):
    """Get or create the process's SparkSession with these settings.

    Python workers use this interpreter unless PYSPARK_PYTHON says otherwise, so executors on this
    machine see the same packages; on a cluster, ship the environment (see README)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit the JVM came first and its --master rules; else the config's master.
        builder = builder.master(master)
    for key, value in {**DEFAULT_SETTINGS, **(settings or {}), **REQUIRED_SETTINGS}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    for key, value in REQUIRED_SETTINGS.items():
        spark.conf.set(key, value)  # an existing session (getOrCreate) gets them too
    spark.sparkContext.setLogLevel(os.environ.get("TCM_SPARK_LOG_LEVEL", "WARN"))
    return spark
