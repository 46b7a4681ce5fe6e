"""Corpus rows as token ids and labels.

A text row is its tokens (with the tokenizer's own special tokens, e.g. a BOS) plus EOS, every
token trained. A chat row is a list of segments, each trained or not: system and user turns and
the template's scaffolding are not (label -100); every assistant answer and the token that ends
it are. Segments are tokenized separately and concatenated, so a label boundary is always a
token boundary (as HuatuoGPT-II and LLaMA-Factory tokenize turn by turn).

Templates:
- `huatuo`: HuatuoGPT-II's release: `<问>：question\n<答>：answer</s>\n<问>：...`; a system turn,
  rare in its data, is put before the first question with a newline.
- `chatml`: `<|im_start|>role\ncontent<|im_end|>\n`; an answer is trained with its `<|im_end|>`.
- `tokenizer`: the tokenizer folder's own chat template. The answer of assistant turn i is the
  text between the rendering of turns [0, i) with the generation prompt and that of turns
  [0, i]; both must be prefixes of the whole conversation's rendering (true of the usual
  templates; a row where it is not is rejected `template_not_incremental`).

Identical segments in a batch (template scaffolding, repeated answers) are tokenized once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import pyarrow as pa

from .tokenizer import PackTokenizer

IGNORE_INDEX = -100
EOS = -1  # a segment index standing for the EOS token itself


@dataclass
class Rendered:
    """Tokens of a batch of rows, flat: row i is ids[offsets[i]:offsets[i+1]] (empty if rejected)."""

    ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where not trained
    offsets: np.ndarray  # int64, rows + 1
    reasons: dict[int, str] = field(default_factory=dict)  # row -> why it was rejected


class _Segments:
    """Distinct strings to tokenize, and the pieces (row, segment, trained) that use them."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.texts: list[str] = []
        self.rows: list[int] = []
        self.segments: list[int] = []
        self.trained: list[bool] = []

    def add(self, row: int, text: str, trained: bool) -> None:
        if not text:
            return
        seg = self.index.get(text)
        if seg is None:
            seg = self.index[text] = len(self.texts)
            self.texts.append(text)
        self.rows.append(row)
        self.segments.append(seg)
        self.trained.append(trained)

    def add_eos(self, row: int) -> None:
        self.rows.append(row)
        self.segments.append(EOS)
        self.trained.append(True)


def _chat_segments(messages: list[dict], template: str, tokenizer: PackTokenizer) -> list[tuple[str, bool]] | str:
    """A dialogue as (text, trained) segments, EOS marked as (None, True); or a rejection reason."""
    if not messages:
        return "no_messages"
    roles = [m["role"] for m in messages]
    unknown = sorted({r for r in roles if r not in ("system", "user", "assistant")})
    if unknown:
        return f"unknown_role:{unknown[0]}"
    if not any(r == "assistant" and m["content"] for r, m in zip(roles, messages)):
        return "no_answer"
    segments: list[tuple[str | None, bool]] = []
    if template == "huatuo":
        pending, started = "", False
        for m in messages:
            if m["role"] == "system":
                pending += m["content"] + "\n"
            elif m["role"] == "user":
                pending += ("\n" if started else "") + "<问>：" + m["content"]
                started = True
            else:
                pending += ("\n" if started else "") + "<答>："
                segments += [(pending, False), (m["content"], True), (None, True)]
                pending, started = "", True
        if pending:
            segments.append((pending, False))
        return segments
    if template == "chatml":
        pending = ""
        for m in messages:
            if m["role"] == "assistant":
                segments += [(pending + "<|im_start|>assistant\n", False), (m["content"] + "<|im_end|>", True)]
                pending = "\n"
            else:
                pending += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        segments.append((pending, False))
        return segments
    # The tokenizer's own template, rendered incrementally to find each answer's span.
    from jinja2.exceptions import TemplateError

    try:
        whole = tokenizer.render_chat(messages)
        cursor = 0
        for i, role in enumerate(roles):
            if role != "assistant":
                continue
            prompt = tokenizer.render_chat(messages[:i], add_generation_prompt=True)
            answered = tokenizer.render_chat(messages[: i + 1])
            if not (answered.startswith(prompt) and whole.startswith(answered) and len(prompt) >= cursor):
                return "template_not_incremental"
            segments += [(whole[cursor : len(prompt)], False), (whole[len(prompt) : len(answered)], True)]
            cursor = len(answered)
        segments.append((whole[cursor:], False))
    except TemplateError as exc:
        return "template_error:" + " ".join(str(exc).split())[:120]
    return segments


def render_batch(table: pa.Table, tokenizer: PackTokenizer, template: str) -> Rendered:
    """Token ids and labels of each corpus row (`format`, `text`, `messages` columns)."""
    formats = table.column("format").to_pylist()
    texts = table.column("text").to_pylist()
    messages = table.column("messages").to_pylist()
    plain, chat = _Segments(), _Segments()
    reasons: dict[int, str] = {}
    for row, kind in enumerate(formats):
        if kind == "text" or (kind != "chat" and texts[row]):
            if not texts[row] or not texts[row].strip():
                reasons[row] = "empty_text"
                continue
            plain.add(row, texts[row], True)
            if not tokenizer.appends_eos:
                plain.add_eos(row)
            continue
        segments = _chat_segments(messages[row] or [], template, tokenizer)
        if isinstance(segments, str):
            reasons[row] = segments
            continue
        # Adjacent untrained pieces become one string: fewer, more natural tokenizer calls.
        merged: list[tuple[str | None, bool]] = []
        for text, trained in segments:
            if merged and not trained and not merged[-1][1] and merged[-1][0] is not None:
                merged[-1] = (merged[-1][0] + text, False)
            else:
                merged.append((text, trained))
        for text, trained in merged:
            if text is None:
                chat.add_eos(row)
            else:
                chat.add(row, text, trained)
    # Text rows: the tokenizer's own special tokens (a BOS where its post-processor adds one).
    parts = [_gather(plain, tokenizer.encode_many(plain.texts, add_special_tokens=True), tokenizer.eos_id),
             _gather(chat, tokenizer.encode_many(chat.texts, add_special_tokens=False), tokenizer.eos_id)]
    rows = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    trained = np.concatenate([p[2] for p in parts])
    lengths = np.concatenate([p[3] for p in parts])
    # Pieces of both kinds, in row order (a stable sort keeps each row's pieces in order).
    order = np.argsort(rows, kind="stable")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    token_order = _ranges(starts[order], lengths[order])
    ids, trained = ids[token_order], trained[token_order]
    per_row = np.bincount(rows, weights=lengths, minlength=table.num_rows).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    labels = np.where(trained, ids, IGNORE_INDEX).astype(np.int32)
    return Rendered(ids.astype(np.int32, copy=False), labels, offsets, reasons)


def _gather(pieces: _Segments, encoded: list[list[int]], eos_id: int):
    """(row, ids, trained, length) of every piece, flat, from the distinct segments' ids."""
    seg_lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    total = int(seg_lengths.sum())
    flat = np.fromiter(chain.from_iterable(encoded), dtype=np.int32, count=total)
    flat = np.append(flat, np.int32(eos_id))  # the EOS pseudo-segment, last
    seg_starts = np.concatenate([[0], np.cumsum(seg_lengths)]).astype(np.int64)
    seg_lengths = np.append(seg_lengths, 1)
    segments = np.asarray(pieces.segments, dtype=np.int64)
    segments[segments == EOS] = len(encoded)
    lengths = seg_lengths[segments] if len(segments) else np.zeros(0, np.int64)
    token_src = _ranges(seg_starts[segments], lengths)
    ids = flat[token_src]
    trained = np.repeat(np.asarray(pieces.trained, dtype=bool), lengths)
    rows = np.asarray(pieces.rows, dtype=np.int64)
    # Per piece back to per token is done by the caller; keep per-piece rows and lengths.
    return rows, ids, trained, lengths


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    return np.repeat(starts - out_starts, lengths) + np.arange(total, dtype=np.int64)
