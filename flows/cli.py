"""`flows`: run the corpus build or any one stage from a shell.

    flows list
    flows run FLOW --help     the flow's arguments and its config sections with their defaults
    flows run build-corpus [--config FILE] [--workdir DIR] [--engine local|spark]
    flows run refresh [--config FILE] [--workdir DIR] [--engine local|spark]
    flows run crawl|ingest [--config FILE] --output DIR
    flows run STAGE --input DIR [--input DIR ...] --output DIR [--config FILE]
    flows run pack --input CORPUS_DIR --output DIR [--config FILE]
    flows run train-domain-classifier [--config FILE] [--output MODEL]
    flows lexicon build --from PATH [PATH ...] --output LEXICON [--no-seed]
    flows serve [--config FILE] [--workdir DIR] [--limit N]
    flows server status|stop  the local Prefect server `flows run` shares (see local_server.py)

A stage run without --config uses the library's defaults; build-corpus, refresh and serve use
the embedded sample build. Errors a user can fix (a bad config, a missing input, an unreadable
or unsupported file, a source whose every row was rejected, an output that would replace what
the run reads, a work folder another run holds) are one line on stderr: exit code 2 for
configuration, arguments, inputs and a busy work folder, 1 for a failed run. A flow that fails
inside ends with one line too; `--debug` prints the traceback before it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

from .runtime import (
    hold_collection,
    keep_summary_off_terminal,
    loaded_classes,
    prepare_environment,
    quiet_failures_on_terminal,
    settle_heap,
    without_heartbeats,
)

from .pipeline_info import FLOWS

STAGES = tuple(name for name in FLOWS if name != "build-corpus")
# Flows over a whole work folder (--workdir), not over --input/--output datasets.
WORKDIR_FLOWS = ("build-corpus", "refresh")
TRAIN_DOMAIN = "train-domain-classifier"


class UsageError(Exception):
    pass


# What each flow takes besides --config and --json: build-corpus and refresh a work folder,
# crawl and ingest an output (ingest: crawled pages as --input too), the rest --input/--output.
FLOW_ARGUMENTS = {
    "build-corpus": ("workdir", "engine"),
    "refresh": ("workdir", "engine"),
    "crawl": ("output", "recrawl"),
    "ingest": ("output", "pages"),
    "clean": ("input", "output", "engine", "dry_run"),
    "select": ("input", "output", "engine", "dry_run"),
    "dedup": ("input", "output", "engine"),
    "decontaminate": ("input", "output", "engine"),
    "convert": ("input", "output", "engine"),
    "sample": ("input", "output", "engine"),
    "validate": ("input", "output", "engine"),
    "export": ("input", "output", "format"),
    "pack": ("input", "output", "engine"),
    TRAIN_DOMAIN: ("model",),
}
# Every flow's namespace has every attribute; a flow that does not take one gets this value.
ARGUMENT_DEFAULTS = {"input": [], "output": None, "workdir": "tcm-corpus-build", "recrawl": False, "engine": None,
                     "format": None, "dry_run": False}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flows", description="Build an instruction corpus from Traditional Chinese Medicine text.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="name the flows and what each does")
    run = commands.add_parser("run", help="run build-corpus or one stage", description="Run build-corpus or one stage. `flows run FLOW --help` shows the flow's arguments and the config sections it reads, with their defaults.")
    flows = run.add_subparsers(dest="flow", required=True, metavar="FLOW", help="build-corpus or a stage: " + ", ".join(STAGES))
    for name in ("build-corpus", *STAGES):
        _flow_parser(flows, name)
    lexicon = commands.add_parser("lexicon", help="build the TCM lexicon from reference files")
    lexicon.add_argument("action", choices=("build",))
    lexicon.add_argument("--from", dest="sources", action="extend", nargs="+", required=True, metavar="PATH",
                         help="pharmacopoeia, terminology standard, classical book, or term<TAB>class list; a folder: its .txt files")
    lexicon.add_argument("--output", required=True, help="lexicon file to write (term<TAB>class per line)")
    lexicon.add_argument("--no-seed", action="store_true", help="leave out the seed list that ships in the package")
    serve = commands.add_parser("serve", help="register deployments with schedules on a Prefect server and run them")
    serve.add_argument("--config", help="build config (TOML); default: the embedded sample build")
    serve.add_argument("--workdir", help="where deployed runs build; default: [operations] workdir, else ./tcm-corpus-build")
    serve.add_argument("--limit", type=int, help="at most this many flow runs at once")
    server = commands.add_parser("server", help="the local Prefect server that `flows run` shares: status or stop",
                                 description="`flows run` starts one local Prefect server per PREFECT_HOME on first use and "
                                             "shares it; it stops itself after TCM_CORPUS_SERVER_IDLE_SECONDS (default 600) "
                                             "without a command. Not used when PREFECT_API_URL is set or "
                                             "TCM_CORPUS_PREFECT_SERVER=temporary.")
    server.add_argument("action", choices=("status", "stop"))
    return parser


def _flow_parser(flows, name: str) -> argparse.ArgumentParser:
    """`flows run NAME`: its own arguments, and in its help the config sections it reads."""
    from .config import FLOW_SECTIONS, describe_section
    from .pipeline_info import FLOWS

    takes = FLOW_ARGUMENTS[name]
    sections = FLOW_SECTIONS[name]
    if name in WORKDIR_FLOWS:
        shown = "\n".join(f"  [{s}]" if s != "sources" else "  [[sources]]" for s in sections)
        epilog = f"config sections read (`flows run STAGE --help` shows each with its defaults):\n{shown}"
    else:
        epilog = "config sections read, with the library's defaults (what runs without --config):\n\n" + "\n\n".join(
            describe_section(s) for s in sections)
    parser = flows.add_parser(name, help=FLOWS[name], description=FLOWS[name], epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    default_config = "the embedded sample build" if name in WORKDIR_FLOWS else "the library's defaults (no sources)"
    parser.add_argument("--config", help=f"build config (TOML); default: {default_config}")
    if "input" in takes:
        parser.add_argument("--input", action="append", default=[],
                            help="input dataset folder (repeatable; a plain folder of Parquet files is read as one kind)")
    if "pages" in takes:
        parser.add_argument("--input", action="append", default=[], help="crawled pages dataset to extract documents from (repeatable)")
    if "output" in takes:
        parser.add_argument("--output", help="output dataset folder (a relative path is relative to the current folder)")
    if "model" in takes:
        parser.add_argument("--output", help="model file to write; default: [train_domain] model")
    if "workdir" in takes:
        parser.add_argument("--workdir", default="tcm-corpus-build", help="where stages and shards go (default: ./tcm-corpus-build)")
    if "recrawl" in takes:
        parser.add_argument("--recrawl", action="store_true", help="fetch a finished crawl again, asking the sites only for changes")
    if "engine" in takes:
        parser.add_argument("--engine", choices=("local", "spark"), help="override [engine] kind")
    if "format" in takes:
        parser.add_argument("--format", action="append", choices=("sharegpt", "alpaca", "jsonl"), help="format (repeatable); default: [export] formats")
    if "dry_run" in takes:
        parser.add_argument("--dry-run", action="store_true", help="report what selection would remove, write nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--wait", action="store_true", help="when another run holds the work folder, wait for it instead of stopping")
    parser.add_argument("--debug", action="store_true", help="on failure, print the full traceback (Prefect keeps it too)")
    present = {action.dest for action in parser._actions}
    parser.set_defaults(**{key: value for key, value in ARGUMENT_DEFAULTS.items() if key not in present})
    return parser


def _preflight(args, config) -> None:
    """Check what can be checked before any work starts, so mistakes cost one line, not a run."""
    from schemas.dataset import DatasetError, check_input

    if (args.engine or config.engine.kind) == "spark" and not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise UsageError("the spark engine needs Java 17 or newer: set JAVA_HOME or put java on PATH")
    if config.convert.backend == "openai" and args.flow in ("build-corpus", "convert"):
        _check_llm(config.convert)
    if args.dry_run and args.flow not in ("clean", "select"):
        raise UsageError("--dry-run works with clean and select")
    if args.flow == TRAIN_DOMAIN:
        from .domain import TrainingInputError, check_training_inputs

        try:
            check_training_inputs(config, args.output)
        except TrainingInputError as exc:
            raise UsageError(str(exc)) from None
        return
    if args.recrawl and args.flow != "crawl":
        raise UsageError("--recrawl works with crawl")
    if args.flow in WORKDIR_FLOWS:
        if args.input or args.output:
            raise UsageError(f"{args.flow} takes --workdir, not --input/--output")
    elif not args.output and not args.dry_run:
        raise UsageError(f"{args.flow} needs --output DIR")
    if args.flow not in (*WORKDIR_FLOWS, "crawl", "ingest") and not args.input:
        raise UsageError(f"{args.flow} needs at least one --input DIR")
    for path in args.input:
        try:
            check_input(path)
        except DatasetError as exc:
            raise UsageError(str(exc)) from None
    if args.flow == "ingest" and not args.input and not any(s.kind in ("files", "dataset") for s in config.sources):
        raise UsageError("ingest needs a config with files or dataset [[sources]] (--config FILE), or crawled pages (--input DIR)")
    if args.flow == "crawl" and not any(s.kind == "crawl" for s in config.sources):
        raise UsageError("crawl needs a config with crawl [[sources]] (--config FILE)")
    if args.flow in (*WORKDIR_FLOWS, "ingest"):
        _check_sources(config)
    if args.flow == "decontaminate" and not config.decontaminate.benchmarks:
        print("flows: note: [decontaminate] benchmarks is empty, so no row is checked for evaluation items", file=sys.stderr)
    if args.flow == "pack" or (args.flow == "build-corpus" and config.pack.tokenizer is not None):
        _check_pack(config.pack)
    _check_paths(args, config)


def _check_pack(pack) -> None:
    """The tokenizer loads, has what the template needs, and the asked outputs can be written."""
    from importlib.util import find_spec

    if pack.tokenizer is None:
        raise UsageError("pack.tokenizer: not set; the pack stage needs a tokenizer.json or a tokenizer folder")
    from transforms.pack.tokenizer import PackTokenizer, TokenizerError

    try:
        tokenizer = PackTokenizer(pack.tokenizer, pack.eos_token, pack.pad_token, encoder="tokenizers")  # loads and names its tokens; no twin needed here
    except TokenizerError as exc:
        raise UsageError(str(exc)) from None
    if pack.template == "tokenizer" and tokenizer.chat_template is None:
        raise UsageError(f"pack.template: {pack.tokenizer} has no chat_template; set template = \"huatuo\" or \"chatml\"")
    if "hf" in pack.outputs and find_spec("datasets") is None:
        raise UsageError("pack.outputs: hf needs the `datasets` package (pip install datasets)")


def _check_paths(args, config) -> None:
    """No output may replace or lie inside what the run reads, nor be a file or a user's folder."""
    from .paths import PathRefused, check_output, check_workdir, source_paths

    sources = source_paths(config)
    try:
        if args.flow in WORKDIR_FLOWS:
            check_workdir(args.workdir, sources)
        elif args.output and not args.dry_run:
            reads = [("--input", path) for path in args.input]
            if args.flow in ("ingest", "crawl"):
                reads += sources
            check_output(args.output, reads)
    except PathRefused as exc:
        raise UsageError(str(exc)) from None


def _check_llm(convert) -> None:
    from transforms.convert.llm.prompts import load_prompts

    if not os.environ.get(convert.api_key_env):
        raise UsageError(f"convert.api_key_env: the environment variable {convert.api_key_env} is not set (the openai backend reads its API key there)")
    try:
        load_prompts(convert.prompt_version, convert.prompt_file)
    except (ValueError, OSError) as exc:
        raise UsageError(f"convert.prompt_version: {exc}") from None


def _check_sources(config) -> None:
    from transforms.ingest.importers import SourceError, check_file, scan_source

    for source in config.sources:
        if source.kind == "crawl":
            if source.site_dir is not None and not source.site_dir.is_dir():
                raise UsageError(f"source {source.name}: site_dir {source.site_dir} does not exist")
            continue
        if not source.path.exists():
            raise UsageError(f"source {source.name}: path {source.path} does not exist")
        files, skipped = scan_source(source.path, source.format)
        if not files:
            seen = f" (skipped: {', '.join(Path(e['path']).name + ' ' + e['reason'] for e in skipped[:5])})" if skipped else ""
            raise UsageError(f"source {source.name}: no {source.format} files at {source.path}{seen}")
        for file in files:
            if not os.access(file, os.R_OK):
                raise UsageError(f"source {source.name}: file {file} cannot be read (permission denied)")
            try:
                check_file(file, source.format)
            except SourceError as exc:
                raise UsageError(f"source {source.name}: {exc}") from None
    for path in config.decontaminate.benchmarks:
        if not path.is_file():
            raise UsageError(f"decontaminate.benchmarks: {path} does not exist")


# Flows that run the quality suites: the command imports them (Great Expectations) with the flow,
# or on a thread while the flow starts (`_import_suites_meanwhile`).
SUITE_FLOWS = ("build-corpus", "validate")


def _flow(module: str, name: str):
    """One flow, importing only its own module (a stage command does not import the others)."""
    from importlib import import_module

    return getattr(import_module(f"flows.{module}"), name)


def ledger_text(summary: dict) -> str:
    """A stage's ledger on one line, per kind: `in[+made made]→kept[ (-rejected)][ (written written)]`;
    the written count is shown where it differs from kept (convert keeps a monograph it turned
    wholly into conversations, and writes no document for it)."""
    made, written = summary.get("rows_made") or {}, summary.get("rows_out") or {}
    return ", ".join(
        f"{kind} {summary['rows_in'].get(kind, 0)}" + (f"+{made[kind]} made" if made.get(kind) else "")
        + f"→{summary['rows_kept'].get(kind, 0)}" + (f" (-{summary['rows_rejected'][kind]})" if summary["rows_rejected"].get(kind) else "")
        + (f" ({written[kind]} written)" if kind in written and written[kind] != summary["rows_kept"].get(kind, 0) else "")
        for kind in dict.fromkeys([*summary["rows_in"], *made])
    )


def _run(args, settle: bool = False, local_server: bool = False, engine_kind: str = "local") -> dict:
    """Run the flow `args` names; with `settle` (the command), the imports are settled first
    (`runtime.settle_heap`). On the shared local server (`local_server`), the flow runs without
    Prefect's heartbeats (`runtime.without_heartbeats`): that server has no UI and no
    automation that would read them, and it stops once idle."""
    module, name, arguments = _flow_call(args)
    meanwhile = settle and local_server and args.flow == "build-corpus" and engine_kind != "spark"
    if settle and args.flow in SUITE_FLOWS and not meanwhile:
        import quality  # noqa: F401
    chosen = _flow(module, name)
    if settle:
        # With the suites still to import on their thread, that thread settles the heap again and
        # starts the collector once it is done.
        settle_heap(resume=not meanwhile)
    if meanwhile:
        _import_suites_meanwhile()
    with without_heartbeats() if local_server else nullcontext():
        return chosen(**arguments)


def _import_suites_meanwhile() -> None:
    """Import the quality suites (Great Expectations: about 2 CPU-seconds) on a thread of their
    own while build-corpus starts: its round trips to the Prefect API and a crawl (a child
    process) leave the interpreter idle most of that time. The first validation imports
    `quality` as usual, which waits for this import if it is still under way (or, had it
    failed, imports it again and raises what fails). Its objects are settled
    (`runtime.settle_heap`) once imported, as the command's own imports are. Not on the Spark
    engine: `quality` keeps pyspark out of `sys.modules` while it imports GX, and a Spark stage
    imports pyspark meanwhile."""

    def load() -> None:
        try:
            import quality  # noqa: F401
        except Exception:  # noqa: BLE001 - the validating stage imports it again and reports the error
            pass
        finally:
            settle_heap()

    threading.Thread(target=load, name="import-quality-suites", daemon=True).start()


def _flow_call(args) -> tuple[str, str, dict]:
    """(module under flows/, flow object's name, its arguments) of the flow `args` runs."""
    if args.flow in WORKDIR_FLOWS:
        module, name = ("build", "build_corpus") if args.flow == "build-corpus" else ("refresh", "refresh")
        return module, name, {"config": args.config, "workdir": args.workdir, "engine": args.engine}
    if args.flow == "crawl":
        return "stages.crawl", "crawl_flow", {"output": args.output, "config": args.config, "recrawl": args.recrawl}
    if args.flow == "ingest":
        return "stages.ingest", "ingest_flow", {"output": args.output, "config": args.config, "inputs": args.input}
    if args.dry_run:
        return "stages.select", "selection_dry_run_flow", {"stage": args.flow, "inputs": args.input, "config": args.config, "engine": args.engine}
    if args.flow == TRAIN_DOMAIN:
        return "domain", "train_domain_classifier_flow", {"config": args.config, "output": args.output}
    if args.flow == "export":
        return "stages.export", "export_flow", {"inputs": args.input, "output": args.output, "config": args.config, "formats": args.format}
    return f"stages.{args.flow}", f"{args.flow}_flow", {"inputs": args.input, "output": args.output, "config": args.config, "engine": args.engine}


def _print_result(flow: str, result: dict) -> None:
    if result.get("dry_run"):
        print(result["text"])
        return
    if flow == TRAIN_DOMAIN:
        held = result["held_out"]
        if held:
            print(f"held out: {held['rows']} rows, P(tcm) >= {held['threshold']}: precision {held['precision']}, "
                  f"recall {held['recall']}, f1 {held['f1']}")
            for source, figures in held["per_source"].items():
                print(f"  {source} ({figures['label']}, {figures['rows']} rows): {figures['kept']:.2%} kept")
        print(f"model: {result['model']} ({result['train_rows']} training rows)\nfigures: {result['metrics']}")
        return
    stages = result.get("stages", {flow: result})
    for name, summary in stages.items():
        ledger = ledger_text(summary)
        note = " [skipped: already done]" if summary.get("skipped") else ""
        print(f"{name:>14}: {ledger or '-'}{note}")
        for entry in (summary.get("stats") or {}).get("skipped_files", []):
            print(f"{'':>14}  source {entry['source']}: skipped {entry['path']} ({entry['reason']})")
    if "produced" in result:
        from .summary import as_text

        print(as_text(result["produced"]))
    elif "corpus" in result:
        print(f"corpus: {result['corpus']} ({result['seconds']} s)")
    for name, summary in stages.items():
        figures = summary.get("stats", {}).get("pack") if name == "pack" else None
        if figures:
            print(f"packed: {Path(summary['output']).resolve()}  {figures['sequences']:,} sequences of {figures['seq_len']} tokens, "
                  f"{figures['tokens']:,} tokens ({figures['trained_tokens']:,} trained), {figures['items_per_sequence']} items "
                  f"per sequence, padding {figures['padding_share']:.2%}; {figures['split_rows']} split, "
                  f"{figures['truncated_rows']} truncated, {summary['rows_rejected'].get('corpus', 0)} rejected")
    if "new_rows" in result:
        print(f"refresh: {result['new_rows']:,} new rows after dedup against the build, in {result['output']} ({result['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    """The `flows` command. Called with `argv` (from Python: tests, an embedding application),
    it leaves Prefect's server settings and the process's heap as they are; as the command
    itself (no `argv`), a run uses the local server shared by this user's commands
    (flows/local_server.py), and the process ends without collecting its heap (`settle_heap`)."""
    code = _command(argv)
    if argv is None:
        settle_heap()
    return code


def _command(argv: list[str] | None) -> int:
    as_command = argv is None
    parser = _parser()
    args = parser.parse_args(argv)
    if as_command and args.command == "run":
        hold_collection()  # until its imports are settled (`_run`)
    if args.command == "list":
        from .pipeline_info import describe

        print(describe())
        return 0
    if args.command == "lexicon":
        return _lexicon(args)
    prepare_environment()
    if args.command == "server":
        return _server(args)
    shared_server = _use_shared_server() if args.command == "run" and as_command else None
    from .config import ConfigError, load_config, sample_config_path

    if args.config is None and (args.command == "serve" or args.flow in WORKDIR_FLOWS):
        args.config = sample_config_path()
    try:
        config = load_config(args.config)
        if args.command == "serve":
            return _serve(args, config)
        _preflight(args, config)
    except (ConfigError, UsageError) as exc:
        print(f"flows: error: {exc}", file=sys.stderr)
        return 2
    if as_command:
        _start_crawl_ahead(args, config)
    if not args.json:
        from .progress import enable_terminal

        enable_terminal()
    from .locks import LockBusy

    if not args.debug:
        quiet_failures_on_terminal()  # Prefect still records every failure, traceback included
    if not args.json:
        keep_summary_off_terminal()  # printed below, once the run ends
    try:
        with _run_lock(args):
            if shared_server is not None:
                shared_server.wait_ready()
            result = _run(args, settle=as_command, local_server=shared_server is not None, engine_kind=args.engine or config.engine.kind)
    # A busy work folder, an unreadable input file: the user's to fix. The importers' errors are
    # told by their classes only where a stage imported them (a stage command does not).
    except (LockBusy, *loaded_classes("transforms.ingest.importers:SourceError", "transforms.ingest.importers:SourceRejected")) as exc:
        return _failed(args, exc, 2)
    except KeyboardInterrupt:
        print("flows: interrupted; finished stages are kept and a re-run resumes after them", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a known failure, or a fault of ours: one line here, the traceback with --debug and in Prefect
        return _failed(args, exc, 1, unexpected=not isinstance(exc, _known_failures()))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    else:
        _print_result(args.flow, result)
    return 0


def _start_crawl_ahead(args, config) -> None:
    """For a flow that begins with a crawl, start the crawl's process now
    (`crawlers.run.start_ahead`): its imports (Scrapy, Twisted, about a CPU-second) then run on
    another core while this command imports Prefect and creates its flow runs. Not when the crawl
    has written its output before (build-corpus or crawl would most likely skip it); a re-crawl
    (refresh, `--recrawl`) always runs. A process left unused exits with this command."""
    if args.flow not in ("build-corpus", "refresh", "crawl") or not any(s.kind == "crawl" for s in config.sources):
        return
    if args.flow == "build-corpus" or (args.flow == "crawl" and not args.recrawl):
        from schemas.dataset import MANIFEST

        output = Path(args.workdir) / "stages" / "crawl" if args.flow == "build-corpus" else Path(args.output)
        if (output / MANIFEST).is_file():
            return
    from crawlers.run import start_ahead

    start_ahead()


def _use_shared_server():
    """The local Prefect server shared by this user's commands (flows/local_server.py), started
    now if none runs, so it starts while this command imports and checks; None when Prefect's
    own choice applies. A server that cannot start leaves Prefect's temporary one, with a note."""
    from .local_server import ServerError, use_shared_server

    try:
        return use_shared_server()
    except (ServerError, OSError) as exc:
        os.environ.pop("PREFECT_API_URL", None)
        print(f"flows: note: {exc}; using a temporary Prefect server for this command", file=sys.stderr)
        return None


def _server(args) -> int:
    """`flows server status|stop`: the shared local Prefect server of this PREFECT_HOME."""
    from .local_server import IDLE_ENV, idle_seconds, status, stop

    if args.action == "stop":
        state = stop()
        print(f"flows server: stopped the server at {state['url']} (pid {state['pid']})" if state else "flows server: none running")
        return 0
    state = status()
    if state is None:
        print(f"flows server: none running for PREFECT_HOME={os.environ['PREFECT_HOME']}; the next `flows run` starts one "
              f"(stopped after {idle_seconds():.0f} s without a command; {IDLE_ENV} sets that)")
        return 0
    print(f"flows server: {state['url']} (pid {state['pid']}, {'answering' if state['healthy'] else 'not answering'}), "
          f"stops after {state['idle_seconds']:.0f} s without a command; log: {state['log']}")
    return 0


def _failed(args, exc: BaseException, code: int, unexpected: bool = False) -> int:
    """The one line a failed run ends with; `--debug` prints the traceback before it."""
    from transforms.convert.llm.redact import redact

    if getattr(exc, "results", None) and not args.json:
        _print_result(args.flow, {"stages": exc.results})  # the ledger of the stages that ran
    if args.debug:
        import traceback

        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    text = redact(str(exc).strip())
    if unexpected:
        first = text.splitlines()[0] if text else ""
        text = f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")
        text += "" if args.debug else " (run again with --debug for the traceback)"
    print(f"flows: error: {text}", file=sys.stderr)
    return code


def _run_lock(args):
    """The work folder's lock, held for the whole run (a dry run and a model file need none)."""
    from contextlib import nullcontext

    from .locks import hold, output_lock_file, workdir_lock_file

    if args.flow in WORKDIR_FLOWS:
        lock_file, what = workdir_lock_file(args.workdir), f"work folder {args.workdir}"
    elif args.output and not args.dry_run and args.flow != TRAIN_DOMAIN:
        lock_file, what = output_lock_file(args.output), f"output {args.output}"
    else:
        return nullcontext()

    def say(line: str) -> None:
        print(f"flows: {line}", file=sys.stderr, flush=True)

    return hold(lock_file, what, wait=args.wait, on_wait=say, on_takeover=say)


def _lexicon(args) -> int:
    from collections import Counter
    from pathlib import Path

    from transforms.clean.lexicon import LexiconError, build_lexicon, write_lexicon

    try:
        build = build_lexicon(args.sources, seed=not args.no_seed)
        output = write_lexicon(build, args.output)
    except LexiconError as exc:
        print(f"flows: error: {exc}", file=sys.stderr)
        return 2
    by_kind: dict[str, list[dict]] = {}
    for source in build.files:
        by_kind.setdefault(source["kind"], []).append(source)
    for kind, sources in by_kind.items():
        found = Counter()
        for source in sources:
            found.update(source["terms"])
        names = ", ".join(Path(s["path"]).name for s in sources[:3]) + (", ..." if len(sources) > 3 else "")
        terms = ", ".join(f"{cls} {n}" for cls, n in found.items()) or "no terms"
        print(f"{kind}: {len(sources)} file(s) ({names}): {terms}")
    total = ", ".join(f"{cls} {n}" for cls, n in build.counts().items())
    print(f"lexicon: {output}: {len(build.terms)} terms ({total})")
    return 0


def _serve(args, config) -> int:
    from .serve import ServeError, resolve_workdir, serve

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    try:
        serve(config, args.config, resolve_workdir(config, args.workdir), args.limit)
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    print("flows serve: stopped; scheduled deployments are paused until the next `flows serve`")
    return 0


def _known_failures() -> tuple[type[BaseException], ...]:
    """The failures that end a run with their own one line (exit 1), among the modules this
    command imported (an exception of a module never imported cannot have been raised)."""
    from schemas.dataset import DatasetError

    from .config import ConfigError
    from .local_server import ServerError
    from .runtime import loaded_classes

    return (ConfigError, DatasetError, ServerError) + loaded_classes(
        "transforms.ingest.importers:SourceError", "flows.stages.runner:ValidationFailed", "flows.stages.runner:NothingKept",
        "transforms.convert.llm.client:EndpointError", "transforms.convert.llm.unify:ConvertError",
        "transforms.clean.domain_training:TrainingError", "transforms.pack.tokenizer:TokenizerError", "crawlers.run:CrawlError")


if __name__ == "__main__":
    sys.exit(main())
