"""The export flow: the corpus as training files in the configured formats."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from schemas.dataset import StageManifest
from transforms import stages

from ..plain_flow import flow
from ..config import load_config
from .runner import DESCRIPTIONS, _inputs, _run


@flow(name="export", description=DESCRIPTIONS["export"])
def export_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None, formats: Optional[list[str]] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    chosen = formats or cfg.export.formats

    def work(manifest: StageManifest) -> StageManifest:
        return stages.run_export(paths, output, chosen, manifest)

    return _run("export", Path(output), {"formats": chosen}, paths, work)
