"""The select flow, and the selection dry run: what [select] would remove, per rule, with examples."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from transforms import stages

from ..plain_flow import flow
from ..config import load_config
from .runner import _inputs, _simple_stage, make_engine

select_flow = _simple_stage("select", "select")


@flow(name="selection-dry-run", description="what [select] would remove, per rule, with examples; writes nothing")
def selection_dry_run_flow(stage: str, inputs: list[str], config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    """`stage` is "select" (inputs tagged by clean) or "clean" (untagged inputs, tagged in memory)."""
    from transforms.select.rules import describe_report

    cfg = load_config(config)
    paths = _inputs(inputs)
    clean_params = cfg.section("clean") if stage == "clean" else None
    report = stages.selection_dry_run(paths, cfg.section("select"), make_engine(cfg, engine, "selection-dry-run"), clean_params)
    text = describe_report(report)
    for kind, part in report.items():
        get_run_logger().info("selection dry run: %s: %s of %s rows would be removed", kind, part["would_remove"], part["rows"])
    try:
        create_markdown_artifact(f"```\n{text}\n```", key="selection-dry-run", description="What selection would remove")
    except Exception as exc:  # noqa: BLE001 - an artifact is a convenience
        get_run_logger().warning("could not publish the dry-run artifact: %s", exc)
    return {"dry_run": True, "stage": stage, "report": report, "text": text}
