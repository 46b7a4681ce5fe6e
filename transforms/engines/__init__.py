"""Engines: what runs a stage's step over datasets. `local` (a process pool on this machine) and
`spark` (a PySpark cluster) take the same steps and write the same datasets and manifests."""
from __future__ import annotations

from typing import Callable

from schemas.dataset import DatasetWriter

from .local import add_count, kinds_present, read_batches

Progress = Callable[[str, int], None]


def run_map_stage(step, inputs, output, manifest, engine, kinds, context_of, progress: Progress | None = None):
    """Run `step` over every batch of each kind; each result is (kept, rejected)."""
    if engine.name == "spark":
        from .spark import stages as spark_stages

        return spark_stages.run_map_stage(step, inputs, output, manifest, engine, kinds, context_of, progress)
    with DatasetWriter(output, manifest) as writer:
        for kind in kinds_present(inputs, kinds):
            for kept, rejected in engine.map(step, read_batches(inputs, kind, engine.batch_rows), context_of(kind)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                add_count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        return writer.commit()
