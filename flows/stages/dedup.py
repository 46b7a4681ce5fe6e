"""The dedup flow: `transforms.stages.run_dedup` with the [dedup] section. Repeated paragraphs
have no Spark implementation, so `make_engine` keeps dedup local when they apply."""
from __future__ import annotations

from .runner import _simple_stage

dedup_flow = _simple_stage("dedup", "dedup")
