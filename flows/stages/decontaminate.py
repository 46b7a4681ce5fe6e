"""The decontaminate flow: the [decontaminate] benchmarks loaded, rows overlapping them removed."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import get_run_logger

from schemas.dataset import StageManifest
from transforms import stages

from ..plain_flow import flow
from ..config import load_config
from .runner import DESCRIPTIONS, _inputs, _run, make_engine


@flow(name="decontaminate", description=DESCRIPTIONS["decontaminate"])
def decontaminate_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    from transforms.ingest.importers.benchmarks import load_benchmark

    cfg = load_config(config)
    paths = _inputs(inputs)
    params = cfg.section("decontaminate")
    chosen = make_engine(cfg, engine, "decontaminate")
    references = list(cfg.decontaminate.benchmarks)

    def work(manifest: StageManifest, progress=None) -> StageManifest:
        items = [item for path in references for item in load_benchmark(path)]
        result = stages.run_decontaminate(paths, output, params, manifest, chosen, items, progress=progress)
        hits = stages.contamination_hits(result)
        if hits:
            get_run_logger().warning("decontaminate: removed %s", hits)
        return result

    return _run("decontaminate", Path(output), params, paths + references, work)
