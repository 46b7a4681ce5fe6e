"""The clean flow: `transforms.stages.run_clean` over the input datasets with the [clean] section;
task options from [operations.tasks.clean]."""
from __future__ import annotations

from .runner import _simple_stage

clean_flow = _simple_stage("clean", "clean")
