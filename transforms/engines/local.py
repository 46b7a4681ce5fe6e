"""The local engine: streams record batches through a pool of worker processes.

A step is a plain function `step(batch, context) -> result`. The context (stage parameters, an
index) is sent to each worker once, when the worker starts, not with every batch. Results come
back in input order, and at most two batches per worker are in flight, so memory stays bounded
whatever the dataset size.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from schemas.dataset import StageManifest, iter_batches, kinds_in

_worker_context: Any = None


def _start_worker(context: Any) -> None:
    global _worker_context
    _worker_context = context


def _run_step(step: Callable, batch: Any) -> Any:
    return step(batch, _worker_context)


class LocalEngine:
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
        # spawn, not fork: the caller may hold threads (Prefect's), which fork does not copy safely.
        with ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(context,),
        ) as pool:
            pending: deque = deque()
            for batch in chain(head, batches):
                pending.append(pool.submit(_run_step, step, batch))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


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
