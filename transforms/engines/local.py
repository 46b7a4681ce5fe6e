"""The local engine: streams record batches through a pool of worker processes.

A step is a plain function `step(batch, context) -> result`. The context (stage parameters, an
index) reaches each worker once per `map` call, not with every batch. Results come back in input
order, and at most two batches per worker are in flight, so memory stays bounded whatever the
dataset size.

The worker processes are started once per process and worker count, on first need, and serve
every later `map` call of every stage (a build's stages no longer each spawn workers that import
pyarrow, the transforms and their models again); they end when this process exits or when
`shutdown_workers()` is called. A worker keeps the last call's context (an index) until
its next call or its end. `worker_cpu_seconds()` tells what the live ones have spent, so a
caller timing a stage can count them before they end.
"""
from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pyarrow as pa

from schemas.dataset import DatasetWriter, StageManifest, iter_batches, kinds_in

# In a worker: the context of the `map` call whose batches it runs, by that call's number.
_worker_context: tuple[int, Any] = (-1, None)


def _run_step(step: Callable, batch: Any, call: int, context_file: str) -> Any:
    global _worker_context
    if _worker_context[0] != call:
        _worker_context = (-1, None)  # the previous call's context is dropped before the next is read
        with open(context_file, "rb") as handle:
            _worker_context = (call, pickle.load(handle))
    return step(batch, _worker_context[1])


class _Workers:
    """The process pool shared by the local engines of this process: `workers` spawned processes
    (spawn, not fork: the caller may hold threads, Prefect's, which fork does not copy safely),
    and a folder for the contexts of the `map` calls, one pickle file per call."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.folder = Path(tempfile.mkdtemp(prefix="tcm-engine-"))

    def broken(self) -> bool:
        return bool(getattr(self.pool, "_broken", False))

    def pids(self) -> list[int]:
        return list((getattr(self.pool, "_processes", None) or {}).keys())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


_lock = threading.Lock()
_shared: Optional[_Workers] = None
_calls = itertools.count()


def _workers(n: int) -> _Workers:
    """The shared pool of `n` workers, started now if there is none of that size (or it broke)."""
    global _shared
    with _lock:
        if _shared is not None and (_shared.workers != n or _shared.broken()):
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = _Workers(n)
        return _shared


def shutdown_workers() -> None:
    """End the shared worker processes (if any) and wait for them; the next `map` starts new ones."""
    global _shared
    with _lock:
        if _shared is not None:
            _shared.close()
            _shared = None


atexit.register(shutdown_workers)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a live process has spent so far, from /proc/PID/stat; 0.0 when
    it has ended or there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15 of stat(5)


def worker_cpu_seconds() -> float:
    """CPU seconds (user + system) spent so far by the live shared worker processes
    (`process_cpu_seconds`). Once they end, the same seconds are in this process's
    RUSAGE_CHILDREN, so `RUSAGE_CHILDREN + worker_cpu_seconds()` only grows."""
    with _lock:
        pids = _shared.pids() if _shared is not None else []
    return sum(process_cpu_seconds(pid) for pid in pids)


class LocalEngine:
    """The engine interface (`transforms.engines.Engine`) on this machine's cores."""

    name = "local"

    def __init__(self, workers: int = 1, batch_rows: int = 2048):
        self.workers = max(1, workers)
        self.batch_rows = batch_rows

    def map(self, step: Callable[[Any, Any], Any], batches: Iterable[Any], context: Any = None) -> Iterator[Any]:
        batches = iter(batches)
        head = list(islice(batches, 2))
        if self.workers == 1 or len(head) < 2:
            # One batch or one worker: a pool would only add start-up time.
            for batch in chain(head, batches):
                yield step(batch, context)
            return
        shared = _workers(self.workers)
        call = next(_calls)
        context_file = shared.folder / f"context-{call}.pickle"
        with open(context_file, "wb") as handle:
            pickle.dump(context, handle, protocol=pickle.HIGHEST_PROTOCOL)
        pending: deque = deque()
        try:
            for batch in chain(head, batches):
                pending.append(shared.pool.submit(_run_step, step, batch, call, str(context_file)))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            # Left early (a failed batch, a consumer that stopped): what has not started is not run.
            for future in pending:
                future.cancel()
            context_file.unlink(missing_ok=True)

    def map_stage(self, step, inputs, output, manifest: StageManifest, kinds, context_of, progress=None, extras=None, finish=None) -> StageManifest:
        """`step` over every batch of each kind present, through `map`; see `Engine.map_stage`."""
        with DatasetWriter(output, manifest) as writer:
            for kind in kinds_present(inputs, kinds):
                for result in self.map(step, read_batches(inputs, kind, self.batch_rows), context_of(kind)):
                    kept, rejected = result[0], result[1]
                    writer.write(kind, kept)
                    writer.reject(kind, rejected)
                    if extras is not None:
                        extras(kind, result[2])
                    add_count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                    if progress:
                        progress(kind, kept.num_rows + rejected.num_rows)
            if finish is not None:

                def write_file(name: str, text: str, rows: int) -> None:
                    (writer.folder / name).write_text(text, encoding="utf-8")
                    writer.add_file(name, rows)

                finish(write_file)
            return writer.commit()

    def dedup(self, inputs, output, params: dict, manifest: StageManifest, progress=None) -> StageManifest:
        """Repeated paragraphs, exact and MinHash clusters: `transforms/dedup/deduplicate.py`."""
        from transforms.dedup.deduplicate import run_dedup_stage

        return run_dedup_stage(inputs, output, params, manifest, self, progress)

    def sample(self, inputs, output, params: dict, manifest: StageManifest, config_hash: str, progress=None) -> StageManifest:
        """Priority order and shards in three streamed passes: `transforms/sample/shards.py`."""
        from transforms.sample.shards import run_sample_stage

        return run_sample_stage(inputs, output, params, manifest, config_hash, progress)

    def pack(self, shards: list[dict], output, params: dict, manifest: StageManifest, tokenizer, progress=None) -> StageManifest:
        """Corpus shards tokenized and packed into sequences: `transforms/pack/stage.py`."""
        from transforms.pack.stage import run_pack_shards

        return run_pack_shards(shards, output, params, manifest, self, tokenizer, progress)

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers}, batch_rows={self.batch_rows})"


# -- reading and counting stage inputs on this machine ------------------------------------------


def read_batches(inputs: Iterable[Path], kind: str, rows: int) -> Iterator[pa.RecordBatch]:
    """The record batches of `kind` of each input dataset in turn, at most `rows` rows each."""
    for path in inputs:
        yield from iter_batches(path, kind, rows)


def kinds_present(inputs: list[Path], kinds: Iterable[str]) -> list[str]:
    """The kinds, in the order given, that at least one input dataset holds."""
    found = {kind for path in inputs for kind in kinds_in(path)}
    return [kind for kind in kinds if kind in found]


def add_count(manifest: StageManifest, field: str, kind: str, n: int) -> None:
    """Add `n` rows of `kind` to the manifest's `field` ledger ("rows_in", "rows_kept", ...)."""
    counts = getattr(manifest, field)
    counts[kind] = counts.get(kind, 0) + n
