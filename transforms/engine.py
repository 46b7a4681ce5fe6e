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
from typing import Any, Callable, Iterable, Iterator

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
