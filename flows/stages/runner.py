"""What every stage flow shares: the engine a stage runs on, the stage task, and `_run`, which
skips a stage whose output is finished for these inputs and config and otherwise runs it.
"""
from __future__ import annotations

import functools
import inspect
import resource
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from schemas.dataset import StageManifest, check_input, fingerprint, hash_config, read_manifest, remove_stale_temporaries
from transforms import stages
from transforms.engines.local import LocalEngine, worker_cpu_seconds

from ..plain_flow import flow
from ..config import BuildConfig, TaskControl, load_config, sample_config_path
from ..pipeline_info import FLOWS
from ..locks import hold, output_lock_file, workdir_lock_file
from ..progress import StageProgress, input_rows
from ..runtime import without_heartbeats

DESCRIPTIONS = FLOWS


class ValidationFailed(Exception):
    """A dataset broke a hard expectation; the message names it and shows examples."""


class NothingKept(Exception):
    """A build stage kept no row: nothing is left to build from. `results` holds the stages run
    so far (their ledgers), the message names the stage, its top rejection reasons and where the
    rejected rows are."""

    def __init__(self, message: str, results: dict[str, dict]):
        super().__init__(message)
        self.results = results


def _kept_nothing(summary: dict) -> bool:
    return sum(summary["rows_out"].values()) == 0


def _stop_if_nothing_kept(stage: str, output: Path, results: dict[str, dict]) -> None:
    summary = results[stage]
    if not _kept_nothing(summary):
        return
    rejected = sum(summary["rows_rejected"].values())
    if not rejected:
        raise NothingKept(f"{stage} found no rows to work on; nothing is left to build a corpus from", results)
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["rejected_by_reason"].items(), key=lambda item: -item[1])[:3])
    raise NothingKept(
        f"every row was rejected at {stage} ({rejected} rows: {reasons}); nothing is left to build a corpus from. "
        f"The rejected rows and their reasons are in {output / 'rejected'}",
        results,
    )


def code_version() -> str:
    try:
        return metadata.version("tcm-corpus")
    except metadata.PackageNotFoundError:
        return "dev"


# Stages with no Spark implementation run on the local engine when the build runs on Spark:
# convert is bound by its LLM endpoint, not by cores; the selection dry run is a report over
# in-memory batches. Crawl, ingest, validate and export take no engine (they run in the driver).
LOCAL_ONLY_STAGES = ("convert", "selection-dry-run")


def make_engine(config: BuildConfig, kind: Optional[str] = None, stage: Optional[str] = None):
    """The engine a stage runs on. A Spark engine builds its session from `[engine]` when the
    stage's task first needs it, so the Spark job runs inside that Prefect task."""
    kind = kind or config.engine.kind
    if kind == "spark" and stage not in LOCAL_ONLY_STAGES:
        from transforms.engines.spark import SparkEngine

        return SparkEngine(config.engine.master, config.engine.spark, config.engine.batch_rows, checkpoint_dir=config.engine.checkpoint_dir)
    if kind not in ("local", "spark"):
        raise ValueError(f"unknown engine {kind!r}; use 'local' or 'spark'")
    return LocalEngine(config.engine.workers, config.engine.batch_rows)


def _expected(stage: str, config_section: object, inputs: list[Path]) -> StageManifest:
    return StageManifest(
        stage=stage,
        code_version=code_version(),
        config_hash=hash_config(config_section),
        inputs=[{"path": str(p), "fingerprint": fingerprint(p)} for p in inputs],
    )


def _final_failures() -> tuple[type[BaseException], ...]:
    """Failures no retry can mend: a refused key or model, a user's mistake, a busy work folder."""
    from schemas.dataset import DatasetError

    from ..config import ConfigError
    from ..locks import LockBusy
    from ..runtime import loaded_classes

    return (DatasetError, ConfigError, ValidationFailed, LockBusy, NothingKept) + loaded_classes(
        "transforms.convert.llm.client:EndpointError", "transforms.convert.llm.unify:ConvertError",
        "transforms.ingest.importers:SourceError")


def retry_unless_final(task, task_run, state) -> bool:
    """Prefect's `retry_condition_fn` for every stage task: retry, unless the failure is final."""
    return not isinstance(state.data, _final_failures())


@task(name="stage", task_run_name="{stage}", cache_policy=NONE, retry_condition_fn=retry_unless_final)
def _stage_task(stage: str, work: Callable[..., StageManifest], manifest: StageManifest, total_rows: int = 0) -> StageManifest:
    return _with_progress(stage, work, manifest, total_rows)


def _with_progress(stage: str, work, manifest: StageManifest, total_rows: int) -> StageManifest:
    """Run the stage; a `work(manifest, progress)` gets the callback that feeds the UI and the terminal."""
    if "progress" not in inspect.signature(work).parameters:
        return work(manifest)
    tracker = StageProgress(stage, total_rows)
    completed = False
    try:
        result = work(manifest, progress=tracker)
        completed = True
        return result
    finally:
        tracker.finish(completed)


def _run(stage: str, output: Path, *args, **kwargs) -> dict:
    """`_run_stage` holding the output's lock (its work folder's, inside a build), so no other
    run writes the same folder meanwhile."""
    with hold(output_lock_file(output), f"output {output}", on_takeover=_log_takeover):
        return _run_stage(stage, output, *args, **kwargs)


def _log_takeover(message: str) -> None:
    get_run_logger().warning("%s", message)


def _holding_workdir(flow_body: Callable) -> Callable:
    """Run a flow over a work folder (its `workdir` parameter) holding the folder's lock, once
    `paths.check_workdir` passes for its config's sources (a deployed run is checked as a command
    is; raises `paths.PathRefused` before anything is written)."""

    @functools.wraps(flow_body)
    def holding(*args, **kwargs):
        from ..paths import check_workdir, source_paths

        bound = inspect.signature(flow_body).bind(*args, **kwargs)
        bound.apply_defaults()
        check_workdir(bound.arguments["workdir"], source_paths(load_config(bound.arguments.get("config") or sample_config_path())))
        root = Path(bound.arguments["workdir"]).resolve()
        with hold(workdir_lock_file(root), f"work folder {root}", on_takeover=_log_takeover):
            return flow_body(*args, **kwargs)

    return holding


def _subflows_share_heartbeat(flow_body: Callable) -> Callable:
    """Run a flow that calls the stage flows as sub-flows (build-corpus, refresh) with Prefect's
    flow-run heartbeats off for those sub-flows (`runtime.without_heartbeats`).

    A sub-flow runs in its parent's process and thread, and the parent's own heartbeat goes on
    the whole time, so a build whose process dies is still told by its heartbeats stopping;
    a sub-flow's own heartbeat thread cost up to a second of waiting per stage, about 8 s of a
    sample build's 25."""

    @functools.wraps(flow_body)
    def sharing(*args, **kwargs):
        with without_heartbeats():
            return flow_body(*args, **kwargs)

    return sharing


def _run_stage(stage: str, output: Path, config_section: object, inputs: list[Path], work, task_fn=None, run_control: Optional[TaskControl] = None, force: bool = False) -> dict:
    """Skip the stage if its output is finished for these inputs and config (unless `force`); else run it.

    `run_control` (from [operations.tasks.<stage>]) gives the task retries and a time-out."""
    logger = get_run_logger()
    removed = remove_stale_temporaries(output)
    if removed:
        logger.info("%s: removed %s, left by an interrupted run", stage, ", ".join(p.name for p in removed))
    expected = _expected(stage, config_section, inputs)
    existing = read_manifest(output)
    if not force and existing and existing.key() == expected.key() and not existing.stats.get("failed") and not existing.stats.get("unfinished"):
        logger.info("%s: finished before for these inputs and config, skipped (%s)", stage, output)
        return {**_summary(existing), "skipped": True, "output": str(output)}
    chosen = task_fn or _stage_task
    if run_control is not None:
        chosen = chosen.with_options(
            retries=run_control.retries,
            retry_delay_seconds=run_control.retry_delay_seconds,
            timeout_seconds=run_control.timeout_seconds,
        )
    started, cpu = time.perf_counter(), cpu_seconds()
    if task_fn is None:
        manifest = chosen(stage, work, expected, input_rows(inputs))
    else:  # a stage's own task: (work, manifest, stage=, total_rows=)
        manifest = chosen(work, expected, stage=stage, total_rows=input_rows(inputs))
    summary = {**_summary(manifest), "skipped": False, "seconds": round(time.perf_counter() - started, 2),
               "cpu_seconds": round(cpu_seconds() - cpu, 2), "output": str(output)}
    logger.info("%s: %s", stage, _ledger_line(manifest))
    return summary


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, of its children that have ended, and of the
    local engine's live worker processes (they serve every stage of a build and end with the
    process), so the difference around a stage is what it cost."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + worker_cpu_seconds()


def _summary(manifest: StageManifest) -> dict:
    return {
        "stage": manifest.stage,
        "rows_in": manifest.rows_in,
        "rows_made": manifest.rows_made,
        "rows_kept": manifest.rows_kept,
        "rows_rejected": manifest.rows_rejected,
        "rows_out": manifest.rows_out,
        "rejected_by_reason": manifest.rejected_by_reason,
        "stats": manifest.stats,
    }


def _ledger_line(manifest: StageManifest) -> str:
    parts = [
        f"{kind} {manifest.rows_in.get(kind, 0)} in, "
        + (f"{manifest.rows_made[kind]} made, " if manifest.rows_made.get(kind) else "")
        + f"{manifest.rows_kept.get(kind, 0)} kept, {manifest.rows_rejected.get(kind, 0)} rejected"
        for kind in dict.fromkeys([*manifest.rows_in, *manifest.rows_made])
    ]
    out = ", ".join(f"{n} {kind}" for kind, n in manifest.rows_out.items())
    return "; ".join(parts) + (f" -> {out} written" if out else "")


def _inputs(paths: list[str]) -> list[Path]:
    return [check_input(p) for p in paths]


def _simple_stage(stage: str, section_name: str, extra: Optional[Callable[[BuildConfig], dict]] = None) -> Callable:
    """A flow for a stage that reads datasets and one config section: `transforms.stages.run_<stage>`;
    `extra(config)` gives further keyword arguments of the stage function."""

    @flow(name=stage, description=DESCRIPTIONS[stage])
    def stage_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
        cfg = load_config(config)
        paths = _inputs(inputs)
        params = cfg.section(section_name)
        chosen = make_engine(cfg, engine, stage)

        def work(manifest: StageManifest, progress=None) -> StageManifest:
            more = extra(cfg) if extra else {}
            return getattr(stages, f"run_{stage}")(paths, output, params, manifest, chosen, progress=progress, **more)

        return _run(stage, Path(output), params, paths, work, run_control=cfg.operations.tasks.get(stage))

    stage_flow.__name__ = f"{stage}_flow"
    return stage_flow
