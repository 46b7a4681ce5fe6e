"""Prefect flows: one flow per stage, runnable alone, and `build-corpus`, which runs them in order.

A stage whose output manifest matches its inputs, config section and code version is skipped,
so re-running a build after a crash redoes only the stages that had not finished.
"""
from __future__ import annotations

import functools
import inspect
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from schemas import CATEGORIES, CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest, check_input, fingerprint, hash_config, read_manifest, remove_stale_temporaries
from transforms import stages
from transforms.engines.local import LocalEngine

from .config import BuildConfig, ConfigError, TaskControl, load_config, sample_config_path
from .domain import train_domain_classifier_flow  # noqa: F401 - a flow of this module's CLI
from .pipeline_info import FLOWS
from .summary import as_markdown, as_text, produced
from .notify import FAILURE_HOOKS
from .progress import StageProgress, input_rows
from .locks import hold, output_lock_file, workdir_lock_file

DESCRIPTIONS = FLOWS
QUALITY = "quality"  # WORKDIR/quality/<stage>/: the suites' results on each stage's output
PACKED = "packed"  # WORKDIR/packed/: token sequences for GPU trainers, when [pack] tokenizer is set


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


# Stages with no Spark implementation run on the local engine when the build runs on Spark.
LOCAL_ONLY_STAGES = ("convert", "selection-dry-run")


def _paragraphs_judged(config: BuildConfig) -> bool:
    """Whether dedup would strip repeated paragraphs: enabled, and a source of a judged category."""
    rule = config.dedup.paragraphs
    return rule.enabled and any(source.category in rule.categories for source in config.sources)


def make_engine(config: BuildConfig, kind: Optional[str] = None, stage: Optional[str] = None):
    """The engine a stage runs on. A Spark engine builds its session from `[engine]` when the
    stage's task first needs it, so the Spark job runs inside that Prefect task."""
    kind = kind or config.engine.kind
    if kind == "spark" and stage == "dedup" and _paragraphs_judged(config):
        kind = "local"  # repeated paragraphs have no Spark implementation
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
    from transforms.ingest.importers import SourceError
    from transforms.convert.llm.client import EndpointError
    from transforms.convert.llm.unify import ConvertError

    from schemas.dataset import DatasetError

    from .config import ConfigError
    from .locks import LockBusy

    return (EndpointError, ConvertError, SourceError, DatasetError, ConfigError, ValidationFailed, LockBusy, NothingKept)


def retry_unless_final(task, task_run, state) -> bool:
    """Prefect's `retry_condition_fn` for every stage task: retry, unless the failure is final."""
    return not isinstance(state.data, _final_failures())


@task(name="stage", task_run_name="{stage}", cache_policy=NONE, retry_condition_fn=retry_unless_final)
def _stage_task(stage: str, work: Callable[..., StageManifest], manifest: StageManifest, total_rows: int = 0) -> StageManifest:
    return _with_progress(stage, work, manifest, total_rows)


@task(name="crawl-sites", task_run_name="crawl", cache_policy=NONE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_final)
def _crawl_task(work: Callable[..., StageManifest], manifest: StageManifest, stage: str = "crawl", total_rows: int = 0) -> StageManifest:
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
    """Run a flow over a work folder (its `workdir` parameter) holding the folder's lock."""

    @functools.wraps(flow_body)
    def holding(*args, **kwargs):
        bound = inspect.signature(flow_body).bind(*args, **kwargs)
        bound.apply_defaults()
        root = Path(bound.arguments["workdir"]).resolve()
        with hold(workdir_lock_file(root), f"work folder {root}", on_takeover=_log_takeover):
            return flow_body(*args, **kwargs)

    return holding


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
    started = time.perf_counter()
    if task_fn is None:
        manifest = chosen(stage, work, expected, input_rows(inputs))
    else:  # a stage's own task: (work, manifest, stage=, total_rows=)
        manifest = chosen(work, expected, stage=stage, total_rows=input_rows(inputs))
    summary = {**_summary(manifest), "skipped": False, "seconds": round(time.perf_counter() - started, 2), "output": str(output)}
    logger.info("%s: %s", stage, _ledger_line(manifest))
    return summary


def _summary(manifest: StageManifest) -> dict:
    return {
        "stage": manifest.stage,
        "rows_in": manifest.rows_in,
        "rows_kept": manifest.rows_kept,
        "rows_rejected": manifest.rows_rejected,
        "rows_out": manifest.rows_out,
        "rejected_by_reason": manifest.rejected_by_reason,
        "stats": manifest.stats,
    }


def _ledger_line(manifest: StageManifest) -> str:
    parts = [
        f"{kind} {n} in, {manifest.rows_kept.get(kind, 0)} kept, {manifest.rows_rejected.get(kind, 0)} rejected"
        for kind, n in manifest.rows_in.items()
    ]
    out = ", ".join(f"{n} {kind}" for kind, n in manifest.rows_out.items())
    return "; ".join(parts) + (f" -> {out} written" if out else "")


def _inputs(paths: list[str]) -> list[Path]:
    return [check_input(p) for p in paths]


# -- stage flows ------------------------------------------------------------------------------


def site_dir_origin(source_name: str) -> str:
    """The origin a `site_dir` source's pages are recorded under: `site-dir://<source name>/`."""
    from urllib.parse import quote

    return f"site-dir://{quote(source_name, safe='')}/"


@flow(name="crawl", description=DESCRIPTIONS["crawl"])
def crawl_flow(output: str, config: Optional[str] = None, recrawl: bool = False) -> dict:
    """Crawl the config's web sources into `output`. The crawl's state (journal, stored pages)
    lives in [crawl] state_dir, or in the user's cache under a name for `output`, so a stopped
    crawl resumes and `recrawl=True` (what a schedule sets) fetches again, asking only for changes."""
    from contextlib import ExitStack

    from crawlers.localsite import serve_folder
    from crawlers.run import run_crawl
    from crawlers.state import default_state_dir

    cfg = load_config(config)
    sources = [s for s in cfg.sources if s.kind == "crawl"]
    section = {"crawl": cfg.section("crawl"), "sources": [s.model_dump(mode="json") for s in sources]}
    state_dir = cfg.crawl.state_dir or default_state_dir(output)
    settings = {**cfg.section("crawl"), "state_dir": str(state_dir)}

    def work(manifest: StageManifest) -> StageManifest:
        with ExitStack() as stack:
            specs = []
            for source in sources:
                start_urls, sitemap_urls = list(source.start_urls), list(source.sitemap_urls)
                if source.site_dir is not None:
                    base = stack.enter_context(serve_folder(source.site_dir)).rstrip("/") + "/"
                    start_urls = [base + url.lstrip("/") for url in start_urls]
                    sitemap_urls = [base + url.lstrip("/") for url in sitemap_urls]
                specs.append(
                    {
                        "name": source.name,
                        "category": source.category,
                        "start_urls": start_urls,
                        "sitemap_urls": sitemap_urls,
                        "allowed_domains": [] if source.site_dir is not None else source.allowed_domains,
                        "allow": source.allow,
                        "deny": source.deny,
                        "max_depth": source.max_depth,
                        "max_pages": source.max_pages,
                        # Pages of a served folder keep one URL from build to build, whatever the port.
                        "record_origin": {"served": base, "as": site_dir_origin(source.name)} if source.site_dir is not None else None,
                    }
                )
            return run_crawl(specs, output, manifest, settings)

    # A scheduled re-crawl runs even when the crawl is finished; it asks the sites only for changes.
    return _run("crawl", Path(output), section, [], work, task_fn=_crawl_task, run_control=cfg.operations.tasks.get("crawl"), force=recrawl)


@flow(name="ingest", description=DESCRIPTIONS["ingest"])
def ingest_flow(output: str, config: Optional[str] = None, inputs: Optional[list[str]] = None) -> dict:
    cfg = load_config(config)
    sources = [s for s in cfg.sources if s.kind in ("files", "dataset")]
    pages = _inputs(inputs or [])
    source_dicts = [
        {"name": s.name, "category": s.category, "path": str(s.path), "format": s.format, "encoding": s.encoding,
         "fields": s.fields, "allow_all_rejected": s.allow_all_rejected}
        for s in sources
    ]
    params = {
        "min_chars": cfg.select.min_chars or 0,
        "batch_rows": cfg.engine.batch_rows,
        "extract_rules": {s.name: s.extract for s in cfg.sources if s.kind == "crawl" and s.extract},
    }
    section = {"sources": source_dicts, "params": params}
    fingerprints = [Path(s["path"]) for s in source_dicts] + pages

    def work(manifest: StageManifest) -> StageManifest:
        return stages.run_ingest(source_dicts, pages, output, params, manifest)

    summary = _run("ingest", Path(output), section, fingerprints, work)
    logger = get_run_logger()
    for entry in summary["stats"].get("skipped_files", []):
        logger.warning("ingest: source %s: skipped %s (%s)", entry["source"], entry["path"], entry["reason"])
    from transforms.ingest.stage import sources_all_rejected

    rejected_sources = sources_all_rejected(summary["stats"])
    if rejected_sources:
        from transforms.ingest.importers import SourceRejected

        # The dataset is written (its rejected/ says why); the command still fails, in one line.
        raise SourceRejected("; ".join(rejected_sources))
    return summary


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


clean_flow = _simple_stage("clean", "clean")
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


def _llm_limit(cfg: BuildConfig) -> dict:
    """LLM requests of every run share one Prefect global concurrency limit ([operations.llm])."""
    if cfg.convert.backend != "openai":
        return {}
    from .limits import llm_slot

    return {"slot": llm_slot(cfg.operations.llm)}


dedup_flow = _simple_stage("dedup", "dedup")
convert_flow = _simple_stage("convert", "convert", extra=_llm_limit)


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


@flow(name="sample", description=DESCRIPTIONS["sample"])
def sample_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    params = cfg.section("sample")

    chosen = make_engine(cfg, engine, "sample")

    def work(manifest: StageManifest, progress=None) -> StageManifest:
        return stages.run_sample(paths, output, params, manifest, manifest.config_hash, progress=progress, engine=chosen)

    return _run("sample", Path(output), params, paths, work)


@flow(name="validate", description=DESCRIPTIONS["validate"])
def validate_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    params = cfg.section("validate")
    return _run("validate", Path(output), params, paths, _validation_work(paths, Path(output), params))


def _validation_work(paths: list[Path], output: Path, params: dict, stage: Optional[str] = None) -> Callable:
    """Validate each input dataset into `output` (results JSON and Data Docs); a critical failure
    raises ValidationFailed once the results are saved. With `stage`, the one input is that
    stage's output and its results go straight into `output`."""
    from quality import validate_dataset
    from schemas.dataset import DatasetWriter

    options = {
        "categories": list(CATEGORIES),
        "languages": params["languages"],
        "min_chars": params["min_chars"],
        "max_chars": params["max_chars"],
        # Cleaning enforces lengths and turn order: before it, those rules only warn.
        "content_severity": "warning" if stage in ("crawl", "ingest") else "critical",
    }

    def work(manifest: StageManifest) -> StageManifest:
        with DatasetWriter(output, manifest) as writer:
            reports = []
            for number, path in enumerate(paths):
                results_dir = writer.folder if stage else writer.folder / (path.name or f"input-{number}")
                reports.extend(validate_dataset(path, options=options, results_dir=results_dir))
            for report in reports:
                manifest.rows_in[report.kind] = manifest.rows_in.get(report.kind, 0) + report.rows
                get_run_logger().info("validate%s: %s", f" {stage}" if stage else "", report.summary())
            failures = [r for r in reports if not r.success]
            manifest.stats["reports"] = [
                {"kind": r.kind, "rows": r.rows, "success": r.success, "evaluated": r.evaluated, "met": r.met,
                 "warnings": len(r.warnings), "seconds": r.seconds, "summary": r.summary()}
                for r in reports
            ]
            manifest.stats["failed"] = bool(failures)
            result = writer.commit()
        if failures and params["fail_on_error"]:
            where = f"{stage} output: " if stage else ""
            raise ValidationFailed(where + "; ".join(r.summary() for r in failures))
        return result

    return work


def validate_stage_output(stage: str, folder: Path, output: Path, cfg: BuildConfig) -> dict:
    """Run the suites on one stage's output inside build-corpus (skipped when done before)."""
    params = cfg.section("validate")
    section = {**params, "stage": stage}
    return _run("validate", output, section, [folder], _validation_work([folder], output, params, stage))


@flow(name="export", description=DESCRIPTIONS["export"])
def export_flow(inputs: list[str], output: str, config: Optional[str] = None, engine: Optional[str] = None, formats: Optional[list[str]] = None) -> dict:
    cfg = load_config(config)
    paths = _inputs(inputs)
    chosen = formats or cfg.export.formats

    def work(manifest: StageManifest) -> StageManifest:
        return stages.run_export(paths, output, chosen, manifest)

    return _run("export", Path(output), {"formats": chosen}, paths, work)


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


STAGE_FLOWS = {
    "crawl": crawl_flow,
    "ingest": ingest_flow,
    "clean": clean_flow,
    "select": select_flow,
    "dedup": dedup_flow,
    "decontaminate": decontaminate_flow,
    "convert": convert_flow,
    "sample": sample_flow,
    "validate": validate_flow,
    "export": export_flow,
    "pack": pack_flow,
}


# -- the whole build --------------------------------------------------------------------------


@flow(name="build-corpus", description=DESCRIPTIONS["build-corpus"], **FAILURE_HOOKS)
@_holding_workdir
def build_corpus(config: Optional[str] = None, workdir: str = "tcm-corpus-build", engine: Optional[str] = None) -> dict:
    """Every stage in order into `workdir`; without `config`, the embedded sample build."""
    logger = get_run_logger()
    config = config or sample_config_path()
    cfg = load_config(config)
    root = Path(workdir).resolve()
    staged = root / "stages"
    corpus = root / "corpus"
    started = time.perf_counter()
    results: dict[str, dict] = {}

    page_inputs: list[str] = []
    if any(s.kind == "crawl" for s in cfg.sources):
        results["crawl"] = crawl_flow(str(staged / "crawl"), config)
        page_inputs = [str(staged / "crawl")]
        if _kept_nothing(results["crawl"]):
            if not any(s.kind != "crawl" for s in cfg.sources):
                _stop_if_nothing_kept("crawl", staged / "crawl", results)
            logger.warning("crawl kept no page (reasons in %s); the build goes on with the other sources", staged / "crawl" / "rejected")
            page_inputs = []
    validation: dict[str, dict] = {}

    def check(stage: str) -> None:
        if cfg.validate_.every_stage:
            validation[stage] = validate_stage_output(stage, staged / stage, root / QUALITY / stage, cfg)

    if page_inputs:
        check("crawl")
    results["ingest"] = ingest_flow(str(staged / "ingest"), config, page_inputs)
    _stop_if_nothing_kept("ingest", staged / "ingest", results)
    check("ingest")
    previous = staged / "ingest"
    for stage in ("clean", "select", "dedup", "decontaminate", "convert"):
        results[stage] = STAGE_FLOWS[stage]([str(previous)], str(staged / stage), config, engine)
        _stop_if_nothing_kept(stage, staged / stage, results)
        check(stage)
        previous = staged / stage
    results["sample"] = sample_flow([str(previous)], str(corpus), config, engine)
    results["validate"] = validate_flow([str(corpus)], str(staged / "validate"), config, engine)
    if cfg.export.formats:
        results["export"] = export_flow([str(corpus)], str(staged / "export"), config, engine)
    if cfg.pack.tokenizer is not None:
        results["pack"] = pack_flow([str(corpus)], str(root / PACKED), config, engine)

    seconds = round(time.perf_counter() - started, 2)
    report_path = publish_build_report(root, logger)
    facts = produced(root, corpus, results, seconds)
    logger.info("%s", as_text(facts))
    _publish_summary(as_markdown(facts) + "\n\n" + build_summary(results), "build-corpus-summary", "What the corpus build produced")
    return {"workdir": str(root), "corpus": str(corpus), "seconds": seconds, "stages": results, "produced": facts,
            "validation": validation, "report": report_path}


def _publish_summary(markdown: str, key: str, description: str) -> None:
    try:
        create_markdown_artifact(markdown, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - an artifact is a convenience, never a reason to fail a build
        get_run_logger().warning("could not publish the summary artifact: %s", exc)


def publish_build_report(root: Path, logger) -> Optional[str]:
    """Write WORKDIR/report.html and publish the same figures as Prefect artifacts."""
    from quality.report import build_figures, write_report
    from transforms.select.conflicts import corpus_conflicts

    try:
        corpus = root / "corpus"
        figures = build_figures(root, corpus_conflicts(corpus) if corpus.is_dir() else None)
        path = write_report(figures, root / "report.html")
    except Exception as exc:  # noqa: BLE001 - the report describes a finished build; it never fails one
        logger.warning("could not write the build report: %s", exc)
        return None
    try:
        publish_artifacts(figures)
    except Exception as exc:  # noqa: BLE001 - as for the summary artifact
        logger.warning("could not publish the report artifacts: %s", exc)
    return str(path)


def publish_artifacts(figures: dict) -> None:
    from quality.report import artifact_markdown, artifact_tables

    for key, (description, rows) in artifact_tables(figures).items():
        if rows:
            create_table_artifact(rows, key=key, description=description)
    create_markdown_artifact(artifact_markdown(figures), key="corpus-report", description="Corpus report: funnel, mix, sampling curve")


def build_summary(results: dict[str, dict]) -> str:
    """The funnel: rows in, kept, rejected and written per record kind at each stage."""
    lines = ["## Funnel", "", "| stage | in | kept | rejected | out | skipped |", "|---|---|---|---|---|---|"]
    for stage, summary in results.items():
        fmt = lambda counts: ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"  # noqa: E731
        lines.append(
            f"| {stage} | {fmt(summary['rows_in'])} | {fmt(summary['rows_kept'])} | {fmt(summary['rows_rejected'])} "
            f"| {fmt(summary['rows_out'])} | {'yes' if summary.get('skipped') else 'no'} |"
        )
    return "\n".join(lines)


# -- the nightly refresh ----------------------------------------------------------------------

REFRESH_DESCRIPTION = "crawl, ingest, clean and dedup new material against the existing build's deduplicated rows"


@flow(name="refresh", description=REFRESH_DESCRIPTION, **FAILURE_HOOKS)
@_holding_workdir
def refresh(config: Optional[str] = None, workdir: str = "tcm-corpus-build", engine: Optional[str] = None, label: Optional[str] = None) -> dict:
    """Fetch and import the sources again into `WORKDIR/refresh/<label>/` (label: today's UTC
    date), clean and select them (the build's own rules: a fragment or a cross-reference is no
    new row), and dedup them after the existing `WORKDIR/stages/dedup` rows, so new rows that
    repeat the corpus are rejected as duplicates and only new material is added.
    Without `config`, the embedded sample build."""
    config = config or sample_config_path()
    cfg = load_config(config)
    root = Path(workdir).resolve()
    label = label or time.strftime("%Y%m%d", time.gmtime())
    target = root / "refresh" / label
    started = time.perf_counter()
    results: dict[str, dict] = {}

    page_inputs: list[str] = []
    if any(s.kind == "crawl" for s in cfg.sources):
        results["crawl"] = crawl_flow(str(target / "crawl"), config, recrawl=True)
        page_inputs = [str(target / "crawl")]
    results["ingest"] = ingest_flow(str(target / "ingest"), config, page_inputs)
    results["clean"] = clean_flow([str(target / "ingest")], str(target / "clean"), config, engine)
    results["select"] = select_flow([str(target / "clean")], str(target / "select"), config, engine)
    existing = root / "stages" / "dedup"
    earlier = [str(existing)] if read_manifest(existing) else []
    if not earlier:
        get_run_logger().info("refresh: no finished build in %s; dedup runs on the new rows alone", root)
    results["dedup"] = dedup_flow([*earlier, str(target / "select")], str(target / "dedup"), config, engine)

    # Text rows only: the dedup output also holds its audit kinds (clusters, repeated paragraphs).
    def text_rows(rows_out: dict) -> int:
        return sum(n for kind, n in rows_out.items() if kind in (DOCUMENTS, CONVERSATIONS))

    existing_rows = text_rows(read_manifest(existing).rows_out) if earlier else 0
    dedup_out = text_rows(results["dedup"]["rows_out"])
    seconds = round(time.perf_counter() - started, 2)
    text = (
        f"refresh finished in {seconds} s: {dedup_out - existing_rows:,} new rows after dedup against "
        f"{existing_rows:,} existing rows; {target / 'dedup'} holds both"
    )
    get_run_logger().info("%s", text)
    _publish_summary(f"# Refresh {label}\n\n{text}.\n\n" + build_summary(results), "refresh-summary", "What the refresh added")
    return {"workdir": str(root), "output": str(target / "dedup"), "new_rows": dedup_out - existing_rows, "seconds": seconds, "stages": results}
