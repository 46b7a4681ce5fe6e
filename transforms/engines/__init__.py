"""Engines: what runs a stage's steps over datasets. A stage asks its engine and never asks which
engine it has; `local.LocalEngine` (a process pool on this machine) and `spark.SparkEngine` (a
PySpark cluster) take the same steps and write the same datasets, ledgers and manifests.

A step is a plain function `step(batch, context) -> (kept, rejected[, extra])` over one Arrow
record batch; the context (stage parameters, an index) is sent to each worker once.

This package imports nothing of ours beyond `schemas`: the Spark engine is imported only by whoever
builds one (flows' `make_engine`, tests), and it imports pyspark.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

from schemas.dataset import StageManifest

Progress = Callable[[str, int], None]
# finish(write_file): called once before the dataset is committed; write_file(name, text, rows)
# writes a text file into the output dataset and lists it in the manifest with its row count.
WriteFile = Callable[[str, str, int], None]


class Engine(Protocol):
    """The operations a stage may ask of an engine.

    - `map(step, batches, context)`: the step over in-memory batches, results in input order
      (convert and the selection dry run; the Spark engine refuses it).
    - `map_stage(step, inputs, output, manifest, kinds, context_of, progress, extras, finish)`:
      the step over every batch of each kind present in the input datasets, with
      `context_of(kind)` as context; kept and rejected rows written to `output` with the ledger
      (rows in = kept + rejected per kind). A step's third result goes to `extras(kind, extra)`,
      batch by batch in dataset order; `finish(write_file)` runs before the commit.
    - `dedup(inputs, output, params, manifest, progress)`: exact and near-duplicate clusters over
      all inputs, the kept rows and the `clusters` audit (the `[dedup]` section as params).
    - `sample(inputs, output, params, manifest, config_hash, progress)`: the priority order and
      the corpus shards with `_corpus_manifest.json` (the `[sample]` section as params).
    - `pack(shards, output, params, manifest, tokenizer, progress)`: corpus shards tokenized and
      packed into sequences (`transforms/pack/`), one task per shard.
    Each stage-level operation returns the committed StageManifest.
    """

    name: str  # for logs and reprs only: stages never branch on it
    batch_rows: int

    def map(self, step: Callable[[Any, Any], Any], batches: Iterable[Any], context: Any = None) -> Iterator[Any]: ...

    def map_stage(
        self,
        step: Callable[[Any, Any], tuple],
        inputs: Sequence,
        output,
        manifest: StageManifest,
        kinds: Sequence[str],
        context_of: Callable[[str], Any],
        progress: Optional[Progress] = None,
        extras: Optional[Callable[[str, Any], None]] = None,
        finish: Optional[Callable[[WriteFile], None]] = None,
    ) -> StageManifest: ...

    def dedup(self, inputs: Sequence, output, params: dict, manifest: StageManifest, progress: Optional[Progress] = None) -> StageManifest: ...

    def pack(
        self, shards: list[dict], output, params: dict, manifest: StageManifest, tokenizer, progress: Optional[Progress] = None
    ) -> StageManifest: ...

    def sample(
        self, inputs: Sequence, output, params: dict, manifest: StageManifest, config_hash: str, progress: Optional[Progress] = None
    ) -> StageManifest: ...


def run_map_stage(step, inputs, output, manifest: StageManifest, engine: Engine, kinds, context_of, progress: Optional[Progress] = None) -> StageManifest:
    """Run `step` over every batch of each kind on `engine`; each result is (kept, rejected)."""
    return engine.map_stage(step, inputs, output, manifest, kinds, context_of, progress)
