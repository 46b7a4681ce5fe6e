"""The pack flow: the corpus tokenized with [pack] tokenizer and packed into sequences of seq_len
tokens for GPU trainers; the tokenizer's files are an input, so a changed tokenizer packs again."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from schemas.dataset import StageManifest

from ..plain_flow import flow
from ..config import ConfigError, load_config
from .runner import DESCRIPTIONS, _inputs, _run, make_engine


@flow(name="pack", description=DESCRIPTIONS["pack"])
def pack_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    """Tokenize the corpus in `inputs` with [pack] tokenizer and pack it into sequences of
    seq_len tokens in `output` (see transforms.pack.stage). The tokenizer's files are an input:
    a changed tokenizer packs again."""
    from transforms.pack.stage import run_pack

    cfg = load_config(config)
    if cfg.pack.tokenizer is None:
        raise ConfigError("pack.tokenizer: not set; the pack stage needs a tokenizer.json or a tokenizer folder")
    paths = _inputs(inputs)
    params = cfg.section("pack")
    chosen = make_engine(cfg, engine, "pack")

    def work(manifest: StageManifest, progress=None) -> StageManifest:
        return run_pack(paths, output, params, manifest, chosen, progress=progress)

    return _run("pack", Path(output), params, [*paths, cfg.pack.tokenizer], work)
