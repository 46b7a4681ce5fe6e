"""The export stage: the corpus as training files (ShareGPT, Alpaca, JSONL)."""
from __future__ import annotations

from schemas import CORPUS
from schemas.dataset import DatasetWriter, StageManifest

from transforms.engines.local import add_count

from .formats import export_corpus


def run_export(inputs, output, formats: list[str], manifest: StageManifest, progress=None) -> StageManifest:
    with DatasetWriter(output, manifest) as writer:
        counts = export_corpus(inputs, writer.folder, formats, lambda n: add_count(manifest, "rows_in", CORPUS, n))
        for name, rows in sorted(counts.items()):
            writer.add_file(name, rows)
        manifest.stats["files"] = dict(counts)
        return writer.commit()
