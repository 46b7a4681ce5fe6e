"""One TOML file describes a corpus build; it is typed and validated before any work starts."""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas import CATEGORIES

Category = Literal["web", "literature", "encyclopedia", "books", "sft"]
SAMPLE_CONFIG = "build-corpus.toml"


class ConfigError(Exception):
    """A configuration that cannot be used; the message is one line naming the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(Section):
    name: str = Field(min_length=1)
    kind: Literal["files", "crawl", "dataset"]
    category: Category
    # files / dataset
    path: Optional[Path] = None
    format: Optional[Literal["book", "text", "monograph", "terms", "instructions"]] = None
    encoding: str = "auto"
    # crawl
    start_urls: list[str] = []
    allowed_domains: list[str] = []
    allow: list[str] = []
    deny: list[str] = []
    max_depth: int = Field(3, ge=0)
    max_pages: int = Field(1000, ge=1)
    # A local folder served on 127.0.0.1 for the crawl; start_urls are then paths inside it.
    site_dir: Optional[Path] = None
    # Per-site extraction rules: {"content": css, "drop": [css...], "title": css}.
    extract: dict = {}

    @model_validator(mode="after")
    def _check_kind(self) -> "SourceConfig":
        if self.kind == "crawl":
            if not self.start_urls:
                raise ValueError("a crawl source needs start_urls")
        else:
            if self.path is None:
                raise ValueError(f"a {self.kind} source needs a path")
            if self.format is None:
                self.format = "instructions" if self.kind == "dataset" else "book"
        return self


class CrawlConfig(Section):
    user_agent: str = "tcm-corpus/0.1 (+https://example.invalid/tcm-corpus)"
    download_timeout: float = Field(15, gt=0)
    max_page_bytes: int = Field(5_000_000, gt=0)
    obey_robots: bool = True
    concurrency: int = Field(8, ge=1)
    autothrottle: bool = True


class CleanConfig(Section):
    opencc: Optional[Literal["t2s", "tw2s", "hk2s"]] = "t2s"
    # NFKC folds compatibility forms; full-width CJK punctuation is kept as the text wrote it.
    unicode_form: Literal["NFKC", "NFC", "none"] = "NFKC"
    min_chars: int = Field(20, ge=0)
    min_han_ratio: float = Field(0.0, ge=0, le=1)
    min_turn_chars: int = Field(1, ge=0)


class DedupConfig(Section):
    method: Literal["exact"] = "exact"
    # Which copy of a duplicate group survives.
    keep: Literal["first", "longest"] = "first"


class DecontaminateConfig(Section):
    benchmarks: list[Path] = []
    ngram: int = Field(13, ge=4)
    # Share of an item's own n-grams that must occur in a row for the row to contain the item.
    min_overlap: float = Field(0.5, gt=0, le=1)
    action: Literal["remove", "flag"] = "remove"
    # An item whose question is shorter than the n-gram is matched on the whole question.
    min_question_chars: int = Field(8, ge=1)


class ConvertConfig(Section):
    backend: Literal["template", "openai"] = "template"
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    # Texts that no backend converts stay in the corpus as plain text.
    keep_text: bool = True
    system_prompt: Optional[str] = None

    @model_validator(mode="after")
    def _check_backend(self) -> "ConvertConfig":
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai backend needs base_url and model")
        return self


def _default_weights() -> dict[str, float]:
    return {"web": 32, "literature": 16, "encyclopedia": 8, "books": 4, "sft": 1}


class SampleConfig(Section):
    mode: Literal["priority", "uniform", "sequential"] = "priority"
    weights: dict[str, float] = Field(default_factory=_default_weights)
    source_weights: dict[str, float] = {}
    sft_epochs: int = Field(3, ge=1)
    shard_rows: int = Field(100_000, ge=1)
    # Rows per Parquet row group: what a streaming reader holds at once (datasets' own default).
    row_group_rows: int = Field(1000, ge=1)
    seed: int = 42
    # Token counts in the corpus manifest: a tokenizer.json (needs `tokenizers`), else an estimate.
    tokenizer: Optional[Path] = None
    tokens_per_cjk_char: float = Field(1.0, gt=0)
    chars_per_token: float = Field(4.0, gt=0)

    @field_validator("weights")
    @classmethod
    def _known_categories(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if name not in CATEGORIES:
                raise ValueError(f"unknown category {name!r} (known: {', '.join(CATEGORIES)})")
            if weight <= 0:
                raise ValueError(f"weight of {name} must be positive")
        return {**_default_weights(), **weights}

    @field_validator("source_weights")
    @classmethod
    def _positive_source_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, weight in weights.items():
            if weight <= 0:
                raise ValueError(f"weight of source {name} must be positive")
        return weights


class ValidateConfig(Section):
    languages: Optional[list[str]] = None
    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(200_000, ge=1)
    fail_on_error: bool = True
    # build-corpus validates every stage's output, not only the corpus.
    every_stage: bool = True


class ExportConfig(Section):
    formats: list[Literal["sharegpt", "alpaca", "jsonl"]] = ["sharegpt"]


class EngineConfig(Section):
    kind: Literal["local", "spark"] = "local"
    workers: int = Field(2, ge=1)
    batch_rows: int = Field(2048, ge=1)
    master: str = "local[2]"
    spark: dict[str, str] = {}


class BuildConfig(Section):
    name: str = "tcm-corpus"
    sources: list[SourceConfig] = []
    crawl: CrawlConfig = CrawlConfig()
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    convert: ConvertConfig = ConvertConfig()
    sample: SampleConfig = SampleConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    export: ExportConfig = ExportConfig()
    engine: EngineConfig = EngineConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _unique_sources(self) -> "BuildConfig":
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source names must be unique: {', '.join(repeated)}")
        return self

    def section(self, name: str) -> dict:
        """A section as plain data, the input of a stage's config hash."""
        key = "validate_" if name == "validate" else name
        return getattr(self, key).model_dump(mode="json")


def _resolve_paths(config: BuildConfig, base: Path) -> BuildConfig:
    """Relative paths in a config file are relative to the file's folder."""

    def fix(path: Optional[Path]) -> Optional[Path]:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    for source in config.sources:
        source.path = fix(source.path)
        source.site_dir = fix(source.site_dir)
    config.decontaminate.benchmarks = [fix(p) for p in config.decontaminate.benchmarks]
    config.sample.tokenizer = fix(config.sample.tokenizer)
    return config


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    where = where.replace("validate_", "validate")
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_config(text: str, base: Path, origin: str = "config") -> BuildConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
    try:
        config = BuildConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from None
    return _resolve_paths(config, base)


def load_config(path: str | Path | None = None) -> BuildConfig:
    """Load a build config; with no path, the embedded sample build that ships in the package."""
    if path is None:
        sample = resources.files("flows.sample") / SAMPLE_CONFIG
        with resources.as_file(sample) as sample_path:
            return parse_config(sample_path.read_text(encoding="utf-8"), sample_path.parent, str(sample_path))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc})") from None
    return parse_config(text, path.resolve().parent, str(path))
