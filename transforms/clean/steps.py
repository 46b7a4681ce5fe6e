"""The clean stage over record batches: normalise, redact personal data, reject what is empty or
malformed, and tag every kept row with its language and quality scores (selection comes later,
in transforms/select/rules.py, so a changed threshold never recomputes a tag).

Each function takes a batch and the `[clean]` parameters and returns (kept, rejected); every
input row is in exactly one of the two, and a rejected row says which rule and value removed it.
Clean removes only what cannot be a text at all (an empty document, a malformed dialogue); how
short an entry may be is a `[select]` rule on the `body_chars` and `body_kind` tags
(transforms/entries.py), so the dry run shows it.
Given a `stats` dict, it adds redaction counts per kind and CPU seconds per step to it (CPU
time of the worker, so the figures hold on a loaded machine).
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CONVERSATIONS, DOCUMENTS, ROLES, conform, conversation_text
from schemas.records import loads_meta

from . import pii
from .entries import body_tags, opens_with_title_line, title_prefix
from .langid import DEFAULT_MAX_CHARS, LanguageIdentifier
from .lexicon import list_matcher
from .normalize import normalize_batch_with_evidence
from .repair import REPAIR_TYPE, names_itself, repairer
from .simplify import to_simplified
from .tag_rules import quality_tags
from .textstats import HAN, TextBatch

def _split(table: pa.Table, reasons: list[str | None]) -> tuple[pa.Table, pa.Table]:
    is_rejected = pa.array([r is not None for r in reasons])
    kept = table.filter(pc.invert(is_rejected))
    rejected = table.filter(is_rejected)
    rejected = rejected.append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
    return kept, rejected


def clean_documents(batch: pa.RecordBatch | pa.Table, params: dict, stats: dict | None = None) -> tuple[pa.Table, pa.Table]:
    stats = stats if stats is not None else {}
    table = conform(batch, DOCUMENTS)
    redact_kinds = pii_kinds(params)
    texts, traditional, reasons = [], [], []
    timer = _Timer(stats)
    column = table.column("text")
    raw_texts = column.to_pylist()
    with timer("normalize"):
        normalized = _normalize([raw or "" for raw in raw_texts], params, stats, DOCUMENTS)
    with timer("pii"):
        normalized_texts = [text for text, _ in normalized]
        # The texts as Arrow strings follow the Python ones: only rows a step changed are encoded.
        array = _arrow_texts(column, raw_texts, normalized_texts)
        redacted, redactions = pii.redact_batch(normalized_texts, redact_kinds, array)
        array = _arrow_texts(array, normalized_texts, redacted)
    with timer("repair"):
        before = redacted
        redacted, repairs, lost, titles = _repair(
            redacted, table.column("category").to_pylist(), params, stats, table.column("title").to_pylist(), array
        )
        array = _arrow_texts(array, before, redacted)
    for text, (_, is_traditional) in zip(redacted, normalized):
        texts.append(text)
        traditional.append(is_traditional)
        reasons.append(None if text.strip() else "empty")
    # Rejected rows keep the text as it came in, so nothing the stage changed is lost.
    original = table
    table = table.set_column(table.schema.get_field_index("text"), "text", array)
    table = _with_column(table, "traditional", pa.array(traditional, pa.bool_()))
    table = _with_column(table, "repairs", pa.array(repairs, REPAIR_TYPE))
    table = _with_column(table, "lost_glyphs", pa.array(lost, pa.int32()))
    if titles is not None:
        table = table.set_column(table.schema.get_field_index("title"), "title", pa.array(titles, pa.string()))
    kept, _ = _split(table, reasons)
    _, rejected = _split(original, reasons)
    kept_texts = [text for text, reason in zip(texts, reasons) if reason is None]
    titles = _normalize_titles(kept.column("title").to_pylist(), params)
    kept = add_tags(kept, kept_texts, params, timer, title=title_prefix(kept_texts, titles), text_array=kept.column("text"))
    lengths = np.maximum(pc.utf8_length(kept.column("text")).to_numpy(zero_copy_only=False), 1)
    per_kchar = kept.column("lost_glyphs").to_numpy(zero_copy_only=False) * 1000.0 / lengths
    kept = _with_column(kept, "lost_glyphs_per_kchar", pa.array(per_kchar.astype(np.float32)))
    _add_counts(stats, "pii_redactions", redactions)
    return kept, rejected


def _arrow_texts(base: pa.Array | pa.ChunkedArray, before: list[str | None], after: list[str]) -> pa.Array:
    """`after` as one Arrow string array, given `base`, the Arrow array of `before` (the same
    rows): a row whose text is the very object it was (a step that changes nothing gives its
    input back) is taken from `base`, only the others are encoded."""
    if isinstance(base, pa.ChunkedArray):
        base = base.combine_chunks()
    if base.type != pa.string():
        base = base.cast(pa.string())
    changed = [i for i, (old, new) in enumerate(zip(before, after)) if old is not new]
    if not changed:
        return base
    index = np.arange(len(after), dtype=np.int64)
    index[changed] = len(after) + np.arange(len(changed))
    values = pa.array([after[i] for i in changed], pa.string())
    return pa.concat_arrays([base, values]).take(pa.array(index))


def _normalize(texts: list[str], params: dict, stats: dict, kind: str) -> list[tuple[str, bool]]:
    """(text, traditional?) per text: Unicode and whitespace policy (normalize_batch), then OpenCC
    on what was traditional (transforms.clean.simplify; only the texts holding a traditional
    character are looked at); counts rows and characters converted per variant into
    stats["opencc"][kind]."""
    if not texts:
        return []
    policy = params.get("opencc", "auto")
    texts, evidence = normalize_batch_with_evidence(texts, params.get("unicode_form", "NFKC"), evidence=bool(policy))
    phrases = tuple(map(str, params.get("opencc_phrases") or ()))
    candidates = evidence.tolist() if policy else [False] * len(texts)
    counts = stats.setdefault("opencc", {}).setdefault(kind, {})
    counts["texts"] = counts.get("texts", 0) + len(texts)
    out = []
    for text, candidate in zip(texts, candidates):
        if not candidate:
            out.append((text, False))
            continue
        result = to_simplified(text, policy, phrases)
        if result.traditional:
            counts["traditional_texts"] = counts.get("traditional_texts", 0) + 1
        if result.variant:
            counts[f"converted_texts:{result.variant}"] = counts.get(f"converted_texts:{result.variant}", 0) + 1
            counts["converted_chars"] = counts.get("converted_chars", 0) + result.changed
        out.append((result.text, result.traditional))
    return out


def _normalize_titles(titles: list[str | None], params: dict) -> list[str | None]:
    """Each title under the text policy; None (or empty) stays None."""
    present = [i for i, title in enumerate(titles) if title]
    out: list[str | None] = [None] * len(titles)
    for i, (text, _) in zip(present, _normalize([titles[i] for i in present], params, {}, DOCUMENTS)):
        out[i] = text
    return out


def _repair(
    texts: list[str], categories: list[str], params: dict, stats: dict, titles: list[str | None] | None = None,
    array: pa.Array | None = None,
) -> tuple[list[str], list[list[dict]], list[int], list[str | None] | None]:
    """Corrections, names' lost glyphs and lost-glyph filling (transforms.clean.repair) for rows of
    the categories in `repair_categories` (default books); every row gets its `lost_glyphs` count
    (in other categories: the 「□」 marks). Counts per kind and per correction go to
    stats["repairs"]. The last item: `titles` with those a lost_name mark changed (None when no
    title changed). `array`: the texts as an Arrow string array, when the caller holds them so."""
    enabled = params.get("repair", True)
    scope = set(params.get("repair_categories") or ["books"])
    counts = stats.setdefault("repairs", {})
    by_entry = stats.setdefault("repairs_by_entry", {})
    out_texts, out_lost = list(texts), [0] * len(texts)
    out_repairs: list[list[dict]] = [[] for _ in texts]
    out_titles = list(titles) if titles is not None else None
    changed = False
    tool = repairer(_path(params.get("repair_lexicon")), _path(params.get("repair_corrections"))) if enabled else None
    in_scope = [tool is not None and category in scope for category in categories]
    for i in [i for i, inside in enumerate(in_scope) if not inside]:
        out_lost[i] = texts[i].count("□")
    rows = [i for i, inside in enumerate(in_scope) if inside]
    if not rows:
        return out_texts, out_repairs, out_lost, None
    # A row the screen passes and whose title is no name `repair` may mark comes back as it is,
    # with no repairs and no lost glyph: only the others are repaired one by one.
    if array is None:
        array = pa.array(texts, pa.string())
    screened = tool.may_repair(array if len(rows) == len(texts) else array.take(pa.array(rows, pa.int64())))
    candidates = [i for i, screen in zip(rows, screened.tolist())
                  if screen or (titles is not None and names_itself(texts[i], titles[i]))]
    if not candidates or candidates[0] != rows[0]:
        # The counters every repaired row adds to, in the order the first row adds them.
        counts["lost_glyphs_tagged"] = counts.get("lost_glyphs_tagged", 0)
        counts["rows_repaired"] = counts.get("rows_repaired", 0)
    for i in candidates:
        result = tool.repair(texts[i], titles[i] if titles is not None else None)
        if result.title is not None:
            out_titles[i] = result.title
            changed = True
        out_texts[i] = result.text
        out_repairs[i] = [r.as_dict() for r in result.repairs]
        out_lost[i] = result.lost_glyphs
        for r in result.repairs:
            counts[r.kind] = counts.get(r.kind, 0) + 1
            key = f"{r.original}->{r.replacement}"
            by_entry[key] = by_entry.get(key, 0) + 1
        counts["lost_glyphs_tagged"] = counts.get("lost_glyphs_tagged", 0) + result.lost_glyphs
        counts["rows_repaired"] = counts.get("rows_repaired", 0) + bool(result.repairs)
    return out_texts, out_repairs, out_lost, out_titles if changed else None


def _path(value) -> str | None:
    return str(value) if value else None


def clean_conversations(batch: pa.RecordBatch | pa.Table, params: dict, stats: dict | None = None) -> tuple[pa.Table, pa.Table]:
    stats = stats if stats is not None else {}
    table = conform(batch, CONVERSATIONS)
    min_turn = params.get("min_turn_chars", 1)
    redact_kinds = pii_kinds(params)
    timer = _Timer(stats)
    conversations, traditional, reasons = [], [], []
    dialogues = [messages or [] for messages in table.column("messages").to_pylist()]
    with timer("normalize"):
        normalized = _normalize([m.get("content") or "" for messages in dialogues for m in messages], params, stats, CONVERSATIONS)
    with timer("pii"):
        contents, redactions = pii.redact_texts([text for text, _ in normalized], redact_kinds)
    turns = iter(zip(contents, normalized))
    for messages in dialogues:
        cleaned, any_traditional = [], False
        for message in messages:
            content, (_, is_traditional) = next(turns)
            cleaned.append({"role": message.get("role"), "content": content})
            any_traditional |= is_traditional
        conversations.append(cleaned)
        traditional.append(any_traditional)
        reasons.append(_conversation_problem(cleaned, min_turn))
    original = table
    index = table.schema.get_field_index("messages")
    table = table.set_column(index, table.schema.field(index), pa.array(conversations, table.schema.field(index).type))
    table = _with_column(table, "traditional", pa.array(traditional, pa.bool_()))
    kept, _ = _split(table, reasons)
    _, rejected = _split(original, reasons)
    kept = add_tags(kept, [conversation_text(m) for m in kept.column("messages").to_pylist()], params, timer)
    _add_counts(stats, "pii_redactions", redactions)
    return kept, rejected


def pii_kinds(params: dict) -> tuple[str, ...]:
    """The personal-data kinds to redact: all unless `pii` switches some off."""
    switches = params.get("pii") or {}
    return tuple(kind for kind in pii.KINDS if switches.get(kind, True))


def add_tags(table: pa.Table, texts: list[str], params: dict, timer: "_Timer | None" = None,
             title: np.ndarray | None = None, text_array: pa.Array | pa.ChunkedArray | None = None) -> pa.Table:
    """The table with `lang`, `lang_score`, the quality columns and (when configured) the domain
    columns, computed for `texts` (one per row). With `title` (documents: the length of the
    title each text opens with, `entries.title_prefix`), also `body_chars` and `body_kind`, and
    a title line of its own is left out of the line rules. `text_array`: the same texts as an
    Arrow string array (a table's column), which the Arrow kernels then read as it is."""
    timer = timer or _Timer({})
    titled = opens_with_title_line(texts, title) if title is not None else None
    rule_seconds: dict[str, float] = {}
    batch = TextBatch(texts, titled, text_array)
    with timer("langid"):
        identifier = _identifier(params.get("lid_model"), int(params.get("lid_max_chars", DEFAULT_MAX_CHARS)))
        langs, scores = identifier.predict(texts, batch)
    tags = {"lang": pa.array(langs, pa.string()), "lang_score": pa.array(scores.astype(np.float32))}
    quality = quality_tags(texts, params, rule_seconds, titled, batch)
    if "debris_ratio" in quality and "meta" in table.column_names:
        quality["debris_ratio"] = _with_replaced_bytes(quality["debris_ratio"], batch, texts, table.column("meta"))
    for name, values in quality.items():
        tags[name] = pa.array(values if values.dtype.kind == "i" else values.astype(np.float32))
    timer.add(rule_seconds)
    if title is not None:
        with timer("entries"):
            body = body_tags(texts, title, list_matcher(params.get("domain_lexicon")), batch.text_array)
        tags["body_chars"] = pa.array(body["body_chars"], pa.int64())
        tags["body_kind"] = pa.array(body["body_kind"], pa.string())
    if params.get("domain_lexicon") or params.get("domain_model"):
        with timer("domain"):
            for name, values in _domain_tagger(params.get("domain_lexicon"), params.get("domain_model")).tag(texts).items():
                tags[name] = pa.array(np.asarray(values, np.float32))
    for name, values in tags.items():
        table = _with_column(table, name, values)
    return table


def _with_replaced_bytes(debris: np.ndarray, batch: TextBatch, texts: list[str], metas: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Debris counted from the bytes decoding replaced (meta `debris_bytes`), not only from what
    survives: a run of invalid bytes is one U+FFFD in the text, so a file that was mostly
    undecodable would otherwise read as nearly clean. Each replaced byte beyond its U+FFFD counts
    as one more debris character."""
    replaced = _replaced_bytes(metas)
    if replaced is None:
        return debris
    # Only a row with replaced bytes can have more of them than U+FFFD marks.
    marks = np.zeros(len(texts), np.float64)
    for i in np.flatnonzero(replaced).tolist():
        marks[i] = texts[i].count("\ufffd")
    extra = np.maximum(replaced - marks, 0)
    if not extra.any():
        return debris
    visible = batch.visible.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        adjusted = (np.nan_to_num(debris) * visible + extra) / (visible + extra)
    return np.where(extra > 0, adjusted, debris)


def _replaced_bytes(metas: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Per row, meta["debris_bytes"] (0 when absent), as float64; None when no meta names it.
    An object whose every "debris_bytes" is written 0 (and that escapes nothing, so no key hides
    behind an escape) is not parsed: in most rows decoding replaced nothing. Those rows are told
    by string kernels over the column; only the others are parsed."""
    named = pc.fill_null(pc.match_substring(metas, "debris_bytes"), False)
    if not pc.any(named).as_py():
        return None
    written_zero = pc.add(pc.count_substring(metas, '"debris_bytes": 0,'), pc.count_substring(metas, '"debris_bytes": 0}'))
    plain_zero = pc.and_(
        pc.and_(pc.starts_with(metas, "{"), pc.ends_with(metas, "}")),
        pc.and_(pc.invert(pc.match_substring(metas, "\\")), pc.equal(pc.count_substring(metas, '"debris_bytes"'), written_zero)),
    )
    parse = np.flatnonzero(pc.and_(named, pc.invert(pc.fill_null(plain_zero, False))).to_numpy(zero_copy_only=False))
    out = np.zeros(len(metas), np.float64)
    if len(parse):
        values = metas.take(pa.array(parse)).to_pylist()
        out[parse] = [_debris_bytes(meta) for meta in values]
    return out


def _debris_bytes(meta: str | None) -> int:
    """meta["debris_bytes"] (0 when absent). An object whose every "debris_bytes" is written 0
    (and that escapes nothing, so no key hides behind an escape) is not parsed: in most rows
    decoding replaced nothing."""
    if not meta:
        return 0
    if meta[0] == "{" and meta[-1] == "}" and "\\" not in meta and meta.count('"debris_bytes"') == meta.count('"debris_bytes": 0,') + meta.count('"debris_bytes": 0}'):
        return 0
    return int(loads_meta(meta).get("debris_bytes") or 0)


@lru_cache(maxsize=2)
def _identifier(model: str | None, max_chars: int) -> LanguageIdentifier:
    return LanguageIdentifier.load(model, max_chars)


@lru_cache(maxsize=2)
def _domain_tagger(lexicon: str | None, model: str | None):
    # Imported only when a domain lexicon or model is configured.
    from .domain import DomainTagger

    return DomainTagger.load(Path(lexicon) if lexicon else None, Path(model) if model else None)


class _Timer:
    """Adds CPU seconds per step to stats["seconds"]."""

    def __init__(self, stats: dict):
        self.seconds = stats.setdefault("seconds", {})

    @contextmanager
    def __call__(self, step: str):
        started = time.process_time()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.process_time() - started

    def add(self, rule_seconds: dict[str, float]) -> None:
        for name, seconds in rule_seconds.items():
            self.seconds[f"rule:{name}"] = self.seconds.get(f"rule:{name}", 0.0) + seconds


def _add_counts(stats: dict, key: str, counts: Counter) -> None:
    into = stats.setdefault(key, {})
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n


def _conversation_problem(messages: list[dict], min_turn: int) -> str | None:
    """Why a conversation cannot be trained on, or None: roles must alternate user/assistant
    after an optional system turn, and end with the assistant."""
    if not messages:
        return "empty"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        return "empty"
    for i, message in enumerate(turns):
        if message["role"] not in ROLES:
            return f"bad_role:{message['role']}"
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            return f"roles_not_alternating:turn={i}"
        if len(message["content"]) < min_turn:
            return f"short_turn:turn={i}<min_turn_chars={min_turn}"
    if turns[-1]["role"] != "assistant":
        return "no_answer"
    return None


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.schema.names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)


# Counts a clean step adds to its stats, summed over batches by the stage into the manifest:
# stats[name][kind][counter]. (pii_redactions keeps its own shape, kind -> redaction kind.)
COUNTED_STATS = ("opencc", "repairs", "repairs_by_entry")


def merge_counts(totals: dict, kind: str, stats: dict) -> None:
    """Adds one batch's COUNTED_STATS into totals[name][kind] (the manifest's stats)."""
    for name in COUNTED_STATS:
        found = stats.get(name) or {}
        # opencc counts are already per kind; repairs are counted for documents only.
        found = found.get(kind, {}) if name == "opencc" else found
        into = totals.setdefault(name, {}).setdefault(kind, {})
        for key, n in found.items():
            into[key] = into.get(key, 0) + n


STEPS = {DOCUMENTS: clean_documents, CONVERSATIONS: clean_conversations}
