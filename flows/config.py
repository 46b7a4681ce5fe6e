"""One TOML file describes a corpus build; it is typed and validated before any work starts."""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator, model_validator

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
    # "auto": a BOM, else UTF-8, else GB18030 or Big5 (per line where a file mixes UTF-8 and GBK);
    # or a codec name ("gbk", "big5", "utf-16") that every file of the source is read with.
    encoding: str = "auto"
    # instructions: the file's own field names for the shape names, {question = "问题", answer = "回答"}.
    fields: dict[str, str] = {}
    # A source whose every row is rejected stops the command (exit 2) unless this is set.
    allow_all_rejected: bool = False
    # crawl
    start_urls: list[str] = []
    # Sitemaps (XML, gzipped XML, sitemap indexes, or a robots.txt naming them) whose pages seed the crawl.
    sitemap_urls: list[str] = []
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
            if not (self.start_urls or self.sitemap_urls):
                raise ValueError("a crawl source needs start_urls or sitemap_urls")
        else:
            if self.path is None:
                raise ValueError(f"a {self.kind} source needs a path")
            if self.format is None:
                self.format = "instructions" if self.kind == "dataset" else "book"
            if self.fields:
                if self.format != "instructions":
                    raise ValueError("fields maps record fields: it needs format = \"instructions\"")
                from transforms.ingest.importers.instructions import field_map

                field_map(self.fields)
            if self.encoding not in ("auto", ""):
                import codecs

                try:
                    codecs.lookup(self.encoding)
                except LookupError:
                    raise ValueError(f"unknown encoding {self.encoding!r} (use \"auto\" or a codec name such as \"gbk\")") from None
        return self


class CrawlConfig(Section):
    # Sent as "user_agent (+contact_url)", so that a site's operator can learn who crawls it.
    user_agent: str = Field("tcm-corpus/0.1", min_length=1)
    contact_url: str = Field("https://example.invalid/tcm-corpus", pattern=r"^(https?://|mailto:)\S+$")
    download_timeout: float = Field(15, gt=0)
    max_page_bytes: int = Field(5_000_000, gt=0)
    obey_robots: bool = True
    concurrency: int = Field(8, ge=1)
    concurrency_per_domain: int = Field(4, ge=1)
    download_delay: float = Field(0.0, ge=0)
    autothrottle: bool = True
    # Retries of 5xx, 408, 429 and time-outs; the wait doubles from retry_backoff, or is Retry-After.
    retries: int = Field(2, ge=0)
    retry_backoff: float = Field(0.5, ge=0)
    # Journal and stored pages for resuming and re-crawling; default: under ~/.cache/tcm-corpus/crawl-state.
    state_dir: Optional[Path] = None


class PiiConfig(Section):
    """Which kinds of personal data the clean stage redacts (each replaced by a placeholder)."""

    email: bool = True
    url: bool = True
    id_number: bool = True
    phone: bool = True
    qq: bool = True
    wechat: bool = True
    name: bool = True


class CleanConfig(Section):
    """Normalisation, redaction and tagging; what is removed for quality is decided in [select]."""

    # OpenCC converts only text (lines) detected as traditional: "auto" detects the variant,
    # t2s / tw2s / hk2s fix it; simplified text passes unchanged (transforms/clean/simplify.py).
    opencc: Optional[Literal["auto", "t2s", "tw2s", "hk2s"]] = "auto"
    # Extra OpenCC phrase dictionaries (`traditional<TAB>simplified[<TAB>why]` a line), after the
    # shipped transforms/resources/opencc_phrases.tsv.
    opencc_phrases: list[Path] = []
    # Source damage repair (transforms/clean/repair.py) for documents of these categories: corrections
    # from transforms/resources/corrections.tsv (plus `repair_corrections`, same format) and lost
    # glyphs filled where the lexicon (shipped seed + `repair_lexicon`, a `flows lexicon build`
    # file) admits one completion; every document gets a `lost_glyphs` count.
    repair: bool = True
    repair_categories: list[str] = ["books"]
    repair_lexicon: Optional[Path] = None
    repair_corrections: Optional[Path] = None
    # NFKC folds compatibility forms; full-width CJK punctuation is kept as the text wrote it.
    unicode_form: Literal["NFKC", "NFC", "none"] = "NFKC"
    min_turn_chars: int = Field(1, ge=0)
    pii: PiiConfig = PiiConfig()
    # fastText language-ID model; default: lid.176.ftz bundled in the package.
    lid_model: Optional[Path] = None
    lid_max_chars: int = Field(200, ge=20)
    # Extra jieba words (`word [freq]` a line) and a replacement flagged-word list (`category<TAB>word`).
    tcm_dict: Optional[Path] = None
    flagged_words: Optional[Path] = None
    dup_ngram: int = Field(10, ge=2, le=50)
    # TCM domain relevance tags (lexicon density, classifier probability); off when unset.
    domain_lexicon: Optional[Path] = None
    domain_model: Optional[Path] = None

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "min_chars" in data:
            raise ValueError("min_chars is a [select] rule now (it counts an entry's body, not its title): move it to [select]")
        return data

    @computed_field  # in the config hash: a new shipped table re-runs clean
    @property
    def tables(self) -> dict[str, str]:
        from transforms.clean.repair import table_versions
        from transforms.clean.simplify import PHRASES_FILE, phrases_version

        return {**table_versions(), PHRASES_FILE: phrases_version()}


# A text with more than 1% of its characters lost (「□」 runs of a lacunose manuscript, unfilled
# blanks) is rejected; fewer are kept with their count (see docs/ARCHITECTURE.md, Cleaning).
LOST_GLYPHS_DEFAULT = 10.0


class SelectConfig(Section):
    """Thresholds on the tags written by clean; None turns a rule off. Defaults keep the classical
    books, the pharmacopoeia and the terminology standards (see docs/ARCHITECTURE.md)."""

    languages: list[str] = ["zh"]
    min_lang_score: Optional[float] = Field(0.5, ge=0, le=1)
    # Characters of a text's body (after its title line; spaces and cross-references not
    # counted): a whole short entry (a titled body that ends a sentence, a recipe list, white
    # text) needs min_entry_chars, anything else (fragments, cross-references, untitled) min_chars.
    min_chars: Optional[int] = Field(20, ge=0)
    min_entry_chars: Optional[int] = Field(3, ge=0)
    max_chars: Optional[int] = Field(None, ge=1)
    min_han_chars: Optional[int] = Field(None, ge=0)
    min_han_ratio: Optional[float] = Field(0.3, ge=0, le=1)
    max_symbol_ratio: Optional[float] = Field(0.2, ge=0, le=1)
    max_digit_ratio: Optional[float] = Field(0.3, ge=0, le=1)
    min_mean_line_chars: Optional[float] = Field(4, ge=0)
    min_punct_line_ratio: Optional[float] = Field(0.12, ge=0, le=1)
    max_dup_line_ratio: Optional[float] = Field(0.5, ge=0, le=1)
    max_dup_ngram_ratio: Optional[float] = Field(0.8, ge=0, le=1)
    max_bullet_ratio: Optional[float] = Field(0.9, ge=0, le=1)
    max_ellipsis_ratio: Optional[float] = Field(0.3, ge=0, le=1)
    max_flagged_per_kchar: Optional[float] = Field(3.0, ge=0)
    max_debris_ratio: Optional[float] = Field(0.1, ge=0, le=1)
    # Lost glyphs clean could not fill (「□」, ambiguous blanks) per 1,000 characters.
    max_lost_glyphs_per_kchar: Optional[float] = Field(LOST_GLYPHS_DEFAULT, ge=0)
    min_domain_lexicon: Optional[float] = Field(None, ge=0)
    min_domain_score: Optional[float] = Field(None, ge=0, le=1)
    # Rules to turn off by key (TOML has no null): disable = ["min_punct_line_ratio"].
    disable: list[str] = []
    # A prompt that conversations passing the rules answer in two or more different ways (in
    # match form): drop every such row (one question, one answer), or keep them all. Counted in
    # the manifest's stats.conflicting_answers either way, listed in the corpus report.
    conflicting_answers: Literal["drop", "keep"] = "drop"

    @field_validator("disable")
    @classmethod
    def _known_rules(cls, keys: list[str]) -> list[str]:
        known = [name for name in cls.model_fields if name.startswith(("min_", "max_"))]
        for key in keys:
            if key not in known:
                raise ValueError(f"unknown rule {key!r} (rules: {', '.join(known)})")
        return keys


class RepeatedParagraphsConfig(Section):
    # Lines recurring across a source's documents (navigation, footers, copied prefaces) are removed.
    enabled: bool = True
    min_documents: int = Field(5, ge=2)
    # Also at least this share of the source's documents: a quotation common in a large
    # collection of books is not boilerplate.
    min_share: float = Field(0.05, ge=0, le=1)
    # Shorter lines (in match form) are never judged: headings like 卷一 recur legitimately.
    min_chars: int = Field(8, ge=1)
    # Categories whose sources are judged; in reference works shared lines are content.
    categories: list[Category] = ["web"]


class DedupConfig(Section):
    # exact: equal match form only; minhash: exact, then near-duplicates by MinHash LSH.
    method: Literal["exact", "minhash"] = "minhash"
    # Which copy of a cluster survives: criteria in order, the input order breaking ties.
    keep: list[Literal["quality", "longest", "source", "first"]] = ["quality", "longest", "source"]
    # Unset: the keep rule's `quality` is computed from clean's tags (transforms/dedup.quality_key);
    # a column name reads that column instead (higher is better).
    quality_column: Optional[str] = None
    # Sources in order of preference for the `source` criterion; unlisted sources come last.
    source_priority: list[str] = []
    # Jaccard similarity of character n-gram shingle sets from which two rows are one: LSH on the
    # MinHash signatures proposes pairs, the exact Jaccard of their shingle sets decides.
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(5, ge=1, le=32)
    seed: int = Field(1, ge=0)
    # Weight of missed pairs against extra candidates when choosing bands x rows (datasketch: 0.5).
    false_negative_weight: float = Field(0.9, gt=0, lt=1)
    # Fingerprints of the corpus kept so far: a later build is deduplicated against it.
    index_path: Optional[Path] = None
    paragraphs: RepeatedParagraphsConfig = RepeatedParagraphsConfig()

    @field_validator("keep", mode="before")
    @classmethod
    def _one_criterion(cls, value):
        return [value] if isinstance(value, str) else value


class DecontaminateConfig(Section):
    benchmarks: list[Path] = []
    ngram: int = Field(13, ge=4)
    # Share of an item's own n-grams that must occur in a row for the row to contain the item.
    min_overlap: float = Field(0.5, gt=0, le=1)
    # Share of a question's own n-grams needed when it is matched without its options: higher,
    # because exam stems paraphrase classical clauses that books hold.
    question_overlap: float = Field(0.9, gt=0, le=1)
    # Share of the n-grams of an item's quoted words (else its stem) that, with the right option
    # within answer_window characters of them, make a row cite the item with its answer: such rows
    # are flagged in the `contamination` column and reported, never removed.
    cite_overlap: float = Field(0.6, gt=0, le=1)
    answer_window: int = Field(64, ge=0)
    # remove: rows holding an item are rejected; flag: kept, named in the `contamination` column.
    action: Literal["remove", "flag"] = "remove"
    # Items shorter than this, question, options and answer together in match form, are not indexed.
    min_question_chars: int = Field(8, ge=1)


class ConvertConfig(Section):
    # template: structured entries -> Q&A; openai: passages -> Q&A by an LLM; native: documents stay text.
    backend: Literal["template", "openai", "native"] = "template"
    base_url: Optional[str] = None
    model: Optional[str] = None
    # The name of the environment variable holding the API key; the key itself is never stored.
    api_key_env: str = "OPENAI_API_KEY"
    # Texts that no backend converts stay in the corpus as plain text.
    keep_text: bool = True
    system_prompt: Optional[str] = None
    # Which documents go to the LLM (empty: all); the rest get a template or stay text.
    llm_categories: list[Category] = ["web", "literature", "encyclopedia", "books"]
    llm_kinds: list[str] = []  # meta kind: monograph, term, chapter, page, text
    min_passage_chars: int = Field(80, ge=1)
    max_passage_chars: int = Field(1000, ge=20)
    prompt_version: str = "unify-1"
    prompt_file: Optional[Path] = None  # a prompt set of your own (TOML, with its own version)
    concurrency: int = Field(8, ge=1)
    request_timeout: float = Field(60, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base: float = Field(1.0, ge=0)
    backoff_max: float = Field(60, ge=0)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)  # per response
    json_mode: Literal["auto", "on", "off"] = "auto"
    # Budget of one run: requests answered and tokens used; unset = no limit.
    max_requests: Optional[int] = Field(None, ge=0)
    max_total_tokens: Optional[int] = Field(None, ge=0)
    price_prompt_per_1k: float = Field(0.0, ge=0)
    price_completion_per_1k: float = Field(0.0, ge=0)
    cache_dir: Optional[Path] = None  # default: <convert output>.cache beside the stage output
    judge: bool = False  # a third request asks the LLM to pass or fail each pair
    max_question_chars: int = Field(150, ge=10)
    min_han_share: float = Field(0.6, ge=0, le=1)
    min_answer_chars: int = Field(30, ge=0)
    min_answer_ratio: float = Field(0.2, ge=0, le=5)
    ngram: int = Field(2, ge=1, le=8)
    min_answer_overlap: float = Field(0.25, ge=0, le=1)
    min_passage_coverage: float = Field(0.15, ge=0, le=1)
    leak_phrases: Optional[list[str]] = None  # default: transforms.convert.llm.verify.DEFAULT_LEAK_PHRASES

    @model_validator(mode="after")
    def _check_backend(self) -> "ConvertConfig":
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("the openai backend needs base_url and model")
        if self.min_passage_chars > self.max_passage_chars:
            raise ValueError("min_passage_chars must not exceed max_passage_chars")
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


class OverflowConfig(Section):
    """What happens to an item longer than `seq_len`, per corpus format; never a silent cut."""

    # text: cut into pieces of seq_len tokens, each packed as an item of its own (position ids
    # restart in each piece); truncate: keep the first seq_len tokens; reject: a rejected row.
    text: Literal["split", "truncate", "reject"] = "split"
    # chat: a dialogue is never split (a piece would lose its question); truncate keeps the first
    # seq_len tokens when an answer token is among them.
    chat: Literal["truncate", "reject"] = "reject"


class PackConfig(Section):
    """Tokenize the corpus and pack it into fixed-length sequences for GPU trainers (`flows run pack`).

    build-corpus runs it last when `tokenizer` is set."""

    # A tokenizer.json, or a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json
    # with its chat_template and special tokens).
    tokenizer: Optional[Path] = None
    seq_len: int = Field(4096, ge=16)
    # How a chat row becomes tokens: the tokenizer folder's own chat template (jinja, rendered as
    # Hugging Face renders it), HuatuoGPT-II's <问>：/<答>： turns, or ChatML.
    template: Literal["tokenizer", "huatuo", "chatml"] = "tokenizer"
    # greedy: corpus order, a new sequence when an item does not fit (HuatuoGPT-II's way);
    # best_fit: first-fit-decreasing within each window of `window` consecutive items.
    packing: Literal["greedy", "best_fit"] = "best_fit"
    window: int = Field(1000, ge=1)
    overflow: OverflowConfig = OverflowConfig()
    # Sequences are padded to the next multiple of this (labels -100); unset: to seq_len, so every
    # sequence is exactly seq_len tokens long. 1: no padding stored.
    pad_to_multiple_of: Optional[int] = Field(None, ge=1)
    # Special tokens by their text; unset: the tokenizer folder's own, else a known name in the vocabulary.
    eos_token: Optional[str] = None
    pad_token: Optional[str] = None
    # Further outputs by name: Megatron-LM's indexed dataset (megatron/tokens.bin + .idx) and a
    # Hugging Face `datasets` folder (hf/, save_to_disk; needs the datasets package).
    outputs: list[Literal["megatron", "hf"]] = []
    # Sequences per Parquet row group: what the reader holds at once per worker.
    row_group_rows: int = Field(256, ge=1)
    # auto: a byte-level BPE tokenizer.json (GPT-2, Qwen, Llama 3 kind) is run by tiktoken, the
    # same ids at a third of the CPU, checked against `tokenizers` on a sample (first texts of
    # each batch and 1 in 64) and dropped at the first difference; tokenizers: always the
    # `tokenizers` library. The manifest names the encoder used.
    encoder: Literal["auto", "tokenizers"] = "auto"

    @model_validator(mode="after")
    def _check_padding(self) -> "PackConfig":
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of > self.seq_len:
            raise ValueError("pad_to_multiple_of must not exceed seq_len")
        return self


class ValidateConfig(Section):
    languages: Optional[list[str]] = None
    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(200_000, ge=1)
    fail_on_error: bool = True
    # build-corpus validates every stage's output, not only the corpus.
    every_stage: bool = True


class ExportConfig(Section):
    formats: list[Literal["sharegpt", "alpaca", "jsonl"]] = ["sharegpt"]


class LabelledSourceConfig(Section):
    path: Path
    # An importer format, or `texts`: a JSON list (or JSON lines) of strings.
    format: Literal["book", "text", "monograph", "terms", "instructions", "texts"] = "text"


class TrainDomainConfig(Section):
    """Inputs and parameters of the fastText TCM domain classifier (train-domain-classifier)."""

    positive: list[LabelledSourceConfig] = []  # TCM texts: books, monographs, TCM dialogues
    negative: list[LabelledSourceConfig] = []  # other texts: general medical Q&A, English, web
    # Negatives generated from the seed: random Han, symbol debris, repeated phrases, spam.
    generated_junk: int = Field(1000, ge=0)
    max_per_source: int = Field(2000, ge=1)
    holdout: float = Field(0.2, ge=0, lt=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    # Where the model goes (its figures beside it, + .json); `--output` overrides.
    model: Optional[Path] = None
    epoch: int = Field(10, ge=1)
    lr: float = Field(0.5, gt=0)
    word_ngrams: int = Field(2, ge=1, le=5)
    dim: int = Field(64, ge=2)
    bucket: int = Field(200_000, ge=1000)
    seed: int = 13


class EngineConfig(Section):
    kind: Literal["local", "spark"] = "local"
    workers: int = Field(2, ge=1)
    batch_rows: int = Field(2048, ge=1)
    # Spark: local[N], spark://host:7077, yarn, k8s://https://host:443; under spark-submit its --master rules.
    master: str = "local[2]"
    # Passed to the SparkSession as they are (spark.executor.instances, spark.hadoop.fs.s3a.* ...).
    spark: dict[str, str | int | float | bool] = {}
    # Where MinHash clustering checkpoints its rounds (a Hadoop path); unset: executors' local storage.
    checkpoint_dir: Optional[str] = None


class TaskControl(Section):
    """Retries and a time limit for one stage's task; a time-out counts as a failed try."""
    retries: int = Field(0, ge=0)
    retry_delay_seconds: float = Field(10, ge=0)
    timeout_seconds: Optional[float] = Field(None, gt=0)


def _default_task_control() -> dict[str, TaskControl]:
    # The stages that wait on the network: web servers, the LLM endpoint.
    return {
        "crawl": TaskControl(retries=2, retry_delay_seconds=30, timeout_seconds=6 * 3600),
        "convert": TaskControl(retries=2, retry_delay_seconds=60, timeout_seconds=24 * 3600),
    }


NETWORK_STAGES = ("crawl", "convert")
DEPLOYABLE_FLOWS = ("build-corpus", "refresh", "crawl", "ingest", "clean", "dedup", "decontaminate", "convert", "sample", "validate", "export")


class ScheduleConfig(Section):
    """A scheduled deployment `<flow>/<name>` served by `flows serve`."""
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    flow: Literal[DEPLOYABLE_FLOWS]  # type: ignore[valid-type]
    cron: Optional[str] = None
    interval_seconds: Optional[float] = Field(None, gt=0)
    timezone: Optional[str] = None  # default: operations.timezone
    active: bool = True
    # Flow parameters for the scheduled runs, over the defaults (config, workdir).
    parameters: dict = {}

    @model_validator(mode="after")
    def _one_clock(self) -> "ScheduleConfig":
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("a schedule needs exactly one of cron and interval_seconds")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"cron {self.cron!r} must have five fields (minute hour day month weekday)")
        if self.timezone is not None:
            _check_timezone(self.timezone)
        return self


def _check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Asia/Shanghai' or 'UTC')") from None
    return name


def _default_schedules() -> list[ScheduleConfig]:
    return [
        ScheduleConfig(name="nightly", flow="refresh", cron="0 2 * * *"),
        ScheduleConfig(name="weekly", flow="build-corpus", cron="0 3 * * 0"),
    ]


class LLMLimitConfig(Section):
    # A Prefect global concurrency limit shared by every flow run that calls the LLM endpoint.
    concurrency_limit: str = Field("tcm-corpus-llm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    slots: int = Field(8, ge=1)
    # How long a call waits for a free slot before it fails; none: wait as long as it takes.
    wait_seconds: Optional[float] = Field(None, gt=0)
    # A run keeps a slot it took for the requests that follow, and gives it back after this
    # long (then asks again): other runs get a chance, and a lowered limit applies within it.
    hold_seconds: float = Field(60, gt=0)


class NotifyConfig(Section):
    # Both optional: a URL that receives a JSON POST, and/or a Prefect notification block
    # ("slack-webhook/ops"). Nothing configured: nothing is sent.
    webhook_url: Optional[str] = Field(None, pattern=r"^https?://")
    block: Optional[str] = Field(None, pattern=r"^[a-z0-9-]+/[A-Za-z0-9_.-]+$")
    timeout_seconds: float = Field(10, gt=0)


class OperationsConfig(Section):
    # Where deployed runs build; relative to the config file (the current folder for the sample).
    workdir: Optional[Path] = None
    timezone: str = "UTC"
    schedules: list[ScheduleConfig] = Field(default_factory=_default_schedules)
    tasks: dict[str, TaskControl] = Field(default_factory=_default_task_control)
    llm: LLMLimitConfig = LLMLimitConfig()
    notify: NotifyConfig = NotifyConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        return _check_timezone(name)

    @field_validator("tasks", mode="before")
    @classmethod
    def _known_stages(cls, tasks: object) -> object:
        if not isinstance(tasks, dict):
            return tasks
        merged = {stage: control.model_dump() for stage, control in _default_task_control().items()}
        for stage, given in tasks.items():
            if stage not in NETWORK_STAGES:
                raise ValueError(f"stage {stage!r} has no run control (only: {', '.join(NETWORK_STAGES)})")
            # A key left out keeps the stage's default, so `retries = 5` alone keeps the time-out.
            merged[stage] = {**merged.get(stage, {}), **given} if isinstance(given, dict) else given
        return merged

    @model_validator(mode="after")
    def _unique_schedules(self) -> "OperationsConfig":
        names = [(s.flow, s.name) for s in self.schedules]
        repeated = sorted({f"{f}/{n}" for f, n in names if names.count((f, n)) > 1})
        if repeated:
            raise ValueError(f"schedule names must be unique per flow: {', '.join(repeated)}")
        return self


class BuildConfig(Section):
    name: str = "tcm-corpus"
    sources: list[SourceConfig] = []
    crawl: CrawlConfig = CrawlConfig()
    clean: CleanConfig = CleanConfig()
    select: SelectConfig = SelectConfig()
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    convert: ConvertConfig = ConvertConfig()
    sample: SampleConfig = SampleConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    export: ExportConfig = ExportConfig()
    pack: PackConfig = PackConfig()
    engine: EngineConfig = EngineConfig()
    train_domain: TrainDomainConfig = TrainDomainConfig()
    operations: OperationsConfig = OperationsConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _unique_sources(self) -> "BuildConfig":
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source names must be unique: {', '.join(repeated)}")
        if self.select.min_domain_lexicon is not None and self.clean.domain_lexicon is None:
            raise ValueError("select.min_domain_lexicon needs clean.domain_lexicon")
        if self.select.min_domain_score is not None and self.clean.domain_model is None:
            raise ValueError("select.min_domain_score needs clean.domain_model")
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
    config.crawl.state_dir = fix(config.crawl.state_dir)
    config.convert.prompt_file = fix(config.convert.prompt_file)
    config.convert.cache_dir = fix(config.convert.cache_dir)
    for key in ("lid_model", "tcm_dict", "flagged_words", "domain_lexicon", "domain_model"):
        setattr(config.clean, key, fix(getattr(config.clean, key)))
    config.dedup.index_path = fix(config.dedup.index_path)
    for labelled in [*config.train_domain.positive, *config.train_domain.negative]:
        labelled.path = fix(labelled.path)
    config.train_domain.model = fix(config.train_domain.model)
    config.operations.workdir = fix(config.operations.workdir)
    config.sample.tokenizer = fix(config.sample.tokenizer)
    config.pack.tokenizer = fix(config.pack.tokenizer)
    return config


def _nearest_key(loc: tuple) -> Optional[str]:
    """The key of the same section closest in spelling to the unknown last part of `loc`
    (difflib, ratio >= 0.75), or None. Walks BuildConfig's fields along `loc`; list indices and
    mapping keys are stepped over."""
    import difflib

    model: object = BuildConfig
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None or isinstance(part, int):
            continue
        field = fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        for arg in (*getattr(annotation, "__args__", ()), annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return None
    fields = getattr(model, "model_fields", None)
    if not fields:
        return None
    found = difflib.get_close_matches(str(loc[-1]), list(fields), n=1, cutoff=0.75)
    return found[0] if found else None


def _describe(error: ValidationError) -> str:
    """One line for the first fault of a config; an unknown key comes before the others, since a
    misspelt required key (`catagory`) also leaves that key missing."""
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    where = where.replace("validate_", "validate")
    if first["type"] == "extra_forbidden":
        near = _nearest_key(first["loc"])
        return f"unknown key '{where}'" + (f" (did you mean '{near}'?)" if near else "")
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


def sample_config_path() -> str:
    """The embedded sample build's config file (books, monographs, dialogues and a small site
    that ship in the package): what `build-corpus`, `refresh` and `serve` use without --config."""
    sample = resources.files("flows.sample") / SAMPLE_CONFIG
    with resources.as_file(sample) as sample_path:
        return str(sample_path)


def load_config(path: str | Path | None = None) -> BuildConfig:
    """Load a build config; with no path, the library's defaults (no sources, every section at
    its default), so a stage run on a user's data never borrows the sample build's settings.
    The sample build is `load_config(sample_config_path())`."""
    if path is None:
        return BuildConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc})") from None
    return parse_config(text, path.resolve().parent, str(path))


# -- help: a section's keys with their defaults, as TOML -----------------------------------------

# The config sections each flow reads, for `flows run FLOW --help`.
FLOW_SECTIONS = {
    "build-corpus": ("sources", "crawl", "clean", "select", "dedup", "decontaminate", "convert", "sample", "validate", "export", "pack", "engine"),
    "refresh": ("sources", "crawl", "clean", "dedup", "engine"),
    "crawl": ("sources", "crawl"),
    "ingest": ("sources",),
    "clean": ("clean", "engine"),
    "select": ("select", "engine"),
    "dedup": ("dedup", "engine"),
    "decontaminate": ("decontaminate", "engine"),
    "convert": ("convert",),
    "sample": ("sample", "engine"),
    "validate": ("validate",),
    "export": ("export",),
    "pack": ("pack",),
    "train-domain-classifier": ("train_domain",),
}


def describe_section(name: str) -> str:
    """The section `name` of a config file with every key at its library default, as TOML; an
    unset optional key is shown commented out. `sources` shows one files/dataset source."""
    if name == "sources":
        lines = ["[[sources]]            # one per source; kind = files | dataset | crawl"]
        for key, field in SourceConfig.model_fields.items():
            if key in ("start_urls", "sitemap_urls", "allowed_domains", "allow", "deny", "max_depth", "max_pages", "site_dir", "extract"):
                continue
            example = {"name": '"my-source"', "kind": '"dataset"', "category": '"sft"  # web | literature | encyclopedia | books | sft',
                       "path": '"data/qa.jsonl"  # a file or a folder, relative to the config file',
                       "format": '"instructions"  # book | text | monograph | terms | instructions (default: instructions for dataset, book for files)',
                       "encoding": '"auto"  # BOM, else UTF-8, else GB18030/Big5 (per line for UTF-8/GBK mixtures); or a codec name: "gbk"',
                       "fields": '{}  # instructions: shape name = the file\'s field, {question = "问题", answer = "回答"}',
                       "allow_all_rejected": 'false  # true: a source whose every row is rejected does not stop the command'}
            lines.append(f"{key} = {example[key]}" if key in example else f"{key} = {_toml_value(field.get_default(call_default_factory=True))}")
        lines.append("# crawl sources: start_urls, sitemap_urls, allowed_domains, allow, deny, max_depth, max_pages, site_dir, extract")
        return "\n".join(lines)
    model = BuildConfig.model_fields["validate_" if name == "validate" else name].get_default(call_default_factory=True)
    return "\n".join(_section_lines(name, model))


def _section_lines(prefix: str, model: BaseModel) -> list[str]:
    lines, nested = [f"[{prefix}]"], []
    for key in type(model).model_fields:
        value = getattr(model, key)
        if isinstance(value, BaseModel):
            nested.append((f"{prefix}.{key}", value))
        elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            for sub, item in value.items():
                nested.append((f"{prefix}.{key}.{sub}", item))
        elif value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for sub_prefix, sub_model in nested:
        lines += [""] + _section_lines(sub_prefix, sub_model)
    return lines


def _toml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
