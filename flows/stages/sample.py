"""The sample flow: the priority order and the corpus shards, with the [sample] section."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from schemas.dataset import StageManifest
from transforms import stages

from ..plain_flow import flow
from ..config import load_config
from .runner import DESCRIPTIONS, _inputs, _run, make_engine


@flow(name="sample", description=DESCRIPTIONS["sample"])
def sample_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    params = cfg.section("sample")

    chosen = make_engine(cfg, engine, "sample")

    def work(manifest: StageManifest, progress=None) -> StageManifest:
        return stages.run_sample(paths, output, params, manifest, manifest.config_hash, progress=progress, engine=chosen)

    return _run("sample", Path(output), params, paths, work)
