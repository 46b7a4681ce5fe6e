"""`flows serve`: deployments of every flow on a Prefect server, with the config's schedules.

Each flow gets a deployment named after the build (`build-corpus/tcm-corpus`, `clean/tcm-corpus`
...) whose default parameters point at one work folder, so a run started from the UI re-runs
that stage of that build. Each `[[operations.schedules]]` entry adds a scheduled deployment
`<flow>/<schedule name>` (defaults: `refresh/nightly` at 02:00, `build-corpus/weekly` on Sunday
at 03:00, UTC). The parameters are plain JSON and editable in the UI before a run.

The process serves the deployments until stopped (Ctrl-C or SIGTERM): it polls the server for
scheduled and manual runs of them and runs each in a child process; on shutdown the schedules
are paused, and the next `flows serve` resumes them.
"""
from __future__ import annotations

import datetime
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from zoneinfo import ZoneInfo

from .config import BuildConfig, ScheduleConfig, sample_config_path

FLOW_ATTRIBUTES = {
    "build-corpus": "build_corpus",
    "refresh": "refresh",
    "crawl": "crawl_flow",
    "ingest": "ingest_flow",
    "clean": "clean_flow",
    "dedup": "dedup_flow",
    "decontaminate": "decontaminate_flow",
    "convert": "convert_flow",
    "sample": "sample_flow",
    "validate": "validate_flow",
    "export": "export_flow",
}


class ServeError(Exception):
    """Serving cannot start; the message is one line that says what to do."""


def api_url() -> str:
    """The Prefect API that `flows serve` registers with, checked to answer."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServeError(
            "flows serve needs a Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ServeError(f"the Prefect API at {url} does not answer ({exc}); is `prefect server start` running?") from None
    return url


def stage_parameters(flow_name: str, cfg: BuildConfig, config: Optional[str], workdir: Path) -> dict:
    """Default parameters of a flow's deployment: its place in the build under `workdir`."""
    stages = workdir / "stages"
    corpus = str(workdir / "corpus")
    chain = {
        "clean": stages / "ingest",
        "dedup": stages / "clean",
        "decontaminate": stages / "dedup",
        "convert": stages / "decontaminate",
    }
    if flow_name in ("build-corpus", "refresh"):
        return {"config": config, "workdir": str(workdir)}
    if flow_name == "crawl":
        return {"output": str(stages / "crawl"), "config": config}
    if flow_name == "ingest":
        crawled = [str(stages / "crawl")] if any(s.kind == "crawl" for s in cfg.sources) else []
        return {"output": str(stages / "ingest"), "config": config, "inputs": crawled}
    if flow_name in chain:
        return {"inputs": [str(chain[flow_name])], "output": str(stages / flow_name), "config": config}
    if flow_name == "sample":
        return {"inputs": [str(stages / "convert")], "output": corpus, "config": config}
    return {"inputs": [corpus], "output": str(stages / flow_name), "config": config}


def _schedule(entry: ScheduleConfig, timezone: str):
    from prefect.schedules import Cron, Interval

    zone = entry.timezone or timezone
    if entry.cron is not None:
        try:
            return Cron(entry.cron, timezone=zone, active=entry.active)
        except ValueError as exc:  # the five fields are there, a value is not valid
            raise ServeError(f"operations.schedules {entry.flow}/{entry.name}: cron {entry.cron!r} is not valid ({_first_line(exc)})") from None
    # A fixed anchor (midnight, 2020-01-01, in the zone) keeps the run times when serve restarts.
    anchor = datetime.datetime(2020, 1, 1, tzinfo=ZoneInfo(zone))
    return Interval(datetime.timedelta(seconds=entry.interval_seconds), anchor_date=anchor, timezone=zone, active=entry.active)


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def deployments(cfg: BuildConfig, config: Optional[str], workdir: Path) -> list:
    """The RunnerDeployments to serve: one per flow, and one per configured schedule."""
    from prefect.types.entrypoint import EntrypointType

    from . import pipeline
    from .notify import FAILURE_HOOKS

    tags = ["tcm-corpus", cfg.name]
    made = []

    def deployment(flow_name: str, name: str, parameters: dict, schedule=None, paused: bool = False):
        # Hooks ride with the flow object: a served run executes this very object in a child process.
        flow = getattr(pipeline, FLOW_ATTRIBUTES[flow_name]).with_options(**FAILURE_HOOKS)
        made_one = flow.to_deployment(
            name=name,
            schedules=[schedule] if schedule is not None else None,
            parameters=parameters,
            paused=paused,
            tags=tags,
            version=pipeline.code_version(),
            description=flow.description,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        made_one.entrypoint = f"flows.pipeline.{FLOW_ATTRIBUTES[flow_name]}"
        made.append(made_one)

    for flow_name in FLOW_ATTRIBUTES:
        deployment(flow_name, cfg.name, stage_parameters(flow_name, cfg, config, workdir))
    for entry in cfg.operations.schedules:
        parameters = {**stage_parameters(entry.flow, cfg, config, workdir), **entry.parameters}
        deployment(entry.flow, entry.name, parameters, _schedule(entry, cfg.operations.timezone), paused=not entry.active)
    return made


def resolve_workdir(cfg: BuildConfig, given: Optional[str]) -> Path:
    """--workdir, else [operations] workdir (relative to the config file), else ./tcm-corpus-build."""
    if given:
        return Path(given).expanduser().resolve()
    if cfg.operations.workdir is not None:
        return cfg.operations.workdir
    return Path("tcm-corpus-build").resolve()


def serve(cfg: BuildConfig, config: Optional[str], workdir: Path, limit: Optional[int] = None) -> None:
    """Register the deployments and run their flow runs until stopped. Blocks."""
    from prefect import serve as prefect_serve

    served = deployments(cfg, str(Path(config).resolve()) if config else sample_config_path(), workdir)
    url = api_url()
    if cfg.convert.backend != "template":
        from .limits import ensure_limit

        ensure_limit(cfg.operations.llm.concurrency_limit, cfg.operations.llm.slots)
    ui = url.rstrip("/").removesuffix("/api")
    print(f"flows serve: {len(served)} deployments of build {cfg.name!r} on {url}; work folder {workdir}")
    for entry in cfg.operations.schedules:
        clock = entry.cron or f"every {entry.interval_seconds:g} s"
        print(f"  scheduled: {entry.flow}/{entry.name}  {clock} ({entry.timezone or cfg.operations.timezone}){'' if entry.active else '  [paused]'}")
    print(f"  UI: {ui}/deployments   stop with Ctrl-C")
    prefect_serve(*served, limit=limit, print_starting_message=False)
