"""The convert flow: documents into conversations with the [convert] section, on the local engine;
with the openai backend every request holds a slot of the shared LLM concurrency limit."""
from __future__ import annotations

from ..config import BuildConfig
from .runner import _simple_stage


def _llm_limit(cfg: BuildConfig) -> dict:
    """LLM requests of every run share one Prefect global concurrency limit ([operations.llm])."""
    if cfg.convert.backend != "openai":
        return {}
    from ..limits import llm_slot

    return {"slot": llm_slot(cfg.operations.llm)}


convert_flow = _simple_stage("convert", "convert", extra=_llm_limit)
