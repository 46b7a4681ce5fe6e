"""The local engine: streams record batches through a pool of worker processes.

A step is a plain function `step(batch, context) -> result`. The context (stage parameters, an
index) is sent to each worker once, when the worker starts, not with every batch; a stage's kinds
share one pool, whose workers start with every kind's context. Results come
back in input order, and at most two batches per worker are in flight, so memory stays bounded
whatever the dataset size.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from contextlib import ExitStack
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from schemas.dataset import DatasetWriter, StageManifest, iter_batches, kinds_in

_worker_context: Any = None


def _start_worker(context: Any) -> None:
    global _worker_context
    _worker_context = context


def _run_step(step: Callable, batch: Any) -> Any:
    return step(batch, _worker_context)


def _run_kind_step(step: Callable, kind: str, batch: Any) -> Any:
    """A map_stage task: the worker's context is the stage's contexts by kind."""
    return step(batch, _worker_context[kind])


class LocalEngine:
    """The engine interface (`transforms.engines.Engine`) on this machine's cores."""

    name = "local"

    def __init__(self, workers: int = 1, batch_rows: int = 2048):
        self.workers = max(1, workers)
        self.batch_rows = batch_rows

    def _pool(self, context: Any) -> ProcessPoolExecutor:
        # spawn, not fork: the caller may hold threads (Prefect's), which fork does not copy safely.
        return ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(context,),
        )

    def _in_order(self, pool: ProcessPoolExecutor, task: Callable, batches: Iterable[Any]) -> Iterator[Any]:
        """task(batch) of each batch on the pool, results in input order, at most two batches
        per worker in flight."""
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(task, batch))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def map(self, step: Callable[[Any, Any], Any], batches: Iterable[Any], context: Any = None) -> Iterator[Any]:
        batches = iter(batches)
        head = list(islice(batches, 2))
        if self.workers == 1 or len(head) < 2:
            # One batch or one worker: a pool would only add start-up time.
            for batch in chain(head, batches):
                yield step(batch, context)
            return
        with self._pool(context) as pool:
            yield from self._in_order(pool, partial(_run_step, step), chain(head, batches))

    def map_stage(self, step, inputs, output, manifest: StageManifest, kinds, context_of, progress=None, extras=None, finish=None) -> StageManifest:
        """`step` over every batch of each kind present, as `map` does; see `Engine.map_stage`.
        One pool serves all the kinds (its workers start once, with every kind's context), started
        when a kind first has two batches or more."""
        kinds = kinds_present(inputs, kinds)
        contexts = {kind: context_of(kind) for kind in kinds}
        with DatasetWriter(output, manifest) as writer, ExitStack() as stack:
            pool = None
            for kind in kinds:
                batches = iter(read_batches(inputs, kind, self.batch_rows))
                head = list(islice(batches, 2))
                if pool is None and self.workers > 1 and len(head) >= 2:
                    pool = stack.enter_context(self._pool(contexts))
                if pool is None:
                    results = (step(batch, contexts[kind]) for batch in chain(head, batches))
                else:
                    results = self._in_order(pool, partial(_run_kind_step, step, kind), chain(head, batches))
                for result in results:
                    kept, rejected = result[0], result[1]
                    writer.write(kind, kept)
                    writer.reject(kind, rejected)
                    if extras is not None:
                        extras(kind, result[2])
                    add_count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                    if progress:
                        progress(kind, kept.num_rows + rejected.num_rows)
            stack.close()  # the workers end with the last batch
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
