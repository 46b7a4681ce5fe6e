"""The dedup flow: `transforms.stages.run_dedup` with the [dedup] section, on the engine chosen
by `make_engine` (repeated paragraphs and the persistent index included on Spark)."""
from __future__ import annotations

from .runner import _simple_stage

dedup_flow = _simple_stage("dedup", "dedup")
