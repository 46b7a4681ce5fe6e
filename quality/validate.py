"""Validate datasets against their kind's Great Expectations suite; keep the results as JSON and
as a static Data Docs site.

Each call runs in its own ephemeral GX context: nothing is read from or written to a GX project
folder, and two validations never share state.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import great_expectations as gx  # quality/__init__.py set GX's environment and logging first
import pandas as pd
import pyarrow as pa
from great_expectations.core import ExpectationSuiteValidationResult  # noqa: E402
from great_expectations.data_context import EphemeralDataContext  # noqa: E402
from great_expectations.data_context import set_context  # noqa: E402
from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.data_context.store import ValidationResultsStore  # noqa: E402
from great_expectations.data_context.types.resource_identifiers import (  # noqa: E402
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.expectations.row_conditions import deserialize_row_condition  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402

from schemas.dataset import ROW_GROUP_ROWS, DatasetError, iter_batches, kind_files, kinds_in  # noqa: E402
from schemas.records import MESSAGES_TYPE  # noqa: E402

from .suites import (  # noqa: E402
    EMPTY_TURNS,
    ROLES_OK,
    SUITE_KINDS,
    TEXT_CHARS,
    TURNS,
    Options,
    build_suite,
    conform_for_validation,
    read_columns,
    summary_frame,
    summary_table,
)
from .turns import empty_turns, role_sequence  # noqa: E402

log = logging.getLogger(__name__)

DATA_DOCS = "data_docs"
DOCS_SITE = "tcm_quality"
DATASOURCE = "tcm_corpus"
EXAMPLES = 5
# Values short enough to show as they are; a failure on any other column shows the rows instead.
VALUE_COLUMNS = frozenset({"id", "source", "category", "format", "lang", "position", "url", "status"})
TEXT_PREVIEW = 40


def _quiet_gx_logs() -> None:
    """GX logs store and renderer steps at INFO, and pins some of its loggers at INFO (a temporary
    folder for every ephemeral context); a pipeline's log wants only GX's warnings."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, gx_logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("great_expectations.") and isinstance(gx_logger, logging.Logger):
            if logging.NOTSET < gx_logger.level < logging.WARNING:
                gx_logger.setLevel(logging.WARNING)


_quiet_gx_logs()


@dataclass
class ExpectationFailure:
    expectation: str  # e.g. "expect_column_values_to_be_unique(id)"
    kind: str  # dataset kind validated
    unexpected_count: int  # rows that broke it; 0 for a check of the whole column (min, max, row count)
    examples: list  # up to 5 failing values, rows ({"id": ...}), or the observed value of a whole-column check
    severity: str = "critical"  # a critical failure fails the validation; a warning is reported only


@dataclass
class ValidationReport:
    kind: str
    rows: int
    success: bool
    evaluated: int
    failures: list[ExpectationFailure] = field(default_factory=list)
    results_path: str | None = None
    docs_path: str | None = None
    seconds: float = 0.0

    @property
    def met(self) -> int:
        return self.evaluated - len(self.failures)

    @property
    def warnings(self) -> list[ExpectationFailure]:
        return [f for f in self.failures if f.severity != "critical"]

    def summary(self) -> str:
        line = f"{self.kind}: {self.rows} rows, {self.met}/{self.evaluated} expectations met"
        if not self.failures:
            return line
        critical = [f for f in self.failures if f.severity == "critical"]
        first = (critical or self.failures)[0]
        line += f"; failed {first.expectation}" + ("" if critical else " (warning)")
        if first.unexpected_count:
            line += f": {first.unexpected_count} unexpected"
        if first.examples:
            line += f", e.g. {_short(first.examples)}"
        if len(self.failures) > 1:
            line += f" (+{len(self.failures) - 1} more failing"
            line += f", {len(self.warnings)} of them warnings)" if critical and self.warnings else ")"
        return line


def validate_kind(
    table_or_dataframe: pa.Table | pa.RecordBatch | pd.DataFrame,
    kind: str,
    *,
    options: Mapping | None = None,
    results_dir: Path | None = None,
) -> ValidationReport:
    """Validate one table of rows of `kind` (documents, conversations, pages, corpus)."""
    run = QualityRun(options=options, results_dir=results_dir)
    report = run.validate(table_or_dataframe, kind)
    run.build_docs()
    return report


def validate_dataset(
    path: Path, *, options: Mapping | None = None, results_dir: Path | None = None
) -> list[ValidationReport]:
    """Validate every kind of rows a dataset folder holds (a stage's output, or a corpus folder of
    part files); one report per kind, and one Data Docs site for them all."""
    path = Path(path)
    kinds = kinds_in(path) if path.is_dir() else []
    if not kinds:
        raise DatasetError(f"{path} holds no dataset to validate (no Parquet files of a known kind)")
    run = QualityRun(options=options, results_dir=results_dir)
    reports = [run.validate_summary(dataset_summary(path, kind), kind, DatasetRows(path, kind)) for kind in kinds]
    run.build_docs()
    return reports


def dataset_summary(path: Path, kind: str, batch_rows: int = ROW_GROUP_ROWS) -> pa.Table:
    """The suite's flat columns for every row of `kind` in a dataset folder, read batch by batch.

    A batch of a stage's row group (`ROW_GROUP_ROWS`): the text of four (65,536 rows, ~50 MB)
    was allocated afresh from the system for every batch, and the page faults of that cost up
    to twice the reading itself in system time on a stage's output."""
    parts = [summary_table(batch, kind) for batch in iter_batches(path, kind, batch_rows, columns=list(read_columns(kind)))]
    if not parts:
        return summary_table(conform_for_validation(pa.table({}), kind), kind)
    return pa.concat_tables(parts, promote_options="permissive")


class TableRows:
    """Rows of a table in memory, looked up by number to describe a failure."""

    def __init__(self, table: pa.Table, kind: str):
        self.table = table

    def row(self, number: int) -> dict:
        return self.table.slice(number, 1).to_pylist()[0]


class DatasetRows:
    """Rows of a dataset folder looked up by number: only failing rows are read again."""

    def __init__(self, path: Path, kind: str):
        self.kind = kind
        self.files = kind_files(path, kind)
        self.starts = []
        total = 0
        for file in self.files:
            self.starts.append(total)
            total += pq.ParquetFile(file).metadata.num_rows
        self._cached: tuple[int, pa.Table] | None = None

    def row(self, number: int) -> dict:
        index = max(i for i, start in enumerate(self.starts) if start <= number)
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, pq.read_table(self.files[index]))
        table = conform_for_validation(self._cached[1], self.kind) if self.kind else self._cached[1]
        return table.slice(number - self.starts[index], 1).to_pylist()[0]


class QualityRun:
    """One ephemeral GX context; each kind validated through it becomes a page of one docs site."""

    def __init__(self, *, options: Mapping | None = None, results_dir: Path | None = None):
        self.options = Options.from_mapping(options)
        # Absolute: Great Expectations refuses a relative Data Docs folder.
        self.results_dir = Path(results_dir).resolve() if results_dir is not None else None
        self.context = _ephemeral_context()
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.datasource = self.context.data_sources.add_pandas(DATASOURCE)
        self.reports: list[tuple[ValidationReport, ValidationResultIdentifier]] = []
        if self.results_dir is not None:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            self.context.add_data_docs_site(
                site_name=DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(self.results_dir / DATA_DOCS),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "view": _view("CompiledIndexPageView")},
                    # Result pages only: a page per suite and the profiling section cost more
                    # than the validation itself and show nothing a result page does not.
                    "site_section_builders": {"expectations": "0", "profiling": "0", "validations": {"view": _view("CompiledPageView")}},
                },
            )

    def validate(self, table_or_dataframe: pa.Table | pa.RecordBatch | pd.DataFrame, kind: str) -> ValidationReport:
        if kind not in SUITE_KINDS:
            raise ValueError(f"no quality suite for dataset kind {kind!r}; known: {', '.join(SUITE_KINDS)}")
        table = _as_table(table_or_dataframe)
        return self.validate_summary(summary_table(table, kind), kind, TableRows(conform_for_validation(table, kind), kind))

    def validate_summary(self, summary: pa.Table, kind: str, rows) -> ValidationReport:
        """Validate the flat columns of `kind` rows (`summary_table`); `rows.row(n)` gives row n
        in full, to describe a failing row."""
        started = time.perf_counter()
        suite = build_suite(kind, self.options, summary.num_rows, has_lang="lang" in summary.schema.names)
        frame = summary_frame(summary)

        if any(suite.name == kind for suite in self.context.suites.all()):
            raise ValueError(f"{kind} was already validated in this run")
        suite = self.context.suites.add(suite)
        batch = self.datasource.add_dataframe_asset(kind).add_batch_definition_whole_dataframe(kind)
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(name=kind, data=batch, suite=suite))
        result = definition.run(
            batch_parameters={"dataframe": frame},
            # A few more than shown, since duplicates of one value collapse into one example.
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 4 * EXAMPLES},
        )

        order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
        outcomes = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
        failures = [_failure(outcome, kind, rows) for outcome in outcomes if not outcome.success]
        report = ValidationReport(
            kind=kind,
            rows=summary.num_rows,
            success=not any(f.severity == "critical" for f in failures),
            evaluated=len(outcomes),
            failures=failures,
        )
        identifier = _result_identifier(result, kind)
        if self.results_dir is not None:
            results_path = self.results_dir / f"{kind}.json"
            stored = self.context.validation_results_store.json_dict(identifier)  # result.to_json_dict(), made once
            results_path.write_text(json.dumps(stored, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
            report.results_path = str(results_path)
        report.seconds = round(time.perf_counter() - started, 3)
        self.reports.append((report, identifier))
        log.info("%s", report.summary())
        return report

    def build_docs(self) -> Path | None:
        """Render the Data Docs site of this run and point each report at its own page."""
        if self.results_dir is None or not self.reports:
            return None
        self.context.build_data_docs(site_names=[DOCS_SITE])
        index = self.results_dir / DATA_DOCS / "index.html"
        for report, identifier in self.reports:
            page = self.context.get_docs_sites_urls(resource_identifier=identifier, site_name=DOCS_SITE)
            url = page[0]["site_url"] if page else None
            report.docs_path = _file_path(url) if url else str(index)
        return index


class _QualityContext(EphemeralDataContext):
    """GX's ephemeral context, minus one step: on every change (a datasource, an asset, a batch
    definition, a docs site: six per validated dataset) it serialises its whole project config
    to YAML into an in-memory store that nothing reads back, an ephemeral context being saved
    nowhere. That was about a tenth of the suites' CPU on a stage's output."""

    def _save_project_config(self) -> None:
        return None


class ResultDictStore(ValidationResultsStore):
    """GX's validation results store in memory, holding each result as the JSON dict that
    `to_json_dict()` gives (what `<kind>.json` is written from) instead of that dict dumped again
    through GX's schema into an indented, key-sorted JSON string. Data Docs read a result back
    as GX would from that string: the dict as JSON with sorted keys, loaded by GX's schema."""

    def serialize(self, value: ExpectationSuiteValidationResult) -> dict:
        return value.to_json_dict()

    def deserialize(self, value: dict) -> ExpectationSuiteValidationResult:
        return self._expectationSuiteValidationResultSchema.loads(json.dumps(value, sort_keys=True))

    def json_dict(self, key: ValidationResultIdentifier) -> dict:
        """The stored JSON dict of one result."""
        return self.store_backend.get(self.key_to_tuple(key))


def _ephemeral_context() -> EphemeralDataContext:
    """What `gx.get_context(mode="ephemeral")` builds (and makes GX's current context, where
    validation definitions find their stores), as a `_QualityContext` whose results store is a
    `ResultDictStore`."""
    context = _QualityContext(
        project_config=DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=True))
    )
    context.add_store(
        context.validation_results_store_name,
        {"module_name": __name__, "class_name": ResultDictStore.__name__, "store_backend": {"class_name": "InMemoryStoreBackend"}},
    )
    set_context(context)
    return context


def _view(class_name: str) -> dict:
    # GX's own page views, with their compiled templates kept for the process (docs_views.py).
    return {"module_name": "quality.docs_views", "class_name": class_name}


def _as_table(rows: pa.Table | pa.RecordBatch | pd.DataFrame) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise TypeError(f"cannot validate a {type(rows).__name__}; give an Arrow table or a pandas DataFrame")


def _result_identifier(result: ExpectationSuiteValidationResult, kind: str) -> ValidationResultIdentifier:
    # The same identifier ValidationDefinition.run stores the result under: batch id is "<source>-<asset>".
    return ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=kind),
        run_id=result.meta["run_id"],
        batch_identifier=f"{DATASOURCE}-{kind}",
    )


def _file_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def expectation_name(config) -> str:
    """`expect_column_values_to_be_unique(id)`, with the row condition when there is one."""
    column = config.kwargs.get("column")
    name = f"{config.type}({column or ''})"
    condition = config.kwargs.get("row_condition")
    if condition:
        # Stored results hold the condition as a dict; its Condition object reads "format == text".
        name += f" where {deserialize_row_condition(condition)!r}"
    return name


def _failure(outcome, kind: str, rows) -> ExpectationFailure:
    config = outcome.expectation_config
    name = expectation_name(config)
    severity = str(getattr(config.severity, "value", config.severity) or "critical")
    details = outcome.result or {}
    exception = outcome.exception_info or {}
    if exception.get("raised_exception"):
        return ExpectationFailure(name, kind, 0, [f"error: {exception.get('exception_message')}"], severity)
    column = config.kwargs.get("column")
    count = int(details.get("unexpected_count") or 0)
    if "observed_value" in details and "unexpected_count" not in details:
        examples = [{"observed": _plain(details["observed_value"]), "expected": _expected_range(config.kwargs)}]
    elif column in VALUE_COLUMNS and config.type != "expect_column_values_to_not_be_null":
        examples = _distinct(_plain(value) for value in details.get("partial_unexpected_list") or [])
    else:
        failing = details.get("partial_unexpected_index_list") or []
        examples = _distinct(_describe_row(rows.row(int(number)), int(number), column) for number in failing[: 4 * EXAMPLES])
    return ExpectationFailure(name, kind, count, examples[:EXAMPLES], severity)


def _expected_range(kwargs: Mapping) -> list:
    # GX stores bounds as floats; a row count or position reads better as the integer it is.
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in (kwargs.get("min_value"), kwargs.get("max_value"))]


def _describe_row(record: dict, row: int, column: str | None) -> dict:
    """A failing row as its id, and what the failed check looked at."""
    described: dict[str, Any] = {}
    for key in ("id", "url"):
        if record.get(key) is not None:
            described[key] = record[key]
            break
    else:
        described["row"] = row
    if column in (TURNS, ROLES_OK, EMPTY_TURNS):
        conversation = record.get("messages")
        described["roles"] = role_sequence(conversation)
        if column == EMPTY_TURNS:
            described["empty_turns"] = int(empty_turns(pa.array([conversation], MESSAGES_TYPE))[0])
    elif column == TEXT_CHARS:
        text = record.get("text")
        described["chars"] = None if text is None else len(text)
        if text is not None:
            described["text"] = text if len(text) <= TEXT_PREVIEW else text[:TEXT_PREVIEW] + "…"
    return described


def _distinct(values) -> list:
    seen, distinct = set(), []
    for value in values:
        key = json.dumps(value, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            distinct.append(value)
    return distinct


def _plain(value):
    """A JSON-ready Python value from whatever numpy or Arrow scalar GX handed back."""
    if hasattr(value, "as_py"):
        return value.as_py()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _short(examples: list, width: int = 160) -> str:
    text = ", ".join(json.dumps(example, ensure_ascii=False, default=str) for example in examples)
    return text if len(text) <= width else text[: width - 1] + "…"
