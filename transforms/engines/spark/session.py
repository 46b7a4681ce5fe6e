"""A SparkSession built from the `[engine]` section: master plus pass-through Spark settings."""
from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
from pathlib import Path
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


# The packages an executor imports (the steps and the nouns they use), shipped with each session
# on a cluster and unpacked beside the executor as this folder, which leads its Python path.
CODE_PACKAGES = ("schemas", "transforms")
CODE_FOLDER = "tcm_code"


def code_archive(folder: str | os.PathLike | None = None) -> Path:
    """A .tar.gz of this process's own copy of `CODE_PACKAGES` (sources and resources, no
    bytecode), named by the hash of its content so that it is built once per version of the code."""
    root = Path(__file__).resolve().parents[3]
    files = sorted(
        path for package in CODE_PACKAGES for path in (root / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" and ".tmp-" not in path.name
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    target = Path(folder or tempfile.gettempdir()) / f"tcm-code-{digest.hexdigest()[:16]}.tar.gz"
    if not target.exists():
        partial = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        with tarfile.open(partial, "w:gz") as archive:
            for path in files:
                archive.add(path, arcname=str(path.relative_to(root)), recursive=False)
        os.replace(partial, target)
    return target


def ship_code(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings that make executors import this driver's code: the archive added to
    `spark.archives`, its folder put first on the executors' Python path (a user's own
    `spark.archives`, for instance a packed environment, and Python path are kept)."""
    shipped = dict(settings)
    archives = [a for a in (shipped.get("spark.archives") or "").split(",") if a]
    shipped["spark.archives"] = ",".join([*archives, f"{code_archive()}#{CODE_FOLDER}"])
    path = [p for p in (shipped.get("spark.executorEnv.PYTHONPATH") or "").split(os.pathsep) if p]
    shipped["spark.executorEnv.PYTHONPATH"] = os.pathsep.join([CODE_FOLDER, *path])
    return shipped


def build_session(master: str = "local[2]", settings: Mapping[str, str] | None = None, app_name: str = "tcm-corpus"):
    """Get or create the process's SparkSession with these settings.

    Python workers use this interpreter unless PYSPARK_PYTHON or `spark.pyspark.python` says
    otherwise, so executors on this machine see the same packages. On a cluster master (not
    `local`, not under spark-submit) the session ships the pipeline's own code to the executors
    (`ship_code`); the third-party environment must be there already (see README)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    settings = dict(settings or {})
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit the JVM came first and its --master rules; else the config's master.
        builder = builder.master(master)
        if not master.startswith("local"):
            settings = ship_code(settings)
    for key, value in {**DEFAULT_SETTINGS, **settings, **REQUIRED_SETTINGS}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    for key, value in REQUIRED_SETTINGS.items():
        spark.conf.set(key, value)  # an existing session (getOrCreate) gets them too
    spark.sparkContext.setLogLevel(os.environ.get("TCM_SPARK_LOG_LEVEL", "WARN"))
    return spark
