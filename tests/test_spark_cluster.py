"""build-corpus's Spark stages on a real Spark standalone cluster: a master and two workers on
127.0.0.1, each a process of its own started with pyspark's launcher (`spark-class`), executors
started by the workers' JVMs with nothing of the test's environment but what the session ships
(the README's way: the pipeline's code as an archive the engine adds itself, the third-party
environment by the interpreter's path, the same on every node here).

The driver runs in a subprocess (this pytest process may already hold a local[2] session, and a
process has one SparkContext): clean, select, dedup (repeated paragraphs on), decontaminate and
sample, the build's order and config sections, on `spark://127.0.0.1:PORT`. While dedup runs, the
driver kills one worker with its executor (SIGKILL to its process group); Spark reruns the lost
tasks on the other worker, and every stage's output must equal the local engine's.

Marked `cluster` (and `slow`): about two minutes on a quiet 2-core machine; `.ci/run` (plain
`pytest`) runs it. The finalizer kills every process group it started, executors included.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SPARK_TEST_JAVA_OPTIONS

REPO = Path(__file__).resolve().parent.parent
BOOKS = ["118-增订医方歌诀.txt", "121-医方歌括.txt", "193-盘珠集胎产症治.txt"]
# The Spark stages of build-corpus, in its order (crawl, ingest, convert, validate and export run
# in the driver on the local engine whatever the engine).
STAGES = ("clean", "select", "dedup", "decontaminate", "sample")
CONFIG = """
[[sources]]
name = "classics"
kind = "files"
category = "books"
path = "{books}"
format = "book"

[[sources]]
name = "formula-site"
kind = "files"
category = "web"
path = "{site}"
format = "book"

[[sources]]
name = "dialogues"
kind = "files"
category = "sft"
path = "{dialogues}"
format = "instructions"

[select]
min_chars = 20

[decontaminate]
benchmarks = ["{benchmark}"]

[sample]
shard_rows = 60
row_group_rows = 20
"""


def run_stages(config_path: Path, ingested: Path, out: Path, engine) -> dict:
    """The Spark stages of build-corpus over an ingested dataset, each with its own config section
    as the stage flows pass it; returns each stage's manifest as a dict."""
    from flows.config import load_config
    from schemas.dataset import StageManifest, hash_config
    from transforms import stages
    from transforms.ingest.importers.benchmarks import load_benchmark

    cfg = load_config(str(config_path))
    results, previous = {}, ingested
    for stage in STAGES:
        params = cfg.section(stage)
        manifest = StageManifest(stage=stage, config_hash=hash_config(params))
        output = out / stage
        if stage == "decontaminate":
            items = [item for path in cfg.decontaminate.benchmarks for item in load_benchmark(path)]
            result = stages.run_decontaminate([previous], output, params, manifest, engine, items)
        elif stage == "sample":
            result = stages.run_sample([previous], output, params, manifest, manifest.config_hash, engine=engine)
        else:
            result = getattr(stages, f"run_{stage}")([previous], output, params, manifest, engine)
        results[stage] = json.loads(result.to_json())
        previous = output
    return results


# -- the driver, run as `python tests/test_spark_cluster.py DRIVER_ARGS_JSON` ---------------------


def _kill_when_running(spark, started: threading.Event, pgid: int, record: dict) -> None:
    """Once dedup has started, wait for a stage with running tasks, then kill the worker's group."""
    tracker = spark.sparkContext.statusTracker()
    started.wait()
    while not record.get("done"):
        running = [s for s in (tracker.getStageInfo(i) for i in tracker.getActiveStageIds()) if s and s.numActiveTasks > 0]
        if running:
            os.killpg(pgid, signal.SIGKILL)
            record["killed_during_stage"] = running[0].name
            return
        time.sleep(0.05)


def _driver(args: dict) -> None:
    if args.get("engine") == "local":
        from transforms.engines.local import LocalEngine

        manifests = run_stages(Path(args["config"]), Path(args["ingested"]), Path(args["out"]), LocalEngine(1, 64))
        Path(args["record"]).write_text(json.dumps({"manifests": manifests}), encoding="utf-8")
        return

    from transforms.engines.spark import SparkEngine

    engine = SparkEngine(args["master"], args["settings"], batch_rows=64, checkpoint_dir=args["checkpoint_dir"])
    spark = engine.session
    # Where executors import the pipeline from: the archive the session shipped, not this checkout.
    shipped = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("transforms").__file__).collect()[0]
    record: dict = {"executor_transforms": shipped}
    dedup_started = threading.Event()
    watcher = threading.Thread(target=_kill_when_running, args=(spark, dedup_started, args["kill_pgid"], record), daemon=True)
    watcher.start()

    from transforms import stages

    original = stages.run_dedup

    def dedup_then_mark(*a, **k):
        dedup_started.set()
        return original(*a, **k)

    stages.run_dedup = dedup_then_mark
    try:
        record["manifests"] = run_stages(Path(args["config"]), Path(args["ingested"]), Path(args["out"]), engine)
    finally:
        record["done"] = True
    record["executors_alive"] = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
    Path(args["record"]).write_text(json.dumps(record), encoding="utf-8")
    spark.stop()


def _cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _process_cpu_seconds(pid: int) -> float:
    """User + system seconds of a live process and its reaped children (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# -- the cluster --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as reply:
        return json.loads(reply.read())


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}
        # Nothing of this checkout on the cluster's path: executors import what the driver ships.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "SPARK_HOME")}
        self.env.update({"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1", "SPARK_DAEMON_JAVA_OPTS": SPARK_TEST_JAVA_OPTIONS})
        self.port, self.ui_port = _free_port(), _free_port()
        self.master = f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen(
            [_spark_class(), *args], env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self, workers: int = 2) -> None:
        """Launch the master and `workers` workers; `wait_for_workers` waits for them to register."""
        self.workers = workers
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port))
        for n in range(workers):
            work = self.root / f"worker-{n}"
            work.mkdir()
            self._start(
                f"worker-{n}", "org.apache.spark.deploy.worker.Worker", self.master, "--host", "127.0.0.1",
                "--cores", "1", "--memory", "1g", "--work-dir", str(work), "--webui-port", str(_free_port()),
            )

    def wait_for_workers(self) -> None:
        workers = self.workers
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len([w for w in _master_state(self.ui_port)["workers"] if w["state"] == "ALIVE"]) == workers:
                    return
            except OSError:
                pass
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(self.root / f'{name}.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError("the workers did not register with the master in 120 s")

    def stop(self) -> None:
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the JVM, its executors and their Python workers
            except ProcessLookupError:
                pass
            process.wait(timeout=30)

    def alive_groups(self, wait_s: float = 20) -> list[str]:
        """The process groups that still hold a process, after up to `wait_s` seconds for the
        killed ones' children to be reaped."""
        deadline = time.monotonic() + wait_s
        while True:
            alive = []
            for name, process in self.processes.items():
                try:
                    os.killpg(process.pid, 0)
                    alive.append(name)
                except ProcessLookupError:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path_factory, request):
    # Like every Spark test, this one needs Java: a machine without it fails here with the fix,
    # not later with a launcher error, and never passes by skipping the cluster it exists for.
    assert shutil.which("java") or os.environ.get("JAVA_HOME"), "Spark needs Java 17 or newer: set JAVA_HOME or put java on PATH"
    cluster = Cluster(tmp_path_factory.mktemp("spark-cluster"))

    def tear_down():
        cluster.stop()
        assert not cluster.alive_groups(), "a cluster process outlived the test"

    request.addfinalizer(tear_down)
    cluster.start()  # the JVMs start while the test prepares its input and runs the local engine
    return cluster


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(1200)  # two minutes on a quiet machine, seven at a load of 15 on 2 cores
def test_build_stages_on_a_standalone_cluster_equal_the_local_engine_and_survive_a_lost_worker(tmp_path, shared_data, cluster):
    from schemas.dataset import StageManifest, read_kind
    from transforms import stages

    books, site = tmp_path / "books", tmp_path / "site"
    books.mkdir()
    site.mkdir()
    for name in BOOKS[:2]:
        os.symlink(shared_data / "corpus" / "ancient-books" / name, books / name)
    # A third book as a "web" source: two of its lines recur in more than 5% of its 117 chapters,
    # so dedup's repeated-paragraph pass (which judges web sources) has work on the cluster.
    os.symlink(shared_data / "corpus" / "ancient-books" / BOOKS[2], site / BOOKS[2])
    config = tmp_path / "build.toml"
    config.write_text(
        CONFIG.format(
            books=books, site=site, dialogues=shared_data / "instructions" / "mtcmb_tcm_chgd.jsonl",
            benchmark=shared_data / "benchmarks" / "cmmlu_traditional_chinese_medicine.csv",
        ),
        encoding="utf-8",
    )
    from flows.config import load_config

    cfg = load_config(str(config))
    sources = [
        {"name": s.name, "category": s.category, "path": str(s.path), "format": s.format, "encoding": s.encoding}
        for s in cfg.sources
    ]
    stages.run_ingest(sources, [], tmp_path / "ingest", {"min_chars": 20}, StageManifest(stage="ingest"))

    # The local engine in a process of its own too, so that its CPU seconds (workers included) count.
    started, cpu = time.perf_counter(), _cpu_seconds()
    local_run = {"engine": "local", "config": str(config), "ingested": str(tmp_path / "ingest"), "out": str(tmp_path / "local"),
                 "record": str(tmp_path / "local.json")}
    done = subprocess.run([sys.executable, __file__, json.dumps(local_run)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    local = json.loads((tmp_path / "local.json").read_text(encoding="utf-8"))["manifests"]
    figures = {"local": {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(_cpu_seconds() - cpu, 1)}}

    cluster.wait_for_workers()
    worker = cluster.processes["worker-0"]
    record_path = tmp_path / "record.json"
    args = {
        "master": cluster.master, "config": str(config), "ingested": str(tmp_path / "ingest"), "out": str(tmp_path / "spark"),
        "checkpoint_dir": str(tmp_path / "checkpoints"), "kill_pgid": worker.pid, "record": str(record_path),
        "settings": {
            # The environment: the same interpreter path on every node (here, one machine).
            "spark.pyspark.python": sys.executable,
            "spark.executor.memory": "512m", "spark.executor.cores": "1", "spark.cores.max": "2",
            "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.ui.enabled": "false",
            "spark.driver.extraJavaOptions": SPARK_TEST_JAVA_OPTIONS, "spark.executor.extraJavaOptions": SPARK_TEST_JAVA_OPTIONS,
        },
    }
    driver_env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}
    started, cpu = time.perf_counter(), _cpu_seconds()
    driver = subprocess.run(
        [sys.executable, __file__, json.dumps(args)], env=driver_env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    figures["spark"] = {
        "wall_s": round(time.perf_counter() - started, 1), "driver_cpu_s": round(_cpu_seconds() - cpu, 1),
        # the master and the surviving worker with its (reaped) executors; the killed worker's are lost
        "cluster_cpu_s": round(sum(_process_cpu_seconds(p.pid) for p in cluster.processes.values()), 1),
    }
    print("figures", json.dumps(figures))
    assert driver.returncode == 0, driver.stderr[-4000:]
    record = json.loads(record_path.read_text(encoding="utf-8"))

    # The executors ran the shipped code, unpacked in a worker's folder, not this checkout.
    assert record["executor_transforms"].startswith(str(cluster.root)) and "/tcm_code/" in record["executor_transforms"]
    # A worker died in the middle of dedup, and the stages went on on the other.
    assert record.get("killed_during_stage"), record
    assert worker.wait(timeout=30) == -signal.SIGKILL
    assert record["executors_alive"] == 1

    volatile = ("started_at", "finished_at", "timings", "files", "fingerprint", "inputs")
    for stage in STAGES:
        ours, theirs = record["manifests"][stage], local[stage]
        for key in volatile:
            ours.pop(key, None), theirs.pop(key, None)
        ours["stats"].pop("cpu_seconds_per_step", None), theirs["stats"].pop("cpu_seconds_per_step", None)
        assert ours == theirs, stage
        for kind in ours["rows_out"]:
            assert read_kind(tmp_path / "spark" / stage, kind).to_pylist() == read_kind(tmp_path / "local" / stage, kind).to_pylist(), (stage, kind)
    assert record["manifests"]["dedup"]["stats"]["dedup"]["documents"]["repeated_paragraphs"]["lines"] > 0
    assert record["manifests"]["sample"]["rows_out"]["corpus"] > 0


if __name__ == "__main__":
    _driver(json.loads(sys.argv[1]))
